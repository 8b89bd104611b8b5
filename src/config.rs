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
use crate::grpc::GrpcCodes;
use crate::grpc::call::FRAMINGS;
use crate::headers::{ProxyName, ProxyStatusValues};
use crate::loop_detection::LoopDetection;
use crate::render::Templates;
use crate::render::bodies::Bodies;
use crate::render::negotiate::Format;
use crate::retry::hint::RetryRules;
use crate::retry::hints::RetryHints;
use crate::stale::Store;
use crate::telemetry::Telemetry;
use crate::time_limits::TimeLimits;

/// Everything the builder sets. A builder method copies the settings, changes one group, and
/// freezes the copy into a new [`Config`]. The defaults are those of the builder's values
/// ([`TimeLimits::new`], [`Bodies::new`], ...), so that each default is written once.
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
    pub(crate) stale: Option<Store>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl Default for Settings {
    fn default() -> Self {
        let mut settings = Settings {
            proxy_name: ProxyName::default(),
            upstream_timeout: None,
            read_timeout: None,
            response_deadline: None,
            client_body_timeout: None,
            classifiers: Vec::new(),
            default_format: Format::ProblemJson,
            templates: Templates::default(),
            request_id_header: HeaderName::from_static("x-request-id"),
            span_level: Level::INFO,
            retry: RetryRules::default(),
            intercept: StatusSet::default(),
            keep_on_rewrite: Vec::new(),
            details: false,
            grpc_codes: GrpcCodes::default(),
            loop_threshold: None,
            stale: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        };
        settings.set_time_limits(TimeLimits::new());
        settings.set_bodies(Bodies::new());
        settings.set_retry_hints(RetryHints::new());
        settings.set_loop_detection(LoopDetection::default());
        settings.set_telemetry(Telemetry::new());
        settings
    }
}

impl Settings {
    pub(crate) fn set_time_limits(&mut self, limits: TimeLimits) {
        let TimeLimits {
            upstream_timeout,
            read_timeout,
            response_deadline,
            client_body_timeout,
        } = limits;
        self.upstream_timeout = upstream_timeout;
        self.read_timeout = read_timeout;
        self.response_deadline = response_deadline;
        self.client_body_timeout = client_body_timeout;
    }

    pub(crate) fn set_bodies(&mut self, bodies: Bodies) {
        let Bodies {
            default_format,
            templates,
            keep_on_rewrite,
        } = bodies;
        self.default_format = default_format;
        self.templates = templates;
        self.keep_on_rewrite = keep_on_rewrite;
    }

    pub(crate) fn set_retry_hints(&mut self, hints: RetryHints) {
        self.retry = hints.rules;
    }

    pub(crate) fn set_loop_detection(&mut self, detection: LoopDetection) {
        self.loop_threshold = detection.threshold;
    }

    pub(crate) fn set_telemetry(&mut self, telemetry: Telemetry) {
        let Telemetry {
            span_level,
            request_id_header,
            #[cfg(feature = "metrics")]
            metrics,
        } = telemetry;
        self.span_level = span_level;
        self.request_id_header = request_id_header;
        #[cfg(feature = "metrics")]
        {
            self.metrics = metrics;
        }
    }

    /// The origin statuses whose responses the layer replaces: exactly `statuses` (those in
    /// 400–599).
    pub(crate) fn set_failure_statuses(&mut self, statuses: impl IntoIterator<Item = StatusCode>) {
        self.intercept = StatusSet::default();
        statuses
            .into_iter()
            .for_each(|status| self.intercept.insert(status));
    }

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
    use crate::grpc::GrpcCode;
    use crate::kind::ProxyErrorKind;

    #[test]
    fn failure_statuses_replace_the_set_given_before() {
        let mut settings = Settings::default();
        settings.set_failure_statuses([StatusCode::BAD_GATEWAY, StatusCode::NOT_FOUND]);
        settings.set_failure_statuses([StatusCode::SERVICE_UNAVAILABLE]);
        assert!(settings.intercept.contains(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!settings.intercept.contains(StatusCode::BAD_GATEWAY));
        assert!(!settings.intercept.contains(StatusCode::NOT_FOUND));
    }

    #[test]
    fn every_time_limit_is_turned_off_with_none() {
        let second = Duration::from_secs(1);
        let mut settings = Settings::default();
        // The defaults: the read timeout follows the upstream timeout; 60 s for an upload.
        assert_eq!(settings.client_body_timeout, Some(Duration::from_secs(60)));
        settings.set_time_limits(TimeLimits::new().upstream_timeout(second));
        assert_eq!(settings.body_read_timeout(), Some(second));
        settings.set_time_limits(
            TimeLimits::new()
                .upstream_timeout(second)
                .read_timeout(None)
                .response_deadline(second)
                .client_body_timeout(None),
        );
        assert_eq!(settings.upstream_timeout, Some(second));
        assert_eq!(settings.body_read_timeout(), None);
        assert_eq!(settings.response_deadline, Some(second));
        assert_eq!(settings.client_body_timeout, None);
        // A new value replaces the whole group: what it leaves alone is back to its default.
        settings.set_time_limits(TimeLimits::new().response_deadline(None));
        assert_eq!(settings.upstream_timeout, None);
        assert_eq!(settings.response_deadline, None);
        assert_eq!(settings.client_body_timeout, Some(Duration::from_secs(60)));
    }

    #[test]
    fn loop_detection_is_on_by_default_and_counts_zero_as_one() {
        let mut settings = Settings::default();
        assert_eq!(settings.loop_threshold, Some(1));
        settings.set_loop_detection(LoopDetection::after(0));
        assert_eq!(settings.loop_threshold, Some(1));
        settings.set_loop_detection(LoopDetection::after(3));
        assert_eq!(settings.loop_threshold, Some(3));
        settings.set_loop_detection(LoopDetection::off());
        assert_eq!(settings.loop_threshold, None);
    }

    #[test]
    fn a_grpc_code_set_for_one_kind_leaves_the_others() {
        let codes = GrpcCodes::new().code_for_kind(
            ProxyErrorKind::ConnectionLimitReached,
            GrpcCode::ResourceExhausted,
        );
        let code = |kind: ProxyErrorKind| codes.code(Some(kind), kind.status());
        assert_eq!(
            code(ProxyErrorKind::ConnectionLimitReached),
            GrpcCode::ResourceExhausted
        );
        assert_eq!(
            code(ProxyErrorKind::ConnectionRefused),
            GrpcCode::for_kind(ProxyErrorKind::ConnectionRefused)
        );
        assert_eq!(
            format!("{codes:?}"),
            r#"{"connection_limit_reached": ResourceExhausted}"#
        );
    }

    #[test]
    fn bodies_keep_the_default_origin_headers_and_add_others_once() {
        let name = HeaderName::from_static("ratelimit-policy");
        let mut settings = Settings::default();
        settings.set_bodies(
            Bodies::new()
                .keep_origin_header(name.clone())
                .keep_origin_header(name.clone()),
        );
        assert_eq!(settings.keep_on_rewrite.len(), 5);
        assert_eq!(settings.keep_on_rewrite[0], http::header::RETRY_AFTER);
        assert_eq!(settings.keep_on_rewrite[4], name);
    }

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
