//! [`DefaultClassifier`]: the errors of the libraries a gateway is built from.

use std::error::Error as StdError;
use std::io;

use super::classification::Classification;
use crate::fault::Fault;
use crate::kind::{ProxyErrorKind, RequestSent};
use crate::upload::UploadError;

/// The built-in classifier: walks the error and its `source()` chain, and recognises the errors of
/// `std::io` and tokio's timer, and, each with the Cargo feature of the same name, those of hyper,
/// hyper-util's legacy client, tower's timeout, load-shed and buffer, reqwest, h2 (feature
/// `http2`) and rustls. The features `hyper`, `hyper-util` and `tower` are on by default.
///
/// | error found in the chain | kind |
/// |---|---|
/// | hyper-util "dns error" (feature `hyper-util`) | `dns_error`, or `dns_timeout` when the resolver timed out |
/// | `io::ErrorKind::ConnectionRefused` | `connection_refused` |
/// | `ConnectionReset`, `ConnectionAborted`, `BrokenPipe` | `connection_terminated` |
/// | `TimedOut`, tower (feature `tower`) or tokio `Elapsed` | `connection_timeout` while connecting, else `connection_read_timeout` (io) or `http_response_timeout` (tower/tokio) |
/// | `HostUnreachable`, `NetworkUnreachable`, `AddrNotAvailable` | `destination_ip_unroutable` |
/// | `UnexpectedEof` | `connection_terminated` while connecting, else `http_response_incomplete` |
/// | hyper (feature `hyper`): header section too large | `http_response_header_section_size` |
/// | hyper: any other parse error | `http_protocol_error` |
/// | hyper: connection closed before a complete message | `connection_terminated` |
/// | hyper: request canceled (its connection was gone before it was written) | `connection_terminated`, not sent |
/// | hyper: timeout | `http_response_timeout` |
/// | `tower::load_shed::error::Overloaded` (feature `tower`) | `connection_limit_reached` |
/// | `tower::buffer::error::Closed` (feature `tower`) | `destination_unavailable` |
/// | `h2`: `RST_STREAM(REFUSED_STREAM)` (feature `http2`) | `destination_unavailable`, not sent |
/// | `h2`: the stream was above a GOAWAY's last stream id (feature `http2`) | `destination_unavailable`, not sent |
/// | `reqwest::Error` (feature `reqwest`): a connect error, a timeout | as for hyper-util's client |
/// | `rustls::Error` (feature `rustls`): the upstream's certificate was not accepted | `tls_certificate_error` |
/// | `rustls::Error`: the upstream sent a fatal alert | `tls_alert_received`, with `alert-id` and `alert-message` |
/// | `rustls::Error`: any other TLS failure (what came back was no TLS) | `tls_protocol_error` |
/// | a [`ProxyError`](crate::ProxyError) | its own classification, status included |
/// | an [`UploadError`](crate::error::UploadError): the client's upload stalled or broke off | no kind, 408 or 400, the [client's fault](crate::fault::Fault::Client), whatever lies below it |
///
/// Any failure inside hyper-util's connect step (its error says `is_connect()`) counts as
/// [`RequestSent::NotSent`], whatever its kind, because no byte of the request was written.
///
/// With the `http2` feature, two HTTP/2 errors count as [`RequestSent::NotSent`] too, because the
/// protocol guarantees that the server did not process the stream (RFC 9113 §8.7): a reset with
/// `REFUSED_STREAM`, and a stream whose id is above the last stream id of a GOAWAY the server sent.
/// h2 reports the second case to each such stream as a GOAWAY error received from the peer; a
/// stream at or below the last id is left to finish, and fails with an I/O error if the connection
/// then closes (`connection_terminated`, may have been sent).
///
/// hyper reports "closed before the head was complete" the same way whether or not some of the
/// head had arrived; the classifier calls it `connection_terminated`, the common case (the upstream
/// closed or crashed without answering). A body cut short after the head is a different matter: the
/// status has been sent by then, and the layer records `http_response_incomplete` on the span.
///
/// # TLS (feature `rustls`)
///
/// A `rustls::Error` is found wherever it sits in the chain: hyper-rustls and tokio-rustls put it
/// inside an `io::Error`, reqwest with rustls below its own error. The response says only the
/// kind, with the alert's number and registered name for `tls_alert_received`
/// (`Proxy-Status: edge-1; error=tls_alert_received; alert-id=116;
/// alert-message="certificate_required"`): never a certificate's contents or a host. The reason
/// is rustls's own message in the span's event (`invalid peer certificate: certificate expired:
/// ...`, `received fatal alert: CertificateRequired`), and in `Proxy-Status` `details` only with
/// [`proxy_status_details`](crate::GatewayErrorLayer::proxy_status_details), since it names the
/// host the certificate was checked against.
///
/// - The retry hint: a handshake that fails inside hyper-util's connect step is
///   [`RequestSent::NotSent`], and `tls_certificate_error` is too wherever it is found (a client checks
///   the certificate before it sends a byte of the request), so the answer says a retry is safe
///   for every method: `"retryable": true` in problem+json, and the generic advice of a
///   retryable 502 in the text and HTML bodies ("the request can safely be sent again"). Safe,
///   not useful: the same certificate fails the same way on every retry until the upstream
///   replaces it (or the gateway trusts its issuer); a retry policy that should not spend its
///   attempts on it reads the kind. An
///   alert after the handshake, as TLS 1.3 has it for a missing client certificate (the client's
///   side of the handshake is over before the server checks it), may follow the request: it is
///   the kind's [`RequestSent::MaybeSent`] there.
/// - All three are the [upstream's fault](crate::fault::Fault::Upstream), and
///   [`UpstreamHealthLayer`](crate::health::UpstreamHealthLayer) counts each of them by default
///   ([`Attempt::counts_by_default`](crate::health::Attempt::counts_by_default)): an upstream
///   whose certificate has expired fails every request, and marking it unavailable answers them
///   at once (503 `destination_unavailable`) instead of with a handshake each, while its probe
///   finds the renewed certificate. The reason stays in the spans of the failures that marked it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

