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
//!
//! The span lives until the response body ends, so a mid-stream failure lands on it too.

use std::error::Error as StdError;

use http::Request;
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
                http.response.status_code = Empty,
                error.type = Empty,
                otel.status_code = Empty,
                gateway.generated = Empty,
                gateway.retryable = Empty,
                gateway.phase = Empty,
                gateway.upstream_ms = Empty,
                gateway.cancelled = Empty,
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
    /// Records the request's duration when dropped, that is when the body ends.
    #[cfg(feature = "metrics")]
    timer: Option<crate::metrics::ResponseTimer>,
}

impl BodyObserver {
    pub(crate) fn new(span: Span) -> Option<Self> {
        (!span.is_disabled()).then_some(BodyObserver {
            span,
            done: false,
            #[cfg(feature = "metrics")]
            timer: None,
        })
    }

    /// Adds `timer` to `observer`, or makes an observer for it alone when no subscriber wants the
    /// span: the body's end must be seen either way.
    #[cfg(feature = "metrics")]
    pub(crate) fn timed(observer: Option<Self>, timer: crate::metrics::ResponseTimer) -> Self {
        let mut observer = observer.unwrap_or_else(|| BodyObserver {
            span: Span::none(),
            done: false,
            timer: None,
        });
        observer.timer = Some(timer);
        observer
    }

    pub(crate) fn completed(mut self) {
        self.done = true;
    }

    pub(crate) fn failed(mut self, error: &(dyn StdError + 'static)) {
        self.done = true;
        let kind = ProxyErrorKind::HttpResponseIncomplete;
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
        tracing::event!(
            target: TARGET,
            parent: &self.span,
            Level::WARN,
            error.type = kind.token(),
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
