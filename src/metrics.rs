//! OpenTelemetry metrics (feature `metrics`): request durations and generated errors, as rates an
//! operator can alert on.
//!
//! Turned on with [`Telemetry::metrics`](crate::Telemetry::metrics), which creates three
//! instruments on the [`Meter`] it is given:
//!
//! ```
//! use gateway_errors::{GatewayErrorLayer, Telemetry};
//!
//! // After the application has set its meter provider (a meter taken before records nothing):
//! let meter = opentelemetry::global::meter("gateway-errors");
//! let layer = GatewayErrorLayer::new().telemetry(Telemetry::new().metrics(&meter));
//! ```
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | [`REQUEST_DURATION`] `http.server.request.duration` | histogram, `s`, the boundaries in [`DURATION_BOUNDARIES`] | `http.request.method`, `http.response.status_code`, `error.type` (only on errors), `gateway.fault` (only on failures) |
//! | [`ERRORS_GENERATED`] `gateway.errors.generated` | counter, `{error}` | `error.type`, `gateway.retryable`, `http.response.status_code`, `gateway.fault` |
//! | [`STALE_SERVED`] `gateway.stale.served` | counter, `{response}` | `error.type`, `http.response.status_code` |
//!
//! [`UpstreamHealthLayer::metrics`](crate::health::UpstreamHealthLayer::metrics) creates two more,
//! for the health of upstreams:
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | [`UPSTREAM_TRANSITIONS`] `gateway.upstream.transitions` | counter, `{transition}` | `gateway.upstream_state`: the state entered, `open`, `half_open` or `closed` |
//! | [`UPSTREAMS_UNAVAILABLE`] `gateway.upstreams.unavailable` | up-down counter, `{upstream}` | none: the number of upstreams marked unavailable (open or half-open) right now |
//!
//! Neither names the upstream: its key may come from a request, and would let the number of series
//! grow with traffic. The transition events name it.
//!
//! With an [adaptive concurrency limit](crate::health::limit), three more, per upstream: their
//! attribute `gateway.upstream` is the key, bounded by the limit's table of upstreams
//! ([`max_upstreams`](crate::health::AdaptiveLimit::max_upstreams)):
//!
//! | instrument | kind, unit | attributes |
//! |---|---|---|
//! | [`UPSTREAM_CONCURRENCY_LIMIT`] `gateway.upstream.concurrency_limit` | gauge, `{request}`, at the end of each window | `gateway.upstream` |
//! | [`UPSTREAM_IN_FLIGHT`] `gateway.upstream.in_flight` | gauge, `{request}`, at the end of each window | `gateway.upstream` |
//! | [`UPSTREAM_LIMIT_REFUSALS`] `gateway.upstream.limit_refusals` | counter, `{request}` | `gateway.upstream` |
//!
//! Attribute values, following the OpenTelemetry HTTP semantic conventions:
//!
//! - `http.request.method`: the method when it is one the conventions know (GET, HEAD, POST, PUT,
//!   DELETE, CONNECT, OPTIONS, TRACE, PATCH), otherwise `_OTHER`. A client can send any token as a
//!   method; folding keeps the number of series bounded. The environment variable
//!   `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS` (a comma-separated, case-sensitive list) replaces the
//!   known set, read once when [`Telemetry::metrics`](crate::Telemetry::metrics) is
//!   called.
//! - `http.response.status_code`: the status the client got, as an integer (200 for a gRPC
//!   caller's generated error, as gRPC requires; `error.type` still names the failure).
//! - `error.type`: for a response the layer generated, the RFC 9209 token of its kind
//!   (`connection_refused`, ...), or its status as a string when no classifier recognised the
//!   error or the layer replaced an origin error's body; for an origin's own 5xx, its status as a
//!   string (`"503"`). Absent on every other response: a 4xx forwarded from the origin is the
//!   client's business, not the server's error.
//! - `gateway.retryable`: the retry hint the client was given (`true` or `false`).
//! - `gateway.fault`: whose [fault](crate::fault) a failure was: `upstream` (a generated error
//!   for the upstream's failure, an origin 5xx, a body that broke off), `client` (its upload
//!   stalled or broke off, its own deadline), `gateway` (a loop, a refusal), or `client_gone`:
//!   the client left first, recorded with its duration and no status, as nginx logs a 499. A
//!   dashboard of upstream health keeps `gateway.fault = upstream` only.
//!
//! An answer from a [stale copy](crate::stale) is what the client got, so the duration records it
//! as such: the copy's status and no `error.type`. The failure it hid is counted by
//! [`STALE_SERVED`], whose `error.type` names it (as on the span) and whose
//! `http.response.status_code` is the copy's: the outage stays visible while users no longer
//! see it. It is not counted as a generated error.
//!
//! Nothing that grows with traffic is ever an attribute: no path, no query, no request id, no
//! address. With the default methods the duration histogram has at most a few hundred series.
//!
//! The conventions also ask for `url.scheme` on the duration. The layer leaves it out: behind a
//! TLS terminator, or on an HTTP/1.1 connection (whose request target carries no scheme), it
//! cannot tell `http` from `https`.
//!
//! # Queries
//!
//! Through the Prometheus naming rules these become `http_server_request_duration_seconds`,
//! `gateway_errors_generated_total` and `gateway_stale_served_total`, so "502s per second, by
//! type" is
//! `sum by (error_type) (rate(gateway_errors_generated_total{http_response_status_code="502"}[5m]))`
//! and "origin down, users served from copies" is
//! `sum by (error_type) (rate(gateway_stale_served_total[5m]))`.
//! `cargo run --example observability --features metrics -- --once` exports them to stdout (or,
//! with `--otlp http://127.0.0.1:4318`, to a collector).
//!
//! # What the duration measures
//!
//! The whole request, as the conventions ask, from the moment the layer's service is called with
//! it:
//!
//! - an origin's response: to the end of its body, that is when the body hands the server its last
//!   frame. A body that fails after the head is recorded then, with the head's status and
//!   `error.type` `http_response_incomplete` (`connection_read_timeout` or
//!   `http_response_timeout` when the layer cut a stalled body); a body the client stopped reading (it went away) is
//!   recorded when the server drops it. A response without a body to send (HEAD, 204, 304, an
//!   empty body) is recorded with its head;
//! - a generated error: to its head, with which its whole body is ready. So for a failure, the
//!   duration is the time the upstream took to fail (or the upstream timeout).
//!
//! A request whose client goes away before the response head is not recorded: it has no status.
//!
//! # Cost
//!
//! Without the feature nothing of this is compiled. With it, a layer without metrics configured
//! checks for them at three points of a request and does nothing more. With metrics, the
//! attribute values are static strings, integers and booleans built on the stack, so recording
//! allocates nothing once the SDK has seen each attribute set (see `benches/allocations.rs`). Most
//! of its time is the SDK's: hashing each measurement's attributes to find their series.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry::{Key, KeyValue, StringValue, Value};

