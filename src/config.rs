//! The layer's configuration: the [`Settings`] its builder sets, frozen into one [`Config`] that
//! every clone of the layer and of its services shares behind an `Arc`.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tracing::Level;

use crate::cache::AnswerCache;
use crate::classify::Classify;
use crate::grpc::answer::GrpcCodes;
use crate::grpc::call::FRAMINGS;
use crate::headers::{ProxyName, ProxyStatusValues};
use crate::negotiate::Format;
use crate::render::Templates;
use crate::retry::hint::RetryRules;
use crate::stale::StaleIfError;

/// nginx's `client_body_timeout`: a client whose upload is silent this long is answered 408.
pub(crate) const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the builder sets. A builder method copies the settings, changes one, and freezes
/// the copy into a new [`Config`].
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) proxy_name: ProxyName,
    pub(crate) upstream_timeout: Option<Duration>,
    /// `None`: follow `upstream_timeout`; `Some(None)`: off.
    pub(crate) read_timeout: Option<Option<Duration>>,
    pub(crate) response_deadline: Option<Duration>,
    /// The longest a client may keep the gateway waiting for the next part of its upload.
    pub(crate) client_body_timeout: Option<Duration>,
    pub(crate) classifiers: Vec<Arc<dyn Classify>>,
    pub(crate) default_format: Format,
    pub(crate) templates: Templates,
    pub(crate) request_id_header: HeaderName,
    pub(crate) span_level: Level,
    pub(crate) retry: RetryRules,
    pub(crate) intercept: StatusSet,
    pub(crate) keep_on_rewrite: Vec<HeaderName>,
    /// Add `details="..."` (the error chain, sanitized and bounded) to our `Proxy-Status` member.
    pub(crate) details: bool,
    pub(crate) grpc_codes: GrpcCodes,
    /// A request that arrives carrying our name this many times in `CDN-Loop` is a loop; `None`:
    /// loop detection is off, and `CDN-Loop` is left as it is.
    pub(crate) loop_threshold: Option<u32>,
    /// The last-good-copy store, if one is configured.
    pub(crate) stale: Option<StaleIfError>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_name: ProxyName::default(),
            upstream_timeout: None,
            read_timeout: None,
            response_deadline: None,
            client_body_timeout: Some(DEFAULT_CLIENT_BODY_TIMEOUT),
            classifiers: Vec::new(),
            default_format: Format::ProblemJson,
            templates: Templates::default(),
            request_id_header: HeaderName::from_static("x-request-id"),
            span_level: Level::INFO,
            retry: RetryRules::default(),
            intercept: StatusSet::default(),
            keep_on_rewrite: [
                http::header::RETRY_AFTER,
                http::header::WWW_AUTHENTICATE,
                http::header::PROXY_AUTHENTICATE,
                http::header::ALLOW,
            ]
            .into(),
            details: false,
            grpc_codes: GrpcCodes::default(),
            loop_threshold: Some(1),
            stale: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl Settings {
    /// The read timeout in force: the one set, else the upstream timeout.
    pub(crate) fn body_read_timeout(&self) -> Option<Duration> {
        self.read_timeout.unwrap_or(self.upstream_timeout)
    }
}

/// The forms an answer can take: a negotiated format, or a gRPC framing.
pub(crate) const ANSWER_FORMS: usize = Format::ALL.len() + FRAMINGS;

/// Settings frozen for the services, with what is made from them once: this gateway's
/// `Proxy-Status` and `CDN-Loop` members, and the answers built so far.
pub(crate) struct Config {
    settings: Settings,
    pub(crate) proxy_status: ProxyStatusValues,
    /// Our `CDN-Loop` member: the proxy name, shared by every request that carries it on.
    pub(crate) cdn_loop_member: HeaderValue,
    pub(crate) answers: AnswerCache,
}

impl Config {
    pub(crate) fn new(settings: Settings) -> Self {
        Config {
            proxy_status: ProxyStatusValues::new(&settings.proxy_name),
            cdn_loop_member: HeaderValue::from_maybe_shared(Bytes::copy_from_slice(
                settings.proxy_name.as_str().as_bytes(),
            ))
            .expect("a proxy name is visible ASCII"),
            answers: AnswerCache::new(ANSWER_FORMS),
            settings,
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl Deref for Config {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

/// A set of status codes 400–599, one bit each.
#[derive(Clone, Default)]
pub(crate) struct StatusSet([u64; 4]);

impl StatusSet {
    /// Adds `status`; a status outside 400–599 is ignored.
    pub(crate) fn insert(&mut self, status: StatusCode) {
        if let Some(i) = Self::bit(status) {
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        Self::bit(status).is_some_and(|i| self.0[i / 64] & (1 << (i % 64)) != 0)
    }

    fn bit(status: StatusCode) -> Option<usize> {
        let status = status.as_u16();
        (400..600)
            .contains(&status)
            .then(|| usize::from(status - 400))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_set_holds_client_and_server_errors_only() {
        let mut set = StatusSet::default();
        for code in [200, 399, 400, 463, 500, 599] {
            set.insert(StatusCode::from_u16(code).unwrap());
        }
        for (code, held) in [
            (200, false),
            (399, false),
            (400, true),
            (401, false),
            (463, true),
            (500, true),
            (599, true),
            (600, false),
        ] {
            assert_eq!(
                set.contains(StatusCode::from_u16(code).unwrap()),
                held,
                "{code}"
            );
        }
    }
}
