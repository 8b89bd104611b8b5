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
//! | `gateway.fault` | whose [fault](crate::fault) a failure was: `upstream`, `client`, `client_gone` or `gateway`; absent for a success |
//! | `http.response.body.size` | the bytes of the origin's body forwarded, once it ended (or broke off) |
//! | `gateway.head_sent` | `true` when the origin's body failed or timed out after its head went to the client |
//! | `gateway.stale` | `true` when a [stale copy](crate::stale) answered instead of an error; `error.type` then names the failure it hid |
//! | `gateway.stale.age_s` | the age of that copy in seconds, as sent in `Age` |
//! | `http.request.resend_count` | with [`RetryLayer`](crate::retry::RetryLayer) outside: how many times the request was sent again (absent when it was sent once); the retried attempts are `DEBUG` events in the span |
//! | `gateway.upstream_state` | with [`UpstreamHealthLayer`](crate::health::UpstreamHealthLayer) inside: `open` or `half_open` when the upstream was marked unavailable, `probe` for the request that probes it |
//!
//! A gRPC call (see [`GrpcCode`](crate::grpc::GrpcCode)) also gets the OpenTelemetry RPC fields:
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
use http::{Request, StatusCode};
use http_body::Frame;
use tracing::field::Empty;
use tracing::{Level, Span};

use crate::error::ErrorChain;
use crate::fault::Fault;
use crate::kind::{ProxyErrorKind, RequestSent};

/// The tracing target of the span and events.
pub(crate) const TARGET: &str = "gateway_errors";

/// The request's span at `level`; with every subscriber's filter below `level` (or none at
/// all), a disabled span, decided by one comparison before any callsite is looked at.
#[inline]
pub(crate) fn request_span<B>(level: Level, request: &Request<B>) -> Span {
    if level > tracing::level_filters::LevelFilter::current() {
        return Span::none();
    }
    enabled_request_span(level, request)
}

fn enabled_request_span<B>(level: Level, request: &Request<B>) -> Span {
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
                gateway.fault = Empty,
                gateway.head_sent = Empty,
                http.response.body.size = Empty,
                gateway.stale = Empty,
                gateway.stale.age_s = Empty,
                gateway.upstream_state = Empty,
                gateway.concurrency_limit = Empty,
                http.request.resend_count = Empty,
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

/// What a gRPC call's span says before the upstream is asked: `rpc.system`, and the service and
/// method of a well-formed path.
pub(crate) fn record_rpc_call(span: &Span, service_and_method: Option<(&str, &str)>) {
    span.record("rpc.system", "grpc");
    if let Some((service, method)) = service_and_method {
        span.record("rpc.service", service);
        span.record("rpc.method", method);
    }
}

/// Records how many times a retry service sent the request again, so far.
#[cfg(feature = "tower")]
pub(crate) fn record_resend_count(span: &Span, resends: u32) {
    if !span.is_disabled() {
        span.record("http.request.resend_count", i64::from(resends));
    }
}

/// Records an origin's response head on the span; `grpc_status` is its `grpc-status` when it
/// answered a gRPC call in its headers. Skipped when no subscriber wants the span: each `record`
/// looks its field up by name.
pub(crate) fn record_forwarded(span: &Span, status: StatusCode, grpc_status: Option<i64>) {
    if span.is_disabled() {
        return;
    }
    // Integers as i64: tracing-opentelemetry exports u64 fields as strings.
    span.record("http.response.status_code", i64::from(status.as_u16()));
    span.record("gateway.generated", false);
    if status.is_server_error() {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
        span.record("gateway.fault", Fault::Upstream.as_str());
    }
    if let Some(code) = grpc_status {
        span.record("rpc.grpc.status_code", code);
    }
}

/// Records the state of the request's upstream, where it matters, on the current span (the
/// request's, when the health layer runs inside the gateway layer).
pub(crate) fn record_upstream_state(state: &'static str) {
    // With every level filtered out no span is enabled: skip the lookup of the current one.
    if !tracing::level_enabled!(Level::ERROR) {
        return;
    }
    let span = Span::current();
    if !span.is_disabled() {
        span.record("gateway.upstream_state", state);
    }
}

/// Records, on the current span, the adaptive concurrency limit that refused the request.
pub(crate) fn record_concurrency_limit(limit: u32) {
    // Only on a refusal: the lookup of the current span is cheap next to the answer.
    let span = Span::current();
    if !span.is_disabled() {
        span.record("gateway.concurrency_limit", i64::from(limit));
    }
}

/// A response the layer generated, as the span and the event record it.
pub(crate) struct Generated<'a> {
    /// The RFC 9209 token, or the error's status when no kind was recognised.
    pub(crate) error_type: &'a str,
    /// The error's own status; it decides the severity.
    pub(crate) status: StatusCode,
    /// The status the client got: the error's, or 200 for a gRPC caller.
    pub(crate) sent: StatusCode,
    pub(crate) retryable: bool,
    pub(crate) phase: RequestSent,
    /// The code a gRPC caller got.
    pub(crate) grpc_code: Option<i32>,
    /// The error the layer answered for, with its sources: for the event, never the client.
    pub(crate) cause: Option<&'a (dyn StdError + 'static)>,
    /// An origin's error response whose body was replaced, rather than a failure.
    pub(crate) intercepted: bool,
    /// Whose fault it was.
    pub(crate) fault: Fault,
    /// An answer from what the gateway already knows (an upstream marked unavailable, or at its
    /// concurrency limit): the failure was logged when it was learnt, so each answer is a `DEBUG`
    /// event, not a `WARN` or an `INFO` per request for as long as the outage lasts. Asked only
    /// when the event may be wanted: it walks the error's chain.
    pub(crate) known: &'a dyn Fn() -> bool,
}