use crate::fault::Fault;
use crate::kind::ProxyErrorKind;

/// The name of the request duration histogram, from the OpenTelemetry HTTP semantic conventions.
pub const REQUEST_DURATION: &str = "http.server.request.duration";

/// The name of the counter of responses the layer generated.
pub const ERRORS_GENERATED: &str = "gateway.errors.generated";

/// The name of the counter of answers from a stale copy in place of an error (see
/// [`stale`](crate::stale)).
pub const STALE_SERVED: &str = "gateway.stale.served";
/// The name of the counter of the transitions of upstreams between closed, open and half-open.
pub const UPSTREAM_TRANSITIONS: &str = "gateway.upstream.transitions";

/// The name of the up-down counter of upstreams marked unavailable (open or half-open).
pub const UPSTREAMS_UNAVAILABLE: &str = "gateway.upstreams.unavailable";

/// The name of the gauge of each upstream's adaptive concurrency limit.
pub const UPSTREAM_CONCURRENCY_LIMIT: &str = "gateway.upstream.concurrency_limit";

/// The name of the gauge of the requests in flight to each limited upstream.
pub const UPSTREAM_IN_FLIGHT: &str = "gateway.upstream.in_flight";

/// The name of the counter of requests refused by an upstream's adaptive concurrency limit.
pub const UPSTREAM_LIMIT_REFUSALS: &str = "gateway.upstream.limit_refusals";

