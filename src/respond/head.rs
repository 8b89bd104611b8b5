//! The head of an answer the gateway makes: every field it writes is written here, for a
//! generated error in the negotiated format, for a gRPC caller's error, and for a stored copy
//! answering in place of an error.

use std::error::Error as StdError;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

use crate::config::Config;
use crate::error::{ProxyError, chain};
use crate::grpc::answer::GrpcStatus;
use crate::grpc::call::GrpcCall;
use crate::headers::{CACHE_STATUS, PROXY_STATUS, append_member, with_details, with_tls_alert};
use crate::kind::ProxyErrorKind;
use crate::render::negotiate::Format;
use crate::retry::after::RetryAfter;

/// Marks a response this crate generated, so that an outer layer that intercepts origin errors
/// leaves it alone instead of rendering it a second time. A generated error's [`ProxyError`]
/// extension marks it as well, so this one goes on the answers that carry none (an origin error
/// replaced, a stored copy).
#[derive(Clone, Copy)]
pub(super) struct Generated;

/// Whether a response with `status` has no content (RFC 9110 §6.4.1): 1xx, 204 and 304.
#[inline]
pub(super) fn carries_no_content(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Everything the head of a generated error depends on, besides the body.
pub(super) struct ErrorHead<'a> {
    pub(super) config: &'a Config,
    pub(super) format: Format,
    pub(super) status: StatusCode,
    pub(super) kind: Option<ProxyErrorKind>,
    /// Ours to send: `None` when there is none, or when a rewrite keeps the origin's own.
    pub(super) retry_after: Option<RetryAfter>,
    pub(super) received: Option<StatusCode>,
    pub(super) rewritten: Option<&'a HeaderMap>,
}

