//! Whose fault an outcome is: the upstream's, the client's, the gateway's own, or nobody's (the
//! client went away).
//!
//! The layer decides it once per request, with the status, and everything that answers, counts
//! or remembers reads that one decision: the status and `Proxy-Status` of the answer, the span
//! field `gateway.fault`, the metric attribute of the same name, the
//! [health layer](crate::health) and the [store of copies](crate::stale). Only the
//! upstream's faults move what the gateway remembers for everyone: nothing a single client sends
//! (its deadline, the pace of its upload or of its reading, its leaving) can mark an upstream unavailable or
//! choose a stored copy.
//!
//! | cause | status | `Proxy-Status` error | counted by the health layer | retried by [`RetryLayer`](crate::retry::RetryLayer) | `gateway.fault` |
//! |---|---|---|---|---|---|
//! | the upstream refused, reset, stalled, lied, timed out | 502 / 503 / 504 | its RFC 9209 type | connection failures and timeouts | when the hint allows | `upstream` |
//! | the origin's own 5xx | the origin's | (untouched) | only with `failure_statuses` | no | `upstream` |
//! | the upload stalled past the [client body timeout](crate::TimeLimits::client_body_timeout) | 408, `Connection: close` | none | no | when the hint allows | `client` |
//! | the client broke its upload off | 400 (when it can still read) | none | no | when the hint allows | `client` |
//! | a gRPC caller's own deadline (`grpc-timeout`) ran out | `DEADLINE_EXCEEDED` | `http_response_timeout` | no | no | `client` |
//! | the response deadline ran out while the gateway waited on the client (its upload, or its reading) | 408 before the head; a cut body after | none before the head | no | no | `client` |
//! | the client went away | nothing to answer | none | no | no | `client_gone` |
//! | a loop, a refusal by policy, no route | 502 / 403 / 500 | its RFC 9209 type | no | no | `gateway` |

use std::fmt;

use crate::kind::ProxyErrorKind;

/// Whose fault an outcome is. See the [module docs](self).
///
/// ```
/// use gateway_errors::ProxyErrorKind;
/// use gateway_errors::fault::Fault;
///
/// assert_eq!(Fault::of_kind(Some(ProxyErrorKind::ConnectionRefused)), Fault::Upstream);
/// assert_eq!(Fault::of_kind(Some(ProxyErrorKind::ProxyLoopDetected)), Fault::Gateway);
/// assert_eq!(Fault::Client.as_str(), "client");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The next hop failed: it refused, reset, stalled, sent something invalid, or did not answer
    /// within the operator's limits.
    Upstream,
    /// The client's own doing: an upload that stalled or was broken off, a request that cannot
    /// be forwarded as sent, the caller's own deadline.
    Client,
    /// The client went away before its answer was complete. Not an error of anyone's: nginx logs
    /// it as 499.
    ClientGone,
    /// The gateway's own configuration or policy: a forwarding loop, a refusal, no route.
    Gateway,
}

impl Fault {
    /// The value recorded in spans and metrics: `upstream`, `client`, `client_gone` or `gateway`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Fault::Upstream => "upstream",
            Fault::Client => "client",
            Fault::ClientGone => "client_gone",
            Fault::Gateway => "gateway",
        }
    }

    /// Whose fault an error of `kind` is when nothing more is known (`None`: an error nobody
    /// recognised, which is taken as the upstream's, as its 502 says).
    pub const fn of_kind(kind: Option<ProxyErrorKind>) -> Fault {
        use ProxyErrorKind::*;
        match kind {
            Some(HttpRequestError) => Fault::Client,
            Some(
                HttpRequestDenied
                | DestinationNotFound
                | ProxyInternalResponse
                | ProxyInternalError
                | ProxyConfigurationError
                | ProxyLoopDetected,
            ) => Fault::Gateway,
            _ => Fault::Upstream,
        }
    }

    /// Whether the fault is the upstream's: the only outcomes the health layer may count or a store
    /// may answer for.
    pub const fn is_upstream(self) -> bool {
        matches!(self, Fault::Upstream)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_owner_and_only_next_hop_failures_are_the_upstreams() {
        for &kind in ProxyErrorKind::ALL {
            let fault = Fault::of_kind(Some(kind));
            let token = kind.token();
            let next_hop = token.starts_with("dns_")
                || token.starts_with("connection_")
                || token.starts_with("tls_")
                || token.starts_with("http_response_")
                || matches!(
                    kind,
                    ProxyErrorKind::DestinationUnavailable
                        | ProxyErrorKind::DestinationIpProhibited
                        | ProxyErrorKind::DestinationIpUnroutable
                        | ProxyErrorKind::HttpUpgradeFailed
                        | ProxyErrorKind::HttpProtocolError
                );
            assert_eq!(fault.is_upstream(), next_hop, "{token}: {fault}");
        }
        assert_eq!(Fault::of_kind(None), Fault::Upstream);
    }
}
