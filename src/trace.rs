//! The per-request span and the fields recorded on it.
//!
//! Field names follow the OpenTelemetry HTTP semantic conventions, so that tracing-opentelemetry
//! exports them as the attributes a backend expects:
//!
//! | field | value |
//! |---|---|
//! | `http.request.method` | the request method |
//! | `url.path` | the request path (a field, never the span name) |
//! | `http.response.status_code` | the status the client got |
//! | `error.type` | the RFC 9209 token of a generated error, or the status of a forwarded 5xx |
//! | `otel.status_code` | `ERROR` for any 5xx, and for a body that failed mid-stream |
//! | `gateway.generated` | whether the layer made the response |
//! | `gateway.retryable` | the retry hint of a generated error |
//! | `gateway.phase` | `not_sent` or `maybe_sent`, for a generated error |
//! | `gateway.upstream_ms` | time until the response head or the failure |
//! | `gateway.cancelled` | the client went away first (not an error) |
//! | `http.response.body.size` | the bytes of the origin's body forwarded, once it ended (or broke off) |
//! | `gateway.head_sent` | `true` when the origin's body failed or timed out after its head went to the client |
//!
//! A gRPC call (see [`GrpcCode`](crate::GrpcCode)) also gets the OpenTelemetry RPC fields:
//!
//! | field | value |
//! |---|---|
//! | `rpc.system` | `grpc` |
//! | `rpc.service`, `rpc.method` | from the path `/package.Service/Method`; absent for a path of another shape |
//! | `rpc.grpc.status_code` | the code of a generated error, or the origin's `grpc-status` when it came in the response headers |
//!
//! For a generated gRPC error, `http.response.status_code` is 200, the status gRPC requires;
//! `error.type` is still the RFC 9209 token, and a 5xx-class error still sets `otel.status_code`.
//!
//! The span lives until the response body ends, so a mid-stream failure or a stall lands on it too
//! (`error.type` is then `http_response_incomplete`, `connection_read_timeout` or
//! `http_response_timeout`).

use std::error::Error as StdError;

use bytes::Buf;
use http::Request;
use http_body::Frame;
use tracing::field::Empty;
use tracing::{Level, Span};

use crate::error::ErrorChain;
use crate::kind::ProxyErrorKind;

/// The tracing target of the span and events.
pub(crate) const TARGET: &str = "gateway_errors";

pub(crate) fn request_span<B>(level: Level, request: &Request<B>) -> Span {
    macro_rules! span_at {
        ($level:expr) => {
            tracing::span!(
                target: TARGET,
                $level,
                "gateway.request",
                http.request.method = %request.method(),
                url.path = request.uri().path(),
                rpc.system = Empty,
                rpc.service = Empty,
                rpc.method = Empty,
                rpc.grpc.status_code = Empty,
                http.response.status_code = Empty,
                error.type = Empty,
                otel.status_code = Empty,
                gateway.generated = Empty,
                gateway.retryable = Empty,
                gateway.phase = Empty,
                gateway.upstream_ms = Empty,
                gateway.cancelled = Empty,
                gateway.head_sent = Empty,
                http.response.body.size = Empty,
            )
        };
    }
    match level {
        Level::ERROR => span_at!(Level::ERROR),
        Level::WARN => span_at!(Level::WARN),
        Level::INFO => span_at!(Level::INFO),
        Level::DEBUG => span_at!(Level::DEBUG),
        _ => span_at!(Level::TRACE),
    }
}

/// Watches an origin body to record how it ended. Dropped before the end means the client (or the
/// server on its behalf) gave up: recorded as cancelled, not as an error.
pub(crate) struct BodyObserver {
    span: Span,
    done: bool,
    bytes: u64,
    /// Records the request's duration when dropped, that is when the body ends.
    #[cfg(feature = "metrics")]
    timer: Option<crate::metrics::ResponseTimer>,
}

impl BodyObserver {
    pub(crate) fn new(span: Span) -> Option<Self> {
        (!span.is_disabled()).then_some(BodyObserver {
            span,
            done: false,
            bytes: 0,
            #[cfg(feature = "metrics")]
            timer: None,
        })
    }

    #[inline]
    pub(crate) fn forwarded<D: Buf>(&mut self, frame: &Frame<D>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.remaining() as u64;
        }
    }

    /// Adds `timer` to `observer`, or makes an observer for it alone when no subscriber wants the
    /// span: the body's end must be seen either way.
    #[cfg(feature = "metrics")]
    pub(crate) fn timed(observer: Option<Self>, timer: crate::metrics::ResponseTimer) -> Self {
        let mut observer = observer.unwrap_or_else(|| BodyObserver {
            span: Span::none(),
            done: false,
            bytes: 0,
            timer: None,
        });
        observer.timer = Some(timer);
        observer
    }

    pub(crate) fn completed(mut self) {
        self.done = true;
        self.span
            .record("http.response.body.size", self.body_size());
    }

    /// As i64: tracing-opentelemetry exports u64 fields as strings.
    fn body_size(&self) -> i64 {
        i64::try_from(self.bytes).unwrap_or(i64::MAX)
    }

    /// The body broke off after its head was sent: `kind` says why.
    pub(crate) fn failed(mut self, kind: ProxyErrorKind, error: &(dyn StdError + 'static)) {
        self.done = true;
        #[cfg(feature = "metrics")]
        {
            if let Some(timer) = &mut self.timer {
                timer.failed(kind);
            }
            // Kept only for its timer: nobody wants the span, nor (as without metrics) the event.
            if self.span.is_disabled() {
                return;
            }
        }
        self.span.record("error.type", kind.token());
        self.span.record("otel.status_code", "ERROR");
        self.span.record("gateway.head_sent", true);
        self.span
            .record("http.response.body.size", self.body_size());
        tracing::event!(
            target: TARGET,
            parent: &self.span,
            Level::WARN,
            error.type = kind.token(),
            http.response.body.size = self.body_size(),
            error = %ErrorChain(error),
            "upstream response body failed after the head was sent; the client's connection is broken off",
        );
    }
}

impl Drop for BodyObserver {
    fn drop(&mut self) {
        if !self.done {
            self.span.record("gateway.cancelled", true);
        }
    }
}