impl ErrorHead<'_> {
    /// The `Retry-After` this answer sends: ours, or the one a rewrite keeps.
    pub(super) fn retry_after_sent(&self) -> Option<RetryAfter> {
        self.retry_after.or_else(|| {
            self.rewritten
                .filter(|_| self.config.keep_on_rewrite.contains(&header::RETRY_AFTER))
                .and_then(|old| old.get(header::RETRY_AFTER))
                .and_then(|value| RetryAfter::parse(value.as_bytes()))
        })
    }

    /// Our `Proxy-Status` member, without details.
    pub(super) fn proxy_status_member(&self) -> HeaderValue {
        plain_member(self.config, self.kind, self.received)
    }

    /// The head for `body` in the negotiated format; `detailed` is our `Proxy-Status` member with
    /// its details, if any.
    pub(super) fn headers(&self, body: &Bytes, detailed: Option<HeaderValue>) -> HeaderMap {
        let mut headers = self.map();
        if !carries_no_content(self.status) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.format.content_type()),
            );
            // Also for HEAD: the length a GET would have had (RFC 9110 §8.6).
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
        self.finish(&mut headers, detailed);
        headers
    }

    /// The head of a gRPC caller's answer with `body` (see [`crate::grpc::answer::body`]): the
    /// caller's own `Content-Type`, no `Vary: accept` (the answer follows the request's
    /// `Content-Type`, not its `Accept`), and gRPC's fields in the head for a trailers-only
    /// answer. A trailers-only answer has no body and so no `Content-Length`; a gRPC-Web answer
    /// states its body's.
    pub(super) fn grpc_headers(
        &self,
        call: GrpcCall,
        status: &GrpcStatus,
        body: &Bytes,
        detailed: Option<HeaderValue>,
    ) -> HeaderMap {
        let mut headers = self.map();
        headers.insert(header::CONTENT_TYPE, call.content_type());
        if call.is_web() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.finish(&mut headers, detailed);
        if !call.is_web() {
            for (name, value) in status.fields() {
                headers.insert(name.clone(), value.clone());
            }
        }
        headers
    }

    /// An empty map with room for the fields of a generated head. Five fields always; room for
    /// Retry-After, and for what a rewrite keeps. A map sized to fit allocates a third of what the
    /// next power of two would.
    fn map(&self) -> HeaderMap {
        let kept = self.rewritten.map_or(0, |old| {
            self.config
                .keep_on_rewrite
                .iter()
                .map(|name| old.get_all(name).iter().count())
                .sum()
        });
        HeaderMap::with_capacity(6 + kept)
    }

    /// The fields every generated head ends with: what a rewrite keeps, `Proxy-Status`,
    /// `Retry-After` and, on a 408, `Connection: close`.
    fn finish(&self, headers: &mut HeaderMap, detailed: Option<HeaderValue>) {
        let ours = detailed.unwrap_or_else(|| self.proxy_status_member());
        match self.rewritten {
            Some(old) => {
                for name in &self.config.keep_on_rewrite {
                    for value in old.get_all(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
                let proxy_status = if old.contains_key(&PROXY_STATUS) {
                    append_member(old.get_all(&PROXY_STATUS).iter(), &ours)
                } else {
                    ours
                };
                headers.insert(PROXY_STATUS.clone(), proxy_status);
            }
            None => {
                headers.insert(PROXY_STATUS.clone(), ours);
            }
        }
        if let Some(after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, after.to_header_value());
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a stalled body may still arrive: the connection cannot carry another
            // request (RFC 9110 §15.5.9).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// `headers` with our `Proxy-Status` member replaced by `detailed`, if given. Only for an answer
/// that is not a rewrite, whose field holds our member alone: replacing it does not grow the map.
pub(super) fn with_member(mut headers: HeaderMap, detailed: Option<HeaderValue>) -> HeaderMap {
    if let Some(detailed) = detailed {
        headers.insert(PROXY_STATUS.clone(), detailed);
    }
    headers
}

/// A kept gRPC head, for `call`: the caller's own `+proto` or `+json` goes back to it (replacing a
/// value does not grow the map), and our member is replaced by `detailed`, if given.
pub(super) fn grpc_reused(
    mut headers: HeaderMap,
    call: GrpcCall,
    detailed: Option<HeaderValue>,
) -> HeaderMap {
    headers.insert(header::CONTENT_TYPE, call.content_type());
    with_member(headers, detailed)
}

/// Our `Proxy-Status` member for an error of `kind`, without parameters beyond the error type:
/// `received-status` when it stands for an origin's status.
pub(super) fn plain_member(
    config: &Config,
    kind: Option<ProxyErrorKind>,
    received: Option<StatusCode>,
) -> HeaderValue {
    match received {
        Some(received) => config.proxy_status.received(received),
        None => config.proxy_status.get(kind),
    }
}

/// Our member with its parameters beyond the error type: the `alert-id` and `alert-message` of
/// `tls_alert_received` when the classifier recorded the alert (not for an origin's status
/// `received`), and, opt-in only, the details (the chain may name internal hosts). `plain` is the
/// member without them; `None` when there is nothing to add. Built per response, never kept.
pub(super) fn detailed_member(
    config: &Config,
    error: &ProxyError,
    received: Option<StatusCode>,
    plain: impl FnOnce() -> HeaderValue,
) -> Option<HeaderValue> {
    let alert = error
        .classification()
        .tls_alert()
        .filter(|_| received.is_none() && error.kind() == Some(ProxyErrorKind::TlsAlertReceived));
    let cause = StdError::source(error).filter(|_| config.details);
    if alert.is_none() && cause.is_none() {
        return None;
    }
    let mut member = plain();
    if let Some(alert) = alert {
        member = with_tls_alert(member, alert);
    }
    if let Some(cause) = cause {
        member = with_details(member, chain(cause));
    }
    Some(member)
}

/// The head of a stored copy answering in place of an error: the copy's own fields (`stored`),
/// `Age`, and our members appended to `Cache-Status` (`cache_name` is this gateway's name as a
/// list member; `fwd_status` the status the copy stands in for; `ttl` its remaining freshness)
/// and `Proxy-Status` (`proxy_status`, naming the failure the copy hides).
pub(super) fn copy_head(
    stored: &HeaderMap,
    age: u64,
    ttl: i64,
    cache_name: &HeaderValue,
    fwd_status: StatusCode,
    proxy_status: HeaderValue,
) -> HeaderMap {
    // Filled field by field, sized for the three added: cloning the stored map and growing
    // it would allocate twice over.
    let mut headers = HeaderMap::with_capacity(stored.len() + 3);
    for (name, value) in stored {
        headers.append(name.clone(), value.clone());
    }
    // Each value in a buffer of its exact size, which becomes the value without another
    // allocation (`HeaderValue::from(u64)` takes two).
    let age = itoa::Buffer::new().format(age).as_bytes().to_vec();
    if let Ok(age) = HeaderValue::from_maybe_shared(Bytes::from(age)) {
        headers.insert(header::AGE, age);
    }
    let mut ttl_digits = itoa::Buffer::new();
    let parts: [&[u8]; 5] = [
        cache_name.as_bytes(),
        b"; fwd=stale; fwd-status=",
        fwd_status.as_str().as_bytes(),
        b"; ttl=",
        ttl_digits.format(ttl).as_bytes(),
    ];
    let member = parts.concat();
    // A member and digits: always a valid value.
    if let Ok(member) = HeaderValue::from_maybe_shared(Bytes::from(member)) {
        headers.append(CACHE_STATUS.clone(), member);
    }
    headers.append(PROXY_STATUS.clone(), proxy_status);
    headers
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Settings;
    use crate::grpc::GrpcCode;
    use crate::headers::ProxyName;
    use crate::testing::header_map;

    fn config() -> Config {
        Config::new(Settings {
            proxy_name: ProxyName::from_static("edge-1"),
            ..Settings::default()
        })
    }

    fn head(config: &Config) -> ErrorHead<'_> {
        ErrorHead {
            config,
            format: Format::ProblemJson,
            status: StatusCode::BAD_GATEWAY,
            kind: Some(ProxyErrorKind::ConnectionRefused),
            retry_after: None,
            received: None,
            rewritten: None,
        }
    }

    fn grpc_call(content_type: &'static str) -> GrpcCall {
        GrpcCall::detect(&HeaderValue::from_static(content_type), None).unwrap()
    }

    #[test]
    fn a_generated_head_names_us_and_the_error_states_the_delay_and_is_not_stored() {
        let config = config();
        let body = Bytes::from_static(b"{\"status\":502}");
        let plain = head(&config).headers(&body, None);
        assert_eq!(plain["proxy-status"], "edge-1; error=connection_refused");
        assert_eq!(plain["cache-control"], "no-store");
        assert_eq!(plain["content-type"], "application/problem+json");
        assert_eq!(plain["content-length"], "14");
        assert_eq!(plain["vary"], "accept");
        assert!(plain.get("retry-after").is_none());
        assert!(plain.get("connection").is_none());

        let delayed = ErrorHead {
            retry_after: Some(RetryAfter::Delay(Duration::from_secs(7))),
            ..head(&config)
        };
        assert_eq!(delayed.headers(&body, None)["retry-after"], "7");

        let timed_out = ErrorHead {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: None,
            ..head(&config)
        };
        let headers = timed_out.headers(&body, None);
        assert_eq!(headers["connection"], "close");
        assert_eq!(headers["proxy-status"], "edge-1");
    }

    #[test]
    fn a_rewrite_keeps_the_origins_fields_and_appends_our_member() {
        let config = config();
        let old = header_map(&[
            ("proxy-status", "inner; error=http_response_timeout"),
            ("retry-after", "120"),
            ("www-authenticate", "Basic"),
            ("set-cookie", "s=1"),
        ]);
        let rewrite = ErrorHead {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: None,
            received: Some(StatusCode::SERVICE_UNAVAILABLE),
            rewritten: Some(&old),
            ..head(&config)
        };
        let headers = rewrite.headers(&Bytes::new(), None);
        assert_eq!(
            headers["proxy-status"],
            "inner; error=http_response_timeout, edge-1; received-status=503"
        );
        assert_eq!(headers["retry-after"], "120");
        assert_eq!(headers["www-authenticate"], "Basic");
        assert!(headers.get("set-cookie").is_none());
        assert_eq!(
            rewrite.retry_after_sent(),
            Some(RetryAfter::Delay(Duration::from_secs(120)))
        );
    }

    #[test]
    fn a_grpc_head_carries_the_status_in_a_trailers_only_answer_and_states_a_web_bodys_length() {
        let config = config();
        let head = ErrorHead {
            retry_after: Some(RetryAfter::Delay(Duration::from_secs(2))),
            ..head(&config)
        };
        let status = GrpcStatus::new(GrpcCode::Unavailable, "refused", None);
        let call = grpc_call("application/grpc+proto");
        let headers = head.grpc_headers(call, &status, &Bytes::new(), None);
        assert_eq!(headers["content-type"], "application/grpc+proto");
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "refused");
        assert_eq!(headers["proxy-status"], "edge-1; error=connection_refused");
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(headers.get("content-length").is_none());
        assert!(headers.get("vary").is_none());

        let web = grpc_call("application/grpc-web");
        let body = crate::grpc::answer::body(web, &status);
        let headers = head.grpc_headers(web, &status, &body, None);
        assert_eq!(headers["content-length"], body.len().to_string());
        assert!(headers.get("grpc-status").is_none());
        assert!(headers.get("vary").is_none());

        // A kept head answers a caller of the same framing in its own content type.
        let json = grpc_call("application/grpc+json");
        let reused = grpc_reused(headers, json, Some(HeaderValue::from_static("edge-1; x")));
        assert_eq!(reused["content-type"], "application/grpc+json");
        assert_eq!(reused["proxy-status"], "edge-1; x");
    }

    #[test]
    fn our_member_gains_details_only_when_asked() {
        let refused = || {
            ProxyError::new(ProxyErrorKind::ConnectionRefused)
                .with_source(std::io::Error::other("connect to 127.0.0.1:8080"))
        };
        let config = config();
        let plain = || {
            config
                .proxy_status
                .get(Some(ProxyErrorKind::ConnectionRefused))
        };
        assert_eq!(detailed_member(&config, &refused(), None, plain), None);
        assert_eq!(
            detailed_member(
                &config,
                &ProxyError::new(ProxyErrorKind::ConnectionRefused),
                None,
                plain
            ),
            None
        );

        let detailing = Config::new(Settings {
            details: true,
            ..config.settings().clone()
        });
        let member = detailed_member(&detailing, &refused(), None, plain).unwrap();
        let member = member.to_str().unwrap();
        assert!(
            member.starts_with("edge-1; error=connection_refused; details="),
            "{member}"
        );
        assert!(member.contains("127.0.0.1:8080"), "{member}");
    }

    #[test]
    fn a_copys_head_keeps_its_fields_and_adds_age_cache_status_and_proxy_status() {
        let stored = header_map(&[
            ("content-type", "text/html"),
            ("cache-status", "origin-cache; hit"),
            ("proxy-status", "inner"),
        ]);
        let headers = copy_head(
            &stored,
            3,
            59,
            &HeaderValue::from_static("edge-1"),
            StatusCode::BAD_GATEWAY,
            HeaderValue::from_static("edge-1; error=connection_refused"),
        );
        assert_eq!(headers["content-type"], "text/html");
        assert_eq!(headers["age"], "3");
        let all = |name| -> Vec<_> { headers.get_all(name).iter().collect() };
        assert_eq!(
            all("cache-status"),
            [
                "origin-cache; hit",
                "edge-1; fwd=stale; fwd-status=502; ttl=59"
            ]
        );
        assert_eq!(
            all("proxy-status"),
            ["inner", "edge-1; error=connection_refused"]
        );
    }
}
