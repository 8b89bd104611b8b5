//! Classification: from an inner service's error to an RFC 9209 error type.
//!
//! The layer asks each user classifier in the order they were added, then the [`DefaultClassifier`].
//! The first answer wins. An error nobody recognises becomes a 502 without an error type: the layer
//! never guesses a type it cannot stand behind.

use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::io;

use http::StatusCode;

use crate::kind::{Phase, ProxyErrorKind};

/// The outcome of classifying one error: its kind (if known), its phase and the status to send.
///
/// ```
/// use gateway_errors::{Classification, Phase, ProxyErrorKind};
/// use http::StatusCode;
///
/// let c = Classification::from(ProxyErrorKind::ConnectionRefused);
/// assert_eq!(c.status(), StatusCode::BAD_GATEWAY);
/// assert_eq!(c.phase(), Phase::NotSent);
///
/// // A request rejected by a policy engine: a specific 4xx, nothing was sent.
/// let c = Classification::new(ProxyErrorKind::HttpRequestError)
///     .with_status(StatusCode::PAYLOAD_TOO_LARGE);
/// assert_eq!(c.status(), StatusCode::PAYLOAD_TOO_LARGE);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    kind: Option<ProxyErrorKind>,
    phase: Phase,
    status: StatusCode,
}

impl Classification {
    /// A classification with the kind's recommended status and usual phase.
    pub const fn new(kind: ProxyErrorKind) -> Self {
        Classification {
            kind: Some(kind),
            phase: kind.phase(),
            status: kind.status(),
        }
    }

    /// An error of unknown kind: 502, no error type, and the request may have been sent.
    pub const fn unrecognized() -> Self {
        Classification {
            kind: None,
            phase: Phase::MaybeSent,
            status: StatusCode::BAD_GATEWAY,
        }
    }

    /// Overrides the phase, for an error that tells more than its kind does.
    pub const fn with_phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// Overrides the status, for kinds whose RFC status is a range (`http_request_error`) or
    /// "as fitting" (`proxy_internal_response`).
    pub const fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The RFC 9209 error type, if the error was recognised.
    pub const fn kind(&self) -> Option<ProxyErrorKind> {
        self.kind
    }

    /// Whether the request may have reached the origin.
    pub const fn phase(&self) -> Phase {
        self.phase
    }