/// The attribute naming a limited upstream: its key.
const UPSTREAM: &str = "gateway.upstream";

/// The bucket boundaries of [`REQUEST_DURATION`], in seconds: those the semantic conventions
/// advise for it, given to the SDK as the instrument's advisory boundaries. A view in the meter
/// provider can still replace them.
pub const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The value of `http.request.method` for a method outside the known set.
const OTHER_METHOD: &str = "_OTHER";

/// The semantic conventions' default known methods: RFC 9110's and PATCH (RFC 5789).
const DEFAULT_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// The environment variable that replaces the known methods, named by the semantic conventions.
const KNOWN_METHODS_VAR: &str = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS";

const METHOD: Key = Key::from_static_str("http.request.method");
const STATUS_CODE: Key = Key::from_static_str("http.response.status_code");
const ERROR_TYPE: Key = Key::from_static_str("error.type");
const RETRYABLE: Key = Key::from_static_str("gateway.retryable");
const FAULT: Key = Key::from_static_str("gateway.fault");
const UPSTREAM_STATE: Key = Key::from_static_str("gateway.upstream_state");

/// The instruments of the upstream health layer. Held in its settings.
#[derive(Clone)]
pub(crate) struct HealthMetrics {
    transitions: Counter<u64>,
    unavailable: UpDownCounter<i64>,
    limit: Gauge<u64>,
    in_flight: Gauge<u64>,
    limit_refusals: Counter<u64>,
}

impl HealthMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        HealthMetrics {
            transitions: meter
                .u64_counter(UPSTREAM_TRANSITIONS)
                .with_unit("{transition}")
                .with_description(
                    "Transitions of upstreams between closed, open (marked unavailable) and half-open (probing).",
                )
                .build(),
            unavailable: meter
                .i64_up_down_counter(UPSTREAMS_UNAVAILABLE)
                .with_unit("{upstream}")
                .with_description("Upstreams marked unavailable (open or half-open).")
                .build(),
            limit: meter
                .u64_gauge(UPSTREAM_CONCURRENCY_LIMIT)
                .with_unit("{request}")
                .with_description("The adaptive concurrency limit of an upstream.")
                .build(),
            in_flight: meter
                .u64_gauge(UPSTREAM_IN_FLIGHT)
                .with_unit("{request}")
                .with_description("Requests in flight to a limited upstream.")
                .build(),
            limit_refusals: meter
                .u64_counter(UPSTREAM_LIMIT_REFUSALS)
                .with_unit("{request}")
                .with_description(
                    "Requests refused at once because an upstream's concurrency limit was reached.",
                )
                .build(),
        }
    }

    /// The end of a window of `upstream`'s adaptive limit: its new limit, and its requests in
    /// flight.
    pub(crate) fn limit_window(&self, upstream: &Arc<str>, limit: u32, in_flight: u32) {
        let attributes = [KeyValue::new(UPSTREAM, StringValue::from(upstream.clone()))];
        self.limit.record(u64::from(limit), &attributes);
        self.in_flight.record(u64::from(in_flight), &attributes);
    }

    /// A request refused by `upstream`'s adaptive limit.
    pub(crate) fn limit_refused(&self, upstream: &Arc<str>) {
        self.limit_refusals.add(
            1,
            &[KeyValue::new(UPSTREAM, StringValue::from(upstream.clone()))],
        );
    }

    /// A transition to the state named `to`; `unavailable` is the change in the number of
    /// upstreams marked unavailable.
    pub(crate) fn transition(&self, to: &'static str, unavailable: i64) {
        self.transitions
            .add(1, &[KeyValue::new(UPSTREAM_STATE, to)]);
        if unavailable != 0 {
            self.unavailable.add(unavailable, &[]);
        }
    }

    /// An unavailable upstream forgotten (its slot given to another): one fewer.
    pub(crate) fn given_up(&self) {
        self.unavailable.add(-1, &[]);
    }
}

