//! The RFC 9209 registry of proxy error types.

use std::fmt;
use std::str::FromStr;

use http::StatusCode;

/// Whether a failed request may have reached the upstream: [`NotSent`](RequestSent::NotSent) or
/// [`MaybeSent`](RequestSent::MaybeSent).
///
/// This is what decides whether a retry is safe for a non-idempotent method: a request that never
/// left the gateway cannot have had an effect on the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestSent {
    /// The failure happened before any byte of the request could reach the upstream: DNS, a refused
    /// or timed-out connect, a full pool, a load-shedding refusal, an HTTP/2 `REFUSED_STREAM`.
    NotSent,
    /// The request may have reached the origin, in part or in whole. Unknown failures count as this.
    MaybeSent,
}

impl RequestSent {
    /// The value recorded in spans: `not_sent` or `maybe_sent`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestSent::NotSent => "not_sent",
            RequestSent::MaybeSent => "maybe_sent",
        }
    }
}

impl fmt::Display for RequestSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! proxy_error_kinds {
    ($(
        $(#[$doc:meta])*
        $variant:ident => $token:literal, $status:ident, $phase:ident, $detail:literal;
    )+) => {
        /// An error type from the RFC 9209 Proxy Error Types registry.
        ///
        /// Each kind knows its registered token, the status code the RFC recommends for it, whether a
        /// failure of that kind happens before the request reaches the upstream, and a short sentence
        /// that is safe to show a client.
        ///
        /// ```
        /// use gateway_errors::{RequestSent, ProxyErrorKind};
        /// use http::StatusCode;
        ///
        /// let kind: ProxyErrorKind = "connection_refused".parse().unwrap();
        /// assert_eq!(kind, ProxyErrorKind::ConnectionRefused);
        /// assert_eq!(kind.status(), StatusCode::BAD_GATEWAY);
        /// assert_eq!(kind.request_sent(), RequestSent::NotSent);
        /// assert_eq!(ProxyErrorKind::HttpResponseTimeout.to_string(), "http_response_timeout");
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ProxyErrorKind {
            $( $(#[$doc])* $variant, )+
        }

        impl ProxyErrorKind {
            /// Every registered kind, in registry order.
            pub const ALL: &'static [ProxyErrorKind] = &[$(ProxyErrorKind::$variant),+];

            /// The registered token, as sent in `Proxy-Status: name; error=<token>`.
            pub const fn token(self) -> &'static str {
                match self { $(ProxyErrorKind::$variant => $token,)+ }
            }

            /// The status code RFC 9209 recommends for this kind.
            ///
            /// `http_request_error` maps to 400 (the RFC says "the fitting 4xx") and
            /// `proxy_internal_response` to 500; a classifier that knows better sets the status on the
            /// [`ProxyError`](crate::ProxyError) instead.
            pub const fn status(self) -> StatusCode {
                match self { $(ProxyErrorKind::$variant => StatusCode::$status,)+ }
            }

            /// Whether a failure of this kind happens before the request reaches the upstream.
            ///
            /// A classifier can still say otherwise for a particular error.
            pub const fn request_sent(self) -> RequestSent {
                match self { $(ProxyErrorKind::$variant => RequestSent::$phase,)+ }
            }

            /// A sentence for the client that says what went wrong without naming anything internal.
            pub const fn detail(self) -> &'static str {
                match self { $(ProxyErrorKind::$variant => $detail,)+ }
            }

            pub(crate) const fn index(self) -> usize {
                self as usize
            }
        }

        impl FromStr for ProxyErrorKind {
            type Err = UnknownProxyErrorKind;

            fn from_str(token: &str) -> Result<Self, Self::Err> {
                match token {
                    $($token => Ok(ProxyErrorKind::$variant),)+
                    _ => Err(UnknownProxyErrorKind(())),
                }
            }
        }
    };
}

proxy_error_kinds! {
    /// The resolver timed out while looking up the upstream's name.
    DnsTimeout => "dns_timeout", GATEWAY_TIMEOUT, NotSent,
        "The gateway timed out while looking up the upstream server.";
    /// The upstream's name did not resolve.
    DnsError => "dns_error", BAD_GATEWAY, NotSent,
        "The gateway could not look up the upstream server.";
    /// The gateway has no upstream for this request.
    DestinationNotFound => "destination_not_found", INTERNAL_SERVER_ERROR, NotSent,
        "The gateway has no upstream server for this request.";
    /// The upstream is known to be unavailable (health checks, an open circuit breaker).
    DestinationUnavailable => "destination_unavailable", SERVICE_UNAVAILABLE, NotSent,
        "The upstream server is currently unavailable.";
    /// Policy forbids connecting to the upstream's address.
    DestinationIpProhibited => "destination_ip_prohibited", BAD_GATEWAY, NotSent,
        "The gateway is not allowed to connect to the upstream server.";
    /// The upstream's address cannot be routed to.
    DestinationIpUnroutable => "destination_ip_unroutable", BAD_GATEWAY, NotSent,
        "The gateway could not reach the upstream server.";
    /// The upstream refused the connection.
    ConnectionRefused => "connection_refused", BAD_GATEWAY, NotSent,
        "The upstream server refused the connection.";
    /// The connection to the upstream closed before any of the response arrived.
    ConnectionTerminated => "connection_terminated", BAD_GATEWAY, MaybeSent,
        "The connection to the upstream server closed before it sent a response.";
    /// Connecting to the upstream timed out.
    ConnectionTimeout => "connection_timeout", GATEWAY_TIMEOUT, NotSent,
        "The gateway timed out while connecting to the upstream server.";
    /// Reading from the upstream connection exceeded its idle limit.
    ConnectionReadTimeout => "connection_read_timeout", GATEWAY_TIMEOUT, MaybeSent,
        "The upstream server stopped sending data.";
    /// Writing to the upstream connection exceeded its idle limit.
    ConnectionWriteTimeout => "connection_write_timeout", GATEWAY_TIMEOUT, MaybeSent,
        "The upstream server stopped accepting data.";
    /// The gateway has no capacity for another upstream connection or request.
    ConnectionLimitReached => "connection_limit_reached", SERVICE_UNAVAILABLE, NotSent,
        "The gateway is at capacity for the upstream server.";
    /// The TLS handshake with the upstream failed.
    TlsProtocolError => "tls_protocol_error", BAD_GATEWAY, MaybeSent,
        "The secure connection to the upstream server failed.";
    /// The upstream's TLS certificate was not accepted.
    TlsCertificateError => "tls_certificate_error", BAD_GATEWAY, NotSent,
        "The upstream server's certificate was not accepted.";
    /// The upstream sent a TLS alert.
    TlsAlertReceived => "tls_alert_received", BAD_GATEWAY, MaybeSent,
        "The upstream server ended the secure connection.";
    /// The request itself could not be forwarded as it is.
    HttpRequestError => "http_request_error", BAD_REQUEST, NotSent,
        "The request could not be forwarded to the upstream server.";
    /// Policy refused to forward the request.
    HttpRequestDenied => "http_request_denied", FORBIDDEN, NotSent,
        "The gateway refused to forward the request.";
    /// The upstream's response ended before it was complete.
    HttpResponseIncomplete => "http_response_incomplete", BAD_GATEWAY, MaybeSent,
        "The upstream server sent an incomplete response.";
    /// The upstream's response header section was too large.
    HttpResponseHeaderSectionSize => "http_response_header_section_size", BAD_GATEWAY, MaybeSent,
        "The upstream server sent a response header section that was too large.";
    /// One of the upstream's response header fields was too large.
    HttpResponseHeaderSize => "http_response_header_size", BAD_GATEWAY, MaybeSent,
        "The upstream server sent a response header that was too large.";
    /// The upstream's response body was too large.
    HttpResponseBodySize => "http_response_body_size", BAD_GATEWAY, MaybeSent,
        "The upstream server sent a response body that was too large.";
    /// The upstream's trailer section was too large.
    HttpResponseTrailerSectionSize => "http_response_trailer_section_size", BAD_GATEWAY, MaybeSent,
        "The upstream server sent a trailer section that was too large.";
    /// One of the upstream's trailer fields was too large.
    HttpResponseTrailerSize => "http_response_trailer_size", BAD_GATEWAY, MaybeSent,
        "The upstream server sent a trailer that was too large.";
    /// The upstream used a transfer coding the gateway cannot handle.
    HttpResponseTransferCoding => "http_response_transfer_coding", BAD_GATEWAY, MaybeSent,
        "The upstream server sent a response the gateway could not decode.";
    /// The upstream used a content coding the gateway cannot handle.
    HttpResponseContentCoding => "http_response_content_coding", BAD_GATEWAY, MaybeSent,
        "The upstream server sent content the gateway could not decode.";
    /// The upstream did not respond in time.
    HttpResponseTimeout => "http_response_timeout", GATEWAY_TIMEOUT, MaybeSent,
        "The upstream server did not respond in time.";
    /// A protocol upgrade with the upstream failed.
    HttpUpgradeFailed => "http_upgrade_failed", BAD_GATEWAY, MaybeSent,
        "The upstream server did not complete the protocol upgrade.";
    /// The upstream's response was not valid HTTP.
    HttpProtocolError => "http_protocol_error", BAD_GATEWAY, MaybeSent,
        "The upstream server sent an invalid response.";
    /// The gateway answered by itself, without contacting an upstream.
    ProxyInternalResponse => "proxy_internal_response", INTERNAL_SERVER_ERROR, NotSent,
        "The gateway answered this request itself.";
    /// The gateway failed internally.
    ProxyInternalError => "proxy_internal_error", INTERNAL_SERVER_ERROR, MaybeSent,
        "The gateway failed while handling the request.";
    /// The gateway is misconfigured.
    ProxyConfigurationError => "proxy_configuration_error", INTERNAL_SERVER_ERROR, NotSent,
        "The gateway is not configured to handle this request.";
    /// The request has passed through this gateway before: forwarding it again would loop.
    ProxyLoopDetected => "proxy_loop_detected", BAD_GATEWAY, NotSent,
        "The gateway detected a forwarding loop.";
}

/// A slot per kind, and one for an error no classifier recognised: the index of the per-kind tables
/// (`Proxy-Status` members, gRPC codes, rendered answers).
pub(crate) const KIND_SLOTS: usize = ProxyErrorKind::ALL.len() + 1;

/// The slot of `kind` in a table of [`KIND_SLOTS`] entries; the last one is the unrecognised error.
pub(crate) const fn kind_slot(kind: Option<ProxyErrorKind>) -> usize {
    match kind {
        Some(kind) => kind.index(),
        None => KIND_SLOTS - 1,
    }
}

impl fmt::Display for ProxyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// The error returned when parsing a token that is not in the RFC 9209 registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProxyErrorKind(());

impl fmt::Display for UnknownProxyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a registered proxy error type")
    }
}

