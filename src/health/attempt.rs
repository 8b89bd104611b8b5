//! [`Attempt`]: what one request to an upstream came to, as the failure rule sees it.

use std::error::Error as StdError;

use http::StatusCode;

use crate::kind::ProxyErrorKind;

/// How one request to an upstream ended, as the [failure rule](super::UpstreamHealthLayer::failure_rule)
/// sees it: the origin's status when its response head arrived, or the error and its kind.
///
/// The kind is the one the [classifiers](super::UpstreamHealthLayer::classifier) given to the
/// layer, then the [`DefaultClassifier`](crate::classify::DefaultClassifier), give the error; the
/// rule can read the error itself too.
///
/// ```
/// use gateway_errors::health::{Attempt, UpstreamHealthLayer};
/// use gateway_errors::ProxyErrorKind;
///
/// // Also count the origin's 429s, on top of the default rule.
/// let layer = UpstreamHealthLayer::new().failure_rule(|attempt: &Attempt<'_>| {
///     attempt.counts_by_default() || attempt.status.is_some_and(|s| s.as_u16() == 429)
/// });
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Attempt<'a> {
    /// The origin's status, when its response head arrived (and `after_head` is false).
    pub status: Option<StatusCode>,
    /// The kind of the failure, when the request failed and a classifier recognises the error.
    /// A body that breaks after the head is `http_response_incomplete`, one cut for stalling
    /// `connection_read_timeout` (or `http_response_timeout`, for the response deadline).
    pub kind: Option<ProxyErrorKind>,
    /// The error, when the request failed.
    pub error: Option<&'a (dyn StdError + 'static)>,
    /// Whether the failure came after the response head (the body broke off or stalled).
    pub after_head: bool,
}

impl Attempt<'_> {
    /// The default rule: a failure of the upstream's connection, or a timeout, as the classifier
    /// reports it. These count:
    ///
    /// - `connection_refused`, `connection_timeout`, `connection_terminated` (closed or reset
    ///   before a response), `connection_read_timeout`, `connection_write_timeout`;
    /// - `dns_error`, `dns_timeout`, `destination_ip_unroutable`;
    /// - `tls_protocol_error`, `tls_certificate_error`, `tls_alert_received`;
    /// - `http_response_timeout` (no response head in time) and `http_response_incomplete` (a
    ///   body that broke off after the head).
    ///
    /// Never by this rule: any status the origin sent (a 500, a 503, a 404 is an answer), a
    /// client that went away, a request refused before it was sent (`http_request_error`, a full
    /// pool, a refusal of this layer), an error the classifier does not recognise.
    pub fn counts_by_default(&self) -> bool {
        use ProxyErrorKind::*;
        matches!(
            self.kind,
            Some(
                ConnectionRefused
                    | ConnectionTimeout
                    | ConnectionTerminated
                    | ConnectionReadTimeout
                    | ConnectionWriteTimeout
                    | DnsError
                    | DnsTimeout
                    | DestinationIpUnroutable
                    | TlsProtocolError
                    | TlsCertificateError
                    | TlsAlertReceived
                    | HttpResponseTimeout
                    | HttpResponseIncomplete
            )
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(kind: ProxyErrorKind) -> Attempt<'static> {
        Attempt {
            status: None,
            kind: Some(kind),
            error: None,
            after_head: false,
        }
    }

    #[test]
    fn the_default_rule_counts_the_upstreams_connection_and_timeouts_only() {
        use ProxyErrorKind::*;
        for kind in [
            ConnectionRefused,
            ConnectionTimeout,
            ConnectionTerminated,
            HttpResponseTimeout,
            ConnectionReadTimeout,
            DnsError,
            HttpResponseIncomplete,
        ] {
            assert!(failed(kind).counts_by_default(), "{kind}");
        }
        for kind in [
            HttpRequestError,
            HttpRequestDenied,
            ConnectionLimitReached,
            DestinationUnavailable,
            HttpProtocolError,
            ProxyInternalError,
        ] {
            assert!(!failed(kind).counts_by_default(), "{kind}");
        }
        for status in [500, 502, 503, 504, 404] {
            let answered = Attempt {
                status: Some(StatusCode::from_u16(status).unwrap()),
                kind: None,
                error: None,
                after_head: false,
            };
            assert!(!answered.counts_by_default(), "{status}");
        }
    }
}