/// The instruments, and the attribute values prepared for them. Held in the layer's `Config`.
#[derive(Clone)]
pub(crate) struct Metrics {
    duration: Histogram<f64>,
    generated: Counter<u64>,
    stale: Counter<u64>,
    /// The known methods with their attribute values, prepared so that a request copies a value
    /// (a static string, or a shared one for an extension method) instead of allocating one.
    methods: Arc<[(Method, Value)]>,
}

impl Metrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        let methods = std::env::var(KNOWN_METHODS_VAR)
            .ok()
            .map(|list| parse_known_methods(&list))
            .unwrap_or_else(|| DEFAULT_METHODS.to_vec());
        Metrics::with_methods(meter, methods)
    }

    fn with_methods(meter: &Meter, methods: Vec<Method>) -> Self {
        let duration = meter
            .f64_histogram(REQUEST_DURATION)
            .with_unit("s")
            .with_description(
                "Time from the gateway receiving a request to the end of its response.",
            )
            .with_boundaries(DURATION_BOUNDARIES.to_vec())
            .build();
        let generated = meter
            .u64_counter(ERRORS_GENERATED)
            .with_unit("{error}")
            .with_description(
                "Error responses the gateway generated, by RFC 9209 error type and retry hint.",
            )
            .build();
        let stale = meter
            .u64_counter(STALE_SERVED)
            .with_unit("{response}")
            .with_description(
                "Answers from a stale copy in place of an error, by the RFC 9209 error type hidden.",
            )
            .build();
        let methods = methods
            .into_iter()
            .map(|method| {
                let value = method_value(&method);
                (method, value)
            })
            .collect();
        Metrics {
            duration,
            generated,
            stale,
            methods,
        }
    }

    /// `http.request.method`: the method if it is known, else `_OTHER`.
    fn method(&self, method: &Method) -> Value {
        self.methods
            .iter()
            .find(|(known, _)| known == method)
            .map_or(
                Value::String(StringValue::from(OTHER_METHOD)),
                |(_, value)| value.clone(),
            )
    }
}

/// A method's attribute value: static for the standard methods, shared for an extension method
/// (cloning either allocates nothing).
fn method_value(method: &Method) -> Value {
    let standard = DEFAULT_METHODS
        .iter()
        .find(|standard| *standard == method)
        .map(|standard| match *standard {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::CONNECT => "CONNECT",
            Method::OPTIONS => "OPTIONS",
            Method::TRACE => "TRACE",
            _ => "PATCH",
        });
    let value = match standard {
        Some(name) => StringValue::from(name),
        None => StringValue::from(Arc::<str>::from(method.as_str())),
    };
    Value::String(value)
}

/// The known methods from `OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`: a comma-separated list of
/// method names, case-sensitive; empty entries and names that are not tokens are skipped.
fn parse_known_methods(list: &str) -> Vec<Method> {
    let mut methods: Vec<Method> = Vec::new();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        if let Ok(method) = Method::from_bytes(name.as_bytes()) {
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
    }
    methods
}

/// When the request arrived, for the duration. Kept with the request's facts only when the layer
/// records metrics.
pub(crate) struct Started {
    at: Instant,
    method: Value,
}

impl Started {
    pub(crate) fn capture(metrics: Option<&Metrics>, method: &Method) -> Option<Self> {
        metrics.map(|metrics| Started {
            at: Instant::now(),
            method: metrics.method(method),
        })
    }

    /// A later attempt of a retried request: the duration runs from the first attempt's `start`.
    #[cfg(feature = "tower")]
    pub(crate) fn since(&mut self, start: Instant) {
        self.at = start;
    }
}