impl std::error::Error for UnknownProxyErrorKind {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_has_all_32_types_and_tokens_round_trip() {
        assert_eq!(ProxyErrorKind::ALL.len(), 32);
        for (i, kind) in ProxyErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
            assert_eq!(kind.token().parse::<ProxyErrorKind>(), Ok(*kind));
            assert!(
                kind.token()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
        assert!("Connection_Refused".parse::<ProxyErrorKind>().is_err());
        assert!("".parse::<ProxyErrorKind>().is_err());
    }

    #[test]
    fn statuses_follow_rfc_9209() {
        use ProxyErrorKind::*;
        let expect = [
            (DnsTimeout, 504),
            (DnsError, 502),
            (DestinationNotFound, 500),
            (DestinationUnavailable, 503),
            (ConnectionRefused, 502),
            (ConnectionTerminated, 502),
            (ConnectionTimeout, 504),
            (ConnectionReadTimeout, 504),
            (ConnectionLimitReached, 503),
            (HttpRequestDenied, 403),
            (HttpResponseIncomplete, 502),
            (HttpResponseTimeout, 504),
            (ProxyConfigurationError, 500),
            (ProxyLoopDetected, 502),
        ];
        for (kind, status) in expect {
            assert_eq!(kind.status().as_u16(), status, "{kind}");
        }
    }
}