/// The client went away before its answer was complete: not an error, and no one's failure.
pub(crate) fn record_client_gone(span: &Span) {
    if !span.is_disabled() {
        span.record("gateway.cancelled", true);
        span.record("gateway.fault", Fault::ClientGone.as_str());
    }
}

/// Records the decision on the span, and one event with the whole error chain for operators.
pub(crate) fn record_generated(span: &Span, generated: &Generated<'_>) {
    let sent = i64::from(generated.sent.as_u16());
    // Nothing wanted at `WARN` is nothing wanted at `INFO` or `DEBUG` either: then the chain is
    // not walked.
    if span.is_disabled() && !tracing::event_enabled!(target: TARGET, Level::WARN) {
        return;
    }
    let known = (generated.known)();
    if span.is_disabled() {
        if known && !tracing::event_enabled!(target: TARGET, Level::DEBUG) {
            return;
        }
    } else {
        span.record("http.response.status_code", sent);
        span.record("error.type", generated.error_type);
        span.record("gateway.generated", true);
        span.record("gateway.retryable", generated.retryable);
        span.record("gateway.phase", generated.phase.as_str());
        span.record("gateway.fault", generated.fault.as_str());
        if let Some(code) = generated.grpc_code {
            span.record("rpc.grpc.status_code", i64::from(code));
        }
        if generated.status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    let cause = generated.cause.map(ErrorChain);
    let message = if generated.intercepted {
        "origin error replaced by a generated body"
    } else if generated.fault == Fault::Client {
        "client request failed"
    } else {
        "upstream request failed"
    };
    macro_rules! event_at {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                parent: span,
                $level,
                error.type = generated.error_type,
                http.response.status_code = sent,
                gateway.retryable = generated.retryable,
                gateway.phase = generated.phase.as_str(),
                gateway.fault = generated.fault.as_str(),
                error = cause.as_ref().map(tracing::field::display),
                "{message}",
            )
        };
    }
    if known {
        event_at!(Level::DEBUG);
    } else if generated.status.is_server_error() {
        event_at!(Level::WARN);
    } else {
        event_at!(Level::INFO);
    }
}

/// An answer from a stale copy, in place of the error `error_type` names.
pub(crate) struct StaleAnswer<'a> {
    /// The RFC 9209 token of the failure the copy hid, or its status.
    pub(crate) error_type: &'a str,
    /// The status the copy was sent with.
    pub(crate) sent: StatusCode,
    /// The copy's age in seconds, as in `Age`.
    pub(crate) age: u64,
    /// The failure, with its sources: for the event, never the client.
    pub(crate) cause: Option<&'a (dyn StdError + 'static)>,
}

/// Records a stale answer on the span (no error status: the client got an answer), and a
/// `WARN` event, so that the outage stays visible to operators.
pub(crate) fn record_stale(span: &Span, answer: &StaleAnswer<'_>) {
    let age = i64::try_from(answer.age).unwrap_or(i64::MAX);
    if !span.is_disabled() {
        span.record("http.response.status_code", i64::from(answer.sent.as_u16()));
        span.record("error.type", answer.error_type);
        span.record("gateway.generated", false);
        span.record("gateway.stale", true);
        span.record("gateway.stale.age_s", age);
    }
    let cause = answer.cause.map(ErrorChain);
    tracing::event!(
        target: TARGET,
        parent: span,
        Level::WARN,
        error.type = answer.error_type,
        http.response.status_code = i64::from(answer.sent.as_u16()),
        gateway.stale.age_s = age,
        error = cause.as_ref().map(tracing::field::display),
        "upstream request failed; answered with a stale copy",
    );
}

/// Watches an origin body for the span: how many bytes it forwarded and how it ended. Dropped
/// before the end means the client (or the server on its behalf) gave up: recorded as cancelled,
/// not as an error.
pub(crate) struct BodyTrace {
    span: Span,
    done: bool,
    bytes: u64,
}

impl BodyTrace {
    /// `None` when no subscriber wants the span nor the `WARN` event of a body that fails (a
    /// subscriber at `warn` filters the span out, and still wants to hear of a broken body).
    ///
    /// The span is taken from `span` only when it is wanted: otherwise it stays where it is, and
    /// is dropped there, once.
    pub(crate) fn new(span: &mut Span) -> Option<Self> {
        let wanted = !span.is_disabled() || tracing::event_enabled!(target: TARGET, Level::WARN);
        // Made only when wanted: one made and dropped at once would record a cancellation.
        wanted.then(|| BodyTrace {
            span: std::mem::replace(span, Span::none()),
            done: false,
            bytes: 0,
        })
    }

    #[inline]
    pub(crate) fn forwarded<D: Buf>(&mut self, frame: &Frame<D>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.remaining() as u64;
        }
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
    pub(crate) fn failed(
        mut self,
        kind: ProxyErrorKind,
        fault: Fault,
        error: &(dyn StdError + 'static),
    ) {
        self.done = true;
        self.span.record("error.type", kind.token());
        self.span.record("otel.status_code", "ERROR");
        self.span.record("gateway.head_sent", true);
        self.span.record("gateway.fault", fault.as_str());
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

impl Drop for BodyTrace {
    fn drop(&mut self) {
        if !self.done {
            record_client_gone(&self.span);
        }
    }
}