/// Records an origin's response now if it has no body the server will send, else returns a timer
/// for its body to hold, which records when the body ends.
pub(crate) fn forwarded(
    metrics: Option<&Metrics>,
    started: Option<Started>,
    status: StatusCode,
    no_body: bool,
) -> Option<ResponseTimer> {
    let (Some(metrics), Some(started)) = (metrics, started) else {
        return None;
    };
    let timer = ResponseTimer {
        duration: metrics.duration.clone(),
        started,
        status,
        error_type: status.is_server_error().then(|| status_text(status)),
        // Until the body says it ended, a drop is a client that went away.
        ended: no_body,
        // An origin 5xx is the upstream's; a success has no fault.
        fault: Fault::Upstream,
    };
    if no_body {
        // The response is complete with its head: dropping the timer records it.
        drop(timer);
        return None;
    }
    Some(timer)
}

/// Records the duration of a forwarded response when dropped: when its body has ended, failed, or
/// been dropped by a client that went away.
pub(crate) struct ResponseTimer {
    duration: Histogram<f64>,
    started: Started,
    status: StatusCode,
    /// The status for an origin 5xx; the kind's token for a body that failed or was cut.
    error_type: Option<&'static str>,
    /// Whether the body ended (well or not) rather than being dropped by a client that left.
    ended: bool,
    /// Whose fault an error was: an origin 5xx and a body that broke off are the upstream's, a
    /// body cut at a deadline the client used up is the client's.
    fault: Fault,
}

impl ResponseTimer {
    /// The body failed after its head was sent.
    pub(crate) fn failed(&mut self, kind: ProxyErrorKind, fault: Fault) {
        self.error_type = Some(kind.token());
        self.fault = fault;
    }

    /// The body ended, well or with [`failed`](Self::failed): not a client that went away.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for ResponseTimer {
    fn drop(&mut self) {
        let seconds = self.started.at.elapsed().as_secs_f64();
        let method = KeyValue::new(METHOD, self.started.method.clone());
        let status_code = KeyValue::new(STATUS_CODE, i64::from(self.status.as_u16()));
        // An origin 5xx and a body that broke off are the upstream's; a body the client left
        // is no one's failure, and says so.
        let fault = if !self.ended {
            Some(Fault::ClientGone)
        } else {
            self.error_type.map(|_| self.fault)
        };
        let fault = fault.map(|fault| KeyValue::new(FAULT, fault.as_str()));
        match (self.error_type, fault) {
            (Some(error_type), Some(fault)) => self.duration.record(
                seconds,
                &[
                    method,
                    status_code,
                    KeyValue::new(ERROR_TYPE, error_type),
                    fault,
                ],
            ),
            (None, Some(fault)) => self.duration.record(seconds, &[method, status_code, fault]),
            (_, None) => self.duration.record(seconds, &[method, status_code]),
        }
    }
}

/// The client went away before its answer was decided: the duration, with no status (none was
/// sent) and `gateway.fault = client_gone`, as nginx logs a 499.
pub(crate) fn client_gone(metrics: Option<&Metrics>, started: Option<&Started>) {
    let (Some(metrics), Some(started)) = (metrics, started) else {
        return;
    };
    metrics.duration.record(
        started.at.elapsed().as_secs_f64(),
        &[
            KeyValue::new(METHOD, started.method.clone()),
            KeyValue::new(FAULT, Fault::ClientGone.as_str()),
        ],
    );
}

/// A response the layer generated, as the metrics record it.
pub(crate) struct GeneratedError {
    /// The status the client got (200 for a gRPC caller).
    pub(crate) sent: StatusCode,
    pub(crate) kind: Option<ProxyErrorKind>,
    /// The error's own status: its `error.type` when no kind was recognised.
    pub(crate) status: StatusCode,
    pub(crate) retryable: bool,
    pub(crate) fault: Fault,
}