/// The most sources below an error that the layer reads: a `source()` chain that loops (a
/// buggy error type) must still end.
pub(crate) const MAX_CHAIN_DEPTH: usize = 32;

/// An error that carries its own classification, found on the walk: a
/// [`ProxyError`](crate::ProxyError).
pub(crate) type Decided = fn(&(dyn StdError + 'static)) -> Option<Classification>;

impl DefaultClassifier {
    /// The default rules, over `error` and its sources. `decided` recognises an error that carries
    /// its own classification: it is passed in because [`ProxyError`](crate::ProxyError) is made
    /// by this walk (`ProxyError::from_error`) and so cannot be named here.
    pub(crate) fn walk(
        error: &(dyn StdError + 'static),
        decided: Decided,
    ) -> Option<Classification> {
        let mut walk = Walk::default();
        let mut next = Some(error);
        // Bounded: a chain that loops (a buggy `source()`) must not hang the gateway.
        for _ in 0..=MAX_CHAIN_DEPTH {
            let Some(err) = next else { break };
            // An inner service that knows exactly what went wrong says so with a ProxyError.
            if let Some(decided) = decided(err) {
                return Some(decided);
            }
            // The client's own body failed the request: what its failure looks like below (a
            // reset, an early end) says nothing about the upstream.
            if let Some(upload) = err.downcast_ref::<UploadError>() {
                return Some(
                    Classification::unrecognized()
                        .with_status(upload.status())
                        .with_fault(Fault::Client),
                );
            }
            if let Some(found) = walk.visit(err) {
                return Some(walk.finish(found));
            }
            next = walk.io_inner.take().or_else(|| err.source());
        }
        walk.fallback.map(|kind| walk.finish(kind))
    }
}

#[derive(Default)]
struct Walk<'a> {
    /// Seen a connect-step error: no byte of the request was written.
    connecting: bool,
    /// Seen a resolver error: a timeout below it is a DNS timeout.
    resolving: bool,
    /// A generic kind to use if nothing more specific turns up deeper in the chain.
    fallback: Option<ProxyErrorKind>,
    /// `io::Error::source()` skips the error it wraps; the walk visits it explicitly.
    io_inner: Option<&'a (dyn StdError + 'static)>,
    /// The protocol says the upstream did not process the request (HTTP/2 `REFUSED_STREAM`).
    refused_by_protocol: bool,
    /// hyper says it never wrote the request (`is_canceled`).
    unsent_by_client: bool,
    /// The TLS alert the upstream sent, for `tls_alert_received`.
    tls_alert: Option<u8>,
}

impl<'a> Walk<'a> {
    fn finish(&self, kind: ProxyErrorKind) -> Classification {
        let mut classification = Classification::new(kind);
        if let Some(alert) = self.tls_alert {
            classification = classification.with_tls_alert(alert);
        }
        if self.connecting || self.refused_by_protocol || self.unsent_by_client {
            classification.with_request_sent(RequestSent::NotSent)
        } else {
            classification
        }
    }

    fn timeout(&self) -> ProxyErrorKind {
        if self.resolving {
            ProxyErrorKind::DnsTimeout
        } else if self.connecting {
            ProxyErrorKind::ConnectionTimeout
        } else {
            ProxyErrorKind::HttpResponseTimeout
        }
    }

    fn visit(&mut self, err: &'a (dyn StdError + 'static)) -> Option<ProxyErrorKind> {
        #[cfg(feature = "hyper-util")]
        if let Some(e) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
            self.connecting |= e.is_connect();
            return None;
        }
        if let Some(e) = err.downcast_ref::<io::Error>() {
            self.io_inner = e.get_ref().map(|inner| inner as &(dyn StdError + 'static));
            return self.visit_io(e.kind());
        }
        #[cfg(feature = "hyper")]
        if let Some(e) = err.downcast_ref::<hyper::Error>() {
            if e.is_parse() {
                // hyper's `is_parse_too_large` exists only with its `server` feature; its message
                // says the same, and has since hyper 0.14.
                if display_is(e, "message head is too large") {
                    return Some(ProxyErrorKind::HttpResponseHeaderSectionSize);
                }
                return Some(ProxyErrorKind::HttpProtocolError);
            }
            if e.is_timeout() {
                return Some(self.timeout());
            }
            if e.is_canceled() {
                // hyper gives a request back unwritten when its connection is gone first (a
                // pooled connection the origin had closed): nothing reached the origin.
                self.unsent_by_client = true;
            }
            if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
                // An io error deeper in the chain (a reset) says more; keep walking.
                self.fallback
                    .get_or_insert(ProxyErrorKind::ConnectionTerminated);
            }
            return None;
        }
        if err.is::<tokio::time::error::Elapsed>() {
            return Some(self.timeout());
        }
        #[cfg(feature = "tower")]
        {
            if err.is::<tower::timeout::error::Elapsed>() {
                return Some(self.timeout());
            }
            if err.is::<tower::load_shed::error::Overloaded>() {
                return Some(ProxyErrorKind::ConnectionLimitReached);
            }
            if err.is::<tower::buffer::error::Closed>() {
                return Some(ProxyErrorKind::DestinationUnavailable);
            }
        }
        #[cfg(feature = "http2")]
        if let Some(e) = err.downcast_ref::<h2::Error>() {
            // RFC 9113 §8.7: both mean the server did not process the stream. A GOAWAY error from
            // the peer reaches a stream only when its id was above the GOAWAY's last stream id
            // (or it was opened after the GOAWAY arrived); streams at or below it run on.
            let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM);
            if refused || (e.is_go_away() && e.is_remote()) {
                self.refused_by_protocol = true;
                return Some(ProxyErrorKind::DestinationUnavailable);
            }
            return None;
        }
        #[cfg(feature = "rustls")]
        if let Some(e) = err.downcast_ref::<rustls::Error>() {
            // Below an `io::Error` (hyper-rustls, tokio-rustls) or reqwest's error: whatever
            // wraps it has said whether the handshake was part of the connect step.
            let (kind, alert) = super::tls::recognise(e);
            self.tls_alert = alert;
            return Some(kind);
        }
        #[cfg(feature = "reqwest")]
        if let Some(e) = err.downcast_ref::<reqwest::Error>() {
            self.connecting |= e.is_connect();
            if e.is_timeout() {
                // reqwest's own timeout is not an error in the chain; its inner error may be.
                self.fallback.get_or_insert(self.timeout());
            }
            return None;
        }
        #[cfg(feature = "hyper-util")]
        if display_is(err, "dns error") {
            // hyper-util's resolver wrapper; the type is private, its message is stable.
            self.connecting = true;
            self.resolving = true;
            self.fallback = Some(ProxyErrorKind::DnsError);
        }
        None
    }

    fn visit_io(&mut self, kind: io::ErrorKind) -> Option<ProxyErrorKind> {
        use ProxyErrorKind::*;
        use io::ErrorKind as Io;
        match kind {
            Io::ConnectionRefused => Some(ConnectionRefused),
            Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => {
                Some(ConnectionTerminated)
            }
            Io::TimedOut => Some(if self.resolving || self.connecting {
                self.timeout()
            } else {
                ConnectionReadTimeout
            }),
            Io::HostUnreachable | Io::NetworkUnreachable | Io::AddrNotAvailable => {
                Some(DestinationIpUnroutable)
            }
            Io::UnexpectedEof if self.connecting => Some(ConnectionTerminated),
            Io::UnexpectedEof => Some(HttpResponseIncomplete),
            // A resolver failure of any other io kind is still a DNS error (the fallback).
            _ => None,
        }
    }
}