    /// The status code the generated response will carry.
    pub const fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ProxyErrorKind> for Classification {
    fn from(kind: ProxyErrorKind) -> Self {
        Classification::new(kind)
    }
}

/// Decides what an inner service's error means.
///
/// Return `None` to leave the error to the next classifier. Closures of the shape
/// `Fn(&(dyn Error + 'static)) -> Option<T>` where `T: Into<Classification>` (a
/// [`ProxyErrorKind`] or a [`Classification`]) implement this trait.
///
/// ```
/// use std::error::Error;
/// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
///
/// #[derive(Debug)]
/// struct CircuitOpen;
/// impl std::fmt::Display for CircuitOpen {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("circuit open")
///     }
/// }
/// impl Error for CircuitOpen {}
///
/// let layer = GatewayErrorLayer::new().classifier(|error: &(dyn Error + 'static)| {
///     error.is::<CircuitOpen>().then_some(ProxyErrorKind::DestinationUnavailable)
/// });
/// # let _ = layer;
/// ```
pub trait Classify: Send + Sync + 'static {
    /// Classifies `error`, the error the inner service returned (not one of its sources: walk
    /// [`Error::source`](std::error::Error::source) yourself where that matters).
    fn classify(&self, error: &(dyn StdError + 'static)) -> Option<Classification>;
}

impl<F, T> Classify for F
where
    F: Fn(&(dyn StdError + 'static)) -> Option<T> + Send + Sync + 'static,
    T: Into<Classification>,
{
    fn classify(&self, error: &(dyn StdError + 'static)) -> Option<Classification> {
        self(error).map(Into::into)
    }
}

/// The built-in classifier: walks the error and its `source()` chain, and recognises the errors of
/// `std::io`, hyper, hyper-util's legacy client, tower's timeout, load-shed and buffer, tokio's
/// timer and (with the `reqwest` feature) reqwest.
///
/// | error found in the chain | kind |
/// |---|---|
/// | hyper-util "dns error" | `dns_error`, or `dns_timeout` when the resolver timed out |
/// | `io::ErrorKind::ConnectionRefused` | `connection_refused` |
/// | `ConnectionReset`, `ConnectionAborted`, `BrokenPipe` | `connection_terminated` |
/// | `TimedOut`, tower or tokio `Elapsed` | `connection_timeout` while connecting, else `connection_read_timeout` (io) or `http_response_timeout` (tower/tokio) |
/// | `HostUnreachable`, `NetworkUnreachable`, `AddrNotAvailable` | `destination_ip_unroutable` |
/// | `UnexpectedEof` | `connection_terminated` while connecting, else `http_response_incomplete` |
/// | hyper: header section too large | `http_response_header_section_size` |
/// | hyper: any other parse error | `http_protocol_error` |
/// | hyper: connection closed before a complete message | `connection_terminated` |
/// | hyper: request canceled (its connection was gone before it was written) | `connection_terminated`, not sent |
/// | hyper: timeout | `http_response_timeout` |
/// | `tower::load_shed::error::Overloaded` | `connection_limit_reached` |
/// | `tower::buffer::error::Closed` | `destination_unavailable` |
/// | `h2`: `RST_STREAM(REFUSED_STREAM)` (feature `http2`) | `destination_unavailable`, not sent |
/// | `h2`: the stream was above a GOAWAY's last stream id (feature `http2`) | `destination_unavailable`, not sent |
/// | a [`ProxyError`](crate::ProxyError) | its own classification, status included |
///
/// Any failure inside hyper-util's connect step (its error says `is_connect()`) counts as
/// [`Phase::NotSent`], whatever its kind, because no byte of the request was written.
///
/// With the `http2` feature, two HTTP/2 errors count as [`Phase::NotSent`] too, because the
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
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl Classify for DefaultClassifier {
    fn classify(&self, error: &(dyn StdError + 'static)) -> Option<Classification> {
        let mut walk = Walk::default();
        let mut next = Some(error);
        // Bounded: a chain that loops (a buggy `source()`) must not hang the gateway.
        let mut depth = 0;
        while let Some(err) = next {
            if depth == 64 {
                break;
            }
            depth += 1;
            // An inner service that knows exactly what went wrong says so with a ProxyError.
            if let Some(decided) = err.downcast_ref::<crate::ProxyError>() {
                return Some(decided.classification());
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
}

impl<'a> Walk<'a> {
    fn finish(&self, kind: ProxyErrorKind) -> Classification {
        let classification = Classification::new(kind);
        if self.connecting || self.refused_by_protocol || self.unsent_by_client {
            classification.with_phase(Phase::NotSent)
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
        use ProxyErrorKind::*;

        if let Some(e) = err.downcast_ref::<hyper_util::client::legacy::Error>() {
            self.connecting |= e.is_connect();
            return None;
        }
        if let Some(e) = err.downcast_ref::<io::Error>() {
            self.io_inner = e.get_ref().map(|inner| inner as &(dyn StdError + 'static));
            return self.visit_io(e.kind());
        }
        if let Some(e) = err.downcast_ref::<hyper::Error>() {
            if e.is_parse_too_large() {
                return Some(HttpResponseHeaderSectionSize);
            }
            if e.is_parse() || e.is_parse_status() || e.is_parse_version_h2() {
                return Some(HttpProtocolError);
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
                self.fallback.get_or_insert(ConnectionTerminated);
            }
            return None;
        }
        if err.is::<tower::timeout::error::Elapsed>() || err.is::<tokio::time::error::Elapsed>() {
            return Some(self.timeout());
        }
        if err.is::<tower::load_shed::error::Overloaded>() {
            return Some(ConnectionLimitReached);
        }
        if err.is::<tower::buffer::error::Closed>() {
            return Some(DestinationUnavailable);
        }
        #[cfg(feature = "http2")]
        if let Some(e) = err.downcast_ref::<h2::Error>() {
            // RFC 9113 §8.7: both mean the server did not process the stream. A GOAWAY error from
            // the peer reaches a stream only when its id was above the GOAWAY's last stream id
            // (or it was opened after the GOAWAY arrived); streams at or below it run on.
            let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM);
            if refused || (e.is_go_away() && e.is_remote()) {
                self.refused_by_protocol = true;
                return Some(DestinationUnavailable);
            }
            return None;
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
        if display_is(err, "dns error") {
            // hyper-util's resolver wrapper; the type is private, its message is stable.
            self.connecting = true;
            self.resolving = true;
            self.fallback = Some(DnsError);
        }
        None
    }

    fn visit_io(&mut self, kind: io::ErrorKind) -> Option<ProxyErrorKind> {
        use io::ErrorKind as Io;
        use ProxyErrorKind::*;
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
fn display_is(err: &dyn StdError, expected: &str) -> bool {
    struct Compare<'a> {
        rest: &'a str,
        equal: bool,
    }
    impl fmt::Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            match self.rest.strip_prefix(s) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(())
                }
                None => {
                    self.equal = false;
                    Err(fmt::Error)
                }
            }
        }
    }
    let mut compare = Compare {
        rest: expected,
        equal: true,
    };
    let written = write!(compare, "{err}").is_ok();
    written && compare.equal && compare.rest.is_empty()
}

/// Runs the user's classifiers, then the default one.
pub(crate) fn classify(
    classifiers: &[std::sync::Arc<dyn Classify>],
    error: &(dyn StdError + 'static),
) -> Classification {
    classifiers
        .iter()
        .find_map(|c| c.classify(error))
        .or_else(|| DefaultClassifier.classify(error))
        .unwrap_or(Classification::unrecognized())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn io_error_wrapping_a_timeout_is_seen_through() {
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
        assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.phase(), Phase::NotSent);
        // Any other reset may have been processed: not recognised here.
        let cancel = h2::Error::from(h2::Reason::CANCEL);
        assert_eq!(DefaultClassifier.classify(&cancel), None);
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