/// Records a response the layer generated: its duration, and one count of the error. Its
/// `error.type` is the kind's token, or the error's status when no kind was recognised (as on
/// the span); `gateway.fault` says whose fault it was, so that a dashboard of upstream health
/// leaves the clients' own out.
pub(crate) fn generated(
    metrics: Option<&Metrics>,
    started: Option<&Started>,
    error: &GeneratedError,
) {
    let (Some(metrics), Some(started)) = (metrics, started) else {
        return;
    };
    let seconds = started.at.elapsed().as_secs_f64();
    let error_type = error
        .kind
        .map_or_else(|| status_text(error.status), ProxyErrorKind::token);
    let status_code = KeyValue::new(STATUS_CODE, i64::from(error.sent.as_u16()));
    let error_type = KeyValue::new(ERROR_TYPE, error_type);
    let fault = KeyValue::new(FAULT, error.fault.as_str());
    metrics.duration.record(
        seconds,
        &[
            KeyValue::new(METHOD, started.method.clone()),
            status_code.clone(),
            error_type.clone(),
            fault.clone(),
        ],
    );
    metrics.generated.add(
        1,
        &[
            error_type,
            KeyValue::new(RETRYABLE, error.retryable),
            status_code,
            fault,
        ],
    );
}

/// Records an answer from a stale copy: its duration, as for any answer with status `sent`, and
/// one count of the failure it hid: its kind's token, or its `status` when no kind was
/// recognised (as on the span).
pub(crate) fn stale_served(
    metrics: Option<&Metrics>,
    started: Option<&Started>,
    sent: StatusCode,
    kind: Option<ProxyErrorKind>,
    status: StatusCode,
) {
    let (Some(metrics), Some(started)) = (metrics, started) else {
        return;
    };
    let error_type = kind.map_or_else(|| status_text(status), ProxyErrorKind::token);
    let seconds = started.at.elapsed().as_secs_f64();
    let status_code = KeyValue::new(STATUS_CODE, i64::from(sent.as_u16()));
    metrics.duration.record(
        seconds,
        &[
            KeyValue::new(METHOD, started.method.clone()),
            status_code.clone(),
        ],
    );
    metrics
        .stale
        .add(1, &[KeyValue::new(ERROR_TYPE, error_type), status_code]);
}

/// Every status code 100–999 as three ASCII digits, one after the other.
const STATUS_DIGITS: [u8; 2700] = {
    let mut digits = [0u8; 2700];
    let mut code = 100;
    while code < 1000 {
        let at = (code - 100) * 3;
        digits[at] = b'0' + (code / 100) as u8;
        digits[at + 1] = b'0' + (code / 10 % 10) as u8;
        digits[at + 2] = b'0' + (code % 10) as u8;
        code += 1;
    }
    digits
};

const STATUS_TEXT: &str = match std::str::from_utf8(&STATUS_DIGITS) {
    Ok(text) => text,
    Err(_) => panic!("status digits are ASCII"),
};

/// The status as a `&'static str`, so that an attribute can hold it without allocating
/// (`StatusCode::as_str` borrows from the status).
fn status_text(status: StatusCode) -> &'static str {
    // A `StatusCode` is always 100–999.
    let at = usize::from(status.as_u16() - 100) * 3;
    &STATUS_TEXT[at..at + 3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_is_the_code_for_every_status() {
        for code in 100..1000 {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_text(status), status.as_str());
        }
    }

    #[test]
    fn known_methods_from_the_environment_replace_the_defaults() {
        let methods = parse_known_methods("GET, PROPFIND,,get,GET,bad method");
        assert_eq!(
            methods,
            [
                Method::GET,
                Method::from_bytes(b"PROPFIND").unwrap(),
                Method::from_bytes(b"get").unwrap(),
            ]
        );
    }

    #[test]
    fn unknown_methods_fold_to_other_and_known_ones_keep_their_name() {
        let provider = opentelemetry::metrics::NoopMeterProvider::new();
        let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "test");
        let metrics = Metrics::with_methods(
            &meter,
            vec![Method::GET, Method::from_bytes(b"PROPFIND").unwrap()],
        );
        let name = |method: &[u8]| metrics.method(&Method::from_bytes(method).unwrap());
        assert_eq!(name(b"GET"), Value::from("GET"));
        assert_eq!(name(b"PROPFIND"), Value::from("PROPFIND"));
        assert_eq!(name(b"POST"), Value::from("_OTHER"));
        assert_eq!(name(b"get"), Value::from("_OTHER"));
    }
}