/// Whether `err` displays exactly as `expected`, without allocating a string.
#[cfg(any(feature = "hyper", feature = "hyper-util", test))]
fn display_is(err: &dyn StdError, expected: &str) -> bool {
    struct Compare<'a> {
        rest: &'a str,
        equal: bool,
    }
    impl std::fmt::Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match self.rest.strip_prefix(s) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(())
                }
                None => {
                    self.equal = false;
                    Err(std::fmt::Error)
                }
            }
        }
    }
    use std::fmt::Write as _;
    let mut compare = Compare {
        rest: expected,
        equal: true,
    };
    let written = write!(compare, "{err}").is_ok();
    written && compare.equal && compare.rest.is_empty()
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;
    use crate::classify::Classify;

    fn default(err: &(dyn StdError + 'static)) -> Option<ProxyErrorKind> {
        DefaultClassifier.classify(err).and_then(|c| c.kind())
    }

    #[test]
    fn io_kinds() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(default(&refused), Some(ProxyErrorKind::ConnectionRefused));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(default(&reset), Some(ProxyErrorKind::ConnectionTerminated));
        let unknown = io::Error::other("something odd");
        assert_eq!(default(&unknown), None);
    }

    #[cfg(feature = "tower")]
    #[test]
    fn io_error_wrapping_an_overload_is_seen_through() {
        let wrapped = io::Error::other(tower::load_shed::error::Overloaded::new());
        assert_eq!(
            default(&wrapped),
            Some(ProxyErrorKind::ConnectionLimitReached)
        );
    }

    #[cfg(feature = "http2")]
    #[test]
    fn h2_refused_stream_was_not_sent() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        let c = DefaultClassifier.classify(&refused).unwrap();
        assert_eq!(c.kind(), Some(ProxyErrorKind::DestinationUnavailable));
        assert_eq!(c.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.request_sent(), RequestSent::NotSent);
        // Any other reset may have been processed: not recognised here.
        let cancel = h2::Error::from(h2::Reason::CANCEL);
        assert_eq!(DefaultClassifier.classify(&cancel), None);
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn rustls_errors_are_found_inside_io_errors() {
        use rustls::{AlertDescription, CertificateError};

        // As tokio-rustls reports a failed handshake.
        let expired = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        let c = DefaultClassifier.classify(&expired).unwrap();
        assert_eq!(c.kind(), Some(ProxyErrorKind::TlsCertificateError));
        assert_eq!(c.request_sent(), RequestSent::NotSent);
        assert_eq!(c.fault(), Fault::Upstream);
        assert_eq!(c.tls_alert(), None);

        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
        );
        let c = DefaultClassifier.classify(&alert).unwrap();
        assert_eq!(c.kind(), Some(ProxyErrorKind::TlsAlertReceived));
        assert_eq!(c.tls_alert(), Some(40));
        assert_eq!(c.status(), http::StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn display_comparison_is_exact() {
        let e = io::Error::other("dns error");
        assert!(display_is(&e, "dns error"));
        assert!(!display_is(&e, "dns"));
        assert!(!display_is(&e, "dns error!"));
    }

    #[test]
    fn self_referential_chain_terminates() {
        #[derive(Debug)]
        struct Loop;
        impl fmt::Display for Loop {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("loop")
            }
        }
        impl StdError for Loop {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&Loop)
            }
        }
        assert_eq!(default(&Loop), None);
    }
}
