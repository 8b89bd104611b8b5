//! The one decision point: from the outcome of the inner service to the response the client gets.
//!
//! The status is decided once, from the classification, and the body, headers, extension and span
//! all read that decision.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tracing::Level;

use crate::body::GatewayBody;
use crate::cache::CachedResponse;
use crate::classify::{classify, Classification};
use crate::deadline::BodyLimits;
use crate::error::{ErrorChain, PendingProxyError, ProxyError};
use crate::future::Pending;
use crate::grpc::{self, GrpcCall, GrpcCode, GRPC_STATUS};
use crate::headers::{append_member, details_param, RetryAfter, PROXY_STATUS};
use crate::kind::{Phase, ProxyErrorKind};
use crate::layer::Config;
use crate::negotiate::{negotiate, negotiate_line, Format};
use crate::render::{ErrorView, UNRECOGNIZED_DETAIL};
use crate::retry::{has_idempotency_key, RetryFacts};
use crate::trace::{BodyObserver, TARGET};
use crate::BoxError;

/// What the response will need from the request, read once in `call`, without allocating.
pub(crate) struct RequestFacts {
    accept: AcceptSnapshot,
    is_head: bool,
    idempotent_method: bool,
    idempotency_key: bool,
    /// Cloning a parsed header value shares its bytes; it does not copy them.
    request_id: Option<HeaderValue>,
    /// The protocols the client asked to switch to (`Upgrade`), if any.
    upgrade: Option<HeaderValue>,
    /// A gRPC caller is answered in gRPC's terms; `None` for every other request.
    grpc: Option<GrpcCall>,
    /// When the request arrived, and its method's attribute; only when metrics are recorded.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Started>,
}

impl RequestFacts {
    pub(crate) fn capture<B>(request: &Request<B>, config: &Config) -> Self {
        let headers = request.headers();
        let request_id = request
            .extensions()
            .get::<tower_http::request_id::RequestId>()
            .map(|id| id.header_value().clone())
            .or_else(|| headers.get(&config.request_id_header).cloned());
        let mut accept_lines = headers.get_all(header::ACCEPT).iter();
        let accept = match (accept_lines.next(), accept_lines.next()) {
            (None, _) => AcceptSnapshot::Absent,
            (Some(line), None) => AcceptSnapshot::One(line.clone()),
            // Several lines are rare: negotiate now rather than keep them all.
            _ => AcceptSnapshot::Decided(negotiate(
                headers.get_all(header::ACCEPT),
                config.default_format,
            )),
        };
        RequestFacts {
            accept,
            is_head: request.method() == Method::HEAD,
            idempotent_method: config.retry.is_idempotent(request.method()),
            idempotency_key: has_idempotency_key(headers),
            request_id,
            upgrade: headers.get(header::UPGRADE).cloned(),
            grpc: GrpcCall::detect(headers),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Started::capture(config.metrics.as_ref(), request.method()),
        }
    }

    /// How long the upstream has for its response head: the configured timeout, or the gRPC
    /// caller's own deadline (`grpc-timeout`) when that is sooner.
    pub(crate) fn upstream_timeout(&self, configured: Option<Duration>) -> Option<Duration> {
        let deadline = self.grpc.and_then(|call| call.timeout);
        match (configured, deadline) {
            (Some(configured), Some(deadline)) => Some(configured.min(deadline)),
            (configured, deadline) => configured.or(deadline),
        }
    }

    /// The gRPC call this request is, if it is one.
    pub(crate) fn grpc(&self) -> Option<GrpcCall> {
        self.grpc
    }

    /// The body format, negotiated only now that an error needs a body.
    fn format(&self, default: Format) -> Format {
        match &self.accept {
            AcceptSnapshot::Absent => default,
            AcceptSnapshot::One(line) => negotiate_line(line, default),
            AcceptSnapshot::Decided(format) => *format,
        }
    }

    /// The request id, if it is printable ASCII of a sane length. Anything else is dropped rather
    /// than reflected.
    fn request_id(&self) -> Option<&str> {
        let id = self.request_id.as_ref()?.to_str().ok()?;
        let sane = !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic());
        sane.then_some(id)
    }
}

/// The request's `Accept`, kept so that a successful request never pays for negotiation.
enum AcceptSnapshot {
    Absent,
    One(HeaderValue),
    Decided(Format),
}

pub(crate) enum Outcome<B> {
    Response(Response<B>),
    Failed(BoxError),
    TimedOut,
}

/// A timer fired before the response head arrived. The source of the `http_response_timeout`
/// error, for the span.
#[derive(Debug)]
enum HeadTimedOut {
    Upstream(Duration),
    ResponseDeadline(Duration),
}

impl fmt::Display for HeadTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadTimedOut::Upstream(after) => {
                write!(f, "upstream sent no response head within {after:?}")
            }
            HeadTimedOut::ResponseDeadline(after) => write!(
                f,
                "upstream sent no response head within the response deadline of {after:?}"
            ),
        }
    }
}

impl StdError for HeadTimedOut {}

/// What is wrong with an interim or protocol-switching response the origin gave as final.
#[derive(Debug)]
enum BadSwitch {
    /// A 1xx other than 101 as the final response.
    Interim(StatusCode),
    /// A 101 to a request that asked for no upgrade (RFC 9110 §15.2.2).
    Unasked,
    /// A 101 that names no protocol, or one the client did not offer (RFC 9110 §7.8).
    Unoffered,
}

impl fmt::Display for BadSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadSwitch::Interim(status) => {
                write!(
                    f,
                    "upstream gave the interim status {status} as its final response"
                )
            }
            BadSwitch::Unasked => {
                f.write_str("upstream switched protocols for a request that sent no Upgrade")
            }
            BadSwitch::Unoffered => f.write_str(
                "upstream switched protocols without naming one the request offered in Upgrade",
            ),
        }
    }
}

impl StdError for BadSwitch {}

/// Checks a 1xx final response: only a 101 that answers the request's `Upgrade` may pass.
fn check_switch(
    status: StatusCode,
    facts: &RequestFacts,
    headers: &HeaderMap,
) -> Option<ProxyError> {
    let bad = if status != StatusCode::SWITCHING_PROTOCOLS {
        BadSwitch::Interim(status)
    } else {
        let Some(offered) = &facts.upgrade else {
            return Some(
                ProxyError::new(ProxyErrorKind::HttpProtocolError).with_source(BadSwitch::Unasked),
            );
        };
        let chosen = headers.get(header::UPGRADE).map(HeaderValue::as_bytes);
        if chosen.is_some_and(|chosen| offers(offered.as_bytes(), chosen)) {
            return None;
        }
        return Some(
            ProxyError::new(ProxyErrorKind::HttpUpgradeFailed).with_source(BadSwitch::Unoffered),
        );
    };
    Some(ProxyError::new(ProxyErrorKind::HttpProtocolError).with_source(bad))
}

/// Whether every protocol in the 101's `Upgrade` (usually one) is among those the request
/// offered. Protocol names compare case-insensitively, versions included (`websocket`,
/// `HTTP/2.0`).
fn offers(offered: &[u8], chosen: &[u8]) -> bool {
    let mut any = false;
    for protocol in chosen.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if protocol.is_empty() {
            continue;
        }
        any = true;
        let found = offered
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|o| o.eq_ignore_ascii_case(protocol));
        if !found {
            return false;
        }
    }
    any
}

pub(crate) fn finish<B: Body>(pending: Pending, outcome: Outcome<B>) -> Response<GatewayBody<B>> {
    if let Some(started) = pending.started {
        let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        pending.span.record("gateway.upstream_ms", elapsed_ms);
    }
    match outcome {
        Outcome::Response(mut response) => {
            if let Some(PendingProxyError(error)) =
                response.extensions_mut().remove::<PendingProxyError>()
            {
                let (parts, _) = response.into_parts();
                return generate(&pending, error, Some(&parts.headers), None);
            }
            let status = response.status();
            if status.is_informational() {
                // hyper consumes interim responses (100, 103) itself; an inner service that
                // hands one over as final, or a 101 nobody asked for, broke the exchange.
                if let Some(error) = check_switch(status, &pending.facts, response.headers()) {
                    return generate(&pending, error, None, None);
                }
            }
            let generated_inside = response.extensions().get::<Generated>().is_some();
            // A gRPC status from the origin is its answer to a gRPC caller, whatever the HTTP
            // status: never replaced.
            let grpc_answer =
                pending.facts.grpc.is_some() && response.headers().contains_key(&GRPC_STATUS);
            if pending.config.intercept.contains(status) && !generated_inside && !grpc_answer {
                let (parts, _) = response.into_parts();
                let error = ProxyError::from_classification(
                    Classification::unrecognized()
                        .with_status(status)
                        .with_phase(Phase::MaybeSent),
                );
                return generate(&pending, error, Some(&parts.headers), Some(status));
            }
            forward(pending, response)
        }
        Outcome::Failed(error) => {
            let classification = classify(&pending.config.classifiers, &*error);
            let error = ProxyError::from_classification(classification).with_source_boxed(error);
            generate(&pending, error, None, None)
        }
        Outcome::TimedOut => {
            // The timer was set for the sooner of the two limits (see `ResponseFuture::new`).
            let timeout = pending
                .facts
                .upstream_timeout(pending.config.upstream_timeout);
            let source = match pending.response_deadline {
                Some((_, whole)) if timeout.is_none_or(|head| whole <= head) => {
                    HeadTimedOut::ResponseDeadline(whole)
                }
                _ => HeadTimedOut::Upstream(timeout.unwrap_or_default()),
            };
            let error = ProxyError::new(ProxyErrorKind::HttpResponseTimeout).with_source(source);
            generate(&pending, error, None, None)
        }
    }
}

/// An origin response: status, headers and body go on unchanged; the body is only observed.
fn forward<B: Body>(pending: Pending, response: Response<B>) -> Response<GatewayBody<B>> {
    let span = pending.span;
    let status = response.status();
    // Each `record` looks its field up by name: skipped when no subscriber wants the span.
    if !span.is_disabled() {
        span.record("http.response.status_code", i64::from(status.as_u16()));
        span.record("gateway.generated", false);
        if status.is_server_error() {
            span.record("error.type", status.as_str());
            span.record("otel.status_code", "ERROR");
        }
        if pending.facts.grpc.is_some() {
            grpc::record_forwarded(&span, response.headers());
        }
    }
    // A server never polls a body it will not send (HEAD, 1xx, 204, 304, or one that is already
    // at its end): the response is complete with its head, and dropping that body is no
    // cancellation.
    let no_body = pending.facts.is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || response.body().is_end_stream();
    let observer = if no_body {
        None
    } else {
        BodyObserver::new(span)
    };
    // Recorded now when there is no body, else when the body ends.
    #[cfg(feature = "metrics")]
    let observer = crate::metrics::forwarded(
        &pending.config,
        pending.facts.metrics,
        status,
        no_body,
        observer,
    );
    let limits = BodyLimits {
        read_timeout: pending.config.body_read_timeout(),
        response_deadline: pending.response_deadline,
    };
    response.map(|body| GatewayBody::origin(body, limits, observer))
}

/// A generated error response. `rewritten` holds the headers of the response it replaces (a
/// handler's marked response, or an intercepted origin error); `received` the origin's status
/// when intercepting.
fn generate<B>(
    pending: &Pending,
    error: ProxyError,
    rewritten: Option<&HeaderMap>,
    received: Option<StatusCode>,
) -> Response<GatewayBody<B>> {
    let config = &pending.config;
    let facts = &pending.facts;
    let format = facts.format(config.default_format);
    let status = error.status();
    let kind = error.kind();

    let retry_facts = RetryFacts {
        phase: error.phase(),
        kind,
        idempotent_method: facts.idempotent_method,
        idempotency_key: facts.idempotency_key,
    };
    let retryable = config.retry.retryable(&retry_facts);
    // An origin's (or a handler's) own Retry-After is kept on a rewrite and wins over ours, so the
    // body and the extension state the delay the header sends.
    let kept_retry_after = rewritten
        .and_then(|old| old.get(header::RETRY_AFTER))
        .filter(|_| config.keep_on_rewrite.contains(&header::RETRY_AFTER));
    let retry_after = match kept_retry_after {
        Some(value) => RetryAfter::parse(value.as_bytes()),
        None => config.retry.retry_after(kind, status),
    };
    let error = error.with_retry_hint(retryable, retry_after);

    let detail = match (kind, received) {
        (Some(kind), _) => kind.detail(),
        (None, Some(s)) if s.is_server_error() => {
            "The upstream server failed to handle the request."
        }
        (None, Some(_)) => "The upstream server could not process the request.",
        (None, None) => UNRECOGNIZED_DETAIL,
    };
    let head = ErrorHead {
        config,
        format,
        status,
        kind,
        retry_after: retry_after.filter(|_| kept_retry_after.is_none()),
        received,
        rewritten,
    };
    // Opt-in only: the chain may name internal hosts. Built per response, never cached.
    let detailed = StdError::source(&error)
        .filter(|_| config.details)
        .map(|cause| with_details(head.proxy_status_member(), cause));
    let (sent, body, headers) = match facts.grpc {
        Some(call) => {
            let code = config.grpc.code(kind, status);
            if !pending.span.is_disabled() {
                let code = i64::from(code.as_i32());
                pending.span.record("rpc.grpc.status_code", code);
            }
            let (body, headers) = grpc_answer(&head, call, code, detail, retry_after, detailed);
            // gRPC requires HTTP 200 for its own errors.
            (StatusCode::OK, body, headers)
        }
        None => {
            let view = ErrorView {
                status,
                kind,
                detail,
                request_id: facts.request_id(),
                retryable,
                retry_after_seconds: retry_after
                    .map(|a| a.seconds_from(std::time::SystemTime::now())),
                proxy: &config.proxy_name,
            };
            let (body, headers) = negotiated_answer(&head, &view, retryable, detailed);
            (status, body, headers)
        }
    };

    record(pending, &error, sent, received.is_some());
    #[cfg(feature = "metrics")]
    crate::metrics::generated(config, facts, sent, &error);

    let body = if facts.is_head || bodiless(sent) {
        GatewayBody::generated(Bytes::new())
    } else {
        GatewayBody::generated(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = sent;
    *response.headers_mut() = headers;
    if received.is_none() {
        response.extensions_mut().insert(error);
    }
    // Zero-sized: costs no allocation once the map exists.
    response.extensions_mut().insert(Generated);
    response
}

/// The body in the negotiated format, and its head; `detailed` is our `Proxy-Status` member with
/// its details, if any.
fn negotiated_answer(
    head: &ErrorHead<'_>,
    view: &ErrorView<'_>,
    retryable: bool,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let config = head.config;
    let format = head.format;
    let cacheable = head.depends_on_its_slot_alone()
        && view.request_id.is_none()
        && !config.templates.has_renderer();
    if !cacheable {
        let body = config.templates.render(view, format);
        let headers = head.headers(&body, detailed);
        return (body, headers);
    }
    // A clone of the kept head costs the map's two allocations and no hashing.
    let cached = config
        .response_cache
        .get_or_render(format, head.kind, retryable, || {
            let body = config.templates.render(view, format);
            let headers = head.headers(&body, None);
            CachedResponse { body, headers }
        });
    let mut headers = cached.headers.clone();
    if let Some(detailed) = detailed {
        // Not a rewrite, so the field holds our member alone; replacing it does not grow the map.
        headers.insert(PROXY_STATUS.clone(), detailed);
    }
    (cached.body.clone(), headers)
}

/// RFC 9110 §6.4.1: 1xx, 204 and 304 never carry content.
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Marks a response this crate generated, so that an outer layer that intercepts origin errors
/// leaves it alone instead of rendering it a second time.
#[derive(Clone, Copy)]
struct Generated;

/// Everything the head of a generated error depends on, besides the body.
struct ErrorHead<'a> {
    config: &'a Config,
    format: Format,
    status: StatusCode,
    kind: Option<ProxyErrorKind>,
    /// Ours to send: `None` when there is none, or when a rewrite keeps the origin's own.
    retry_after: Option<RetryAfter>,
    received: Option<StatusCode>,
    rewritten: Option<&'a HeaderMap>,
}

impl ErrorHead<'_> {
    /// RFC 9110 §6.4.1: 1xx, 204 and 304 never carry content; a classifier could pick one.
    fn bodiless_status(&self) -> bool {
        bodiless(self.status)
    }

    /// Whether this head (and the body for it) depends on the format, kind and retry hint alone,
    /// so that it can be rendered once and kept. Not so for a rewrite (it keeps the old
    /// response's fields), a status a classifier chose over the kind's, or a `Retry-After` date.
    fn depends_on_its_slot_alone(&self) -> bool {
        self.rewritten.is_none()
            && self.status
                == self
                    .kind
                    .map_or(StatusCode::BAD_GATEWAY, ProxyErrorKind::status)
            && !matches!(self.retry_after, Some(RetryAfter::At(_)))
    }

    /// Our `Proxy-Status` member, without details.
    fn proxy_status_member(&self) -> HeaderValue {
        match self.received {
            Some(received) => received_status_member(self.config, received),
            None => self.config.proxy_status.get(self.kind),
        }
    }

    /// The head for `body`; `detailed` is our `Proxy-Status` member with its details, if any.
    fn headers(&self, body: &Bytes, detailed: Option<HeaderValue>) -> HeaderMap {
        let config = self.config;
        // Five fields always; room for Retry-After, and for what a rewrite keeps. A map sized to
        // fit allocates a third of what the next power of two would.
        let kept = self.rewritten.map_or(0, |old| {
            config
                .keep_on_rewrite
                .iter()
                .map(|name| old.get_all(name).iter().count())
                .sum()
        });
        let mut headers = HeaderMap::with_capacity(6 + kept);
        if !self.bodiless_status() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.format.content_type()),
            );
            // Also for HEAD: the length a GET would have had (RFC 9110 §8.6).
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
        let ours = detailed.unwrap_or_else(|| self.proxy_status_member());
        match self.rewritten {
            Some(old) => {
                for name in &config.keep_on_rewrite {
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
        headers
    }
}

/// `<name>; received-status=<code>`, for an origin error whose body was replaced.
fn received_status_member(config: &Config, received: StatusCode) -> HeaderValue {
    // The member for unrecognised errors is the encoded name alone.
    let member = config.proxy_status.get(None);
    let mut value = Vec::with_capacity(member.len() + 24);
    value.extend_from_slice(member.as_bytes());
    value.extend_from_slice(b"; received-status=");
    value.extend_from_slice(received.as_str().as_bytes());
    HeaderValue::from_bytes(&value).unwrap_or(member)
}

/// `member; details="..."`, the cause sanitized to a bounded Structured Field string.
fn with_details(member: HeaderValue, cause: &(dyn StdError + 'static)) -> HeaderValue {
    let details = details_param(cause);
    let mut value = Vec::with_capacity(member.len() + 10 + details.len());
    value.extend_from_slice(member.as_bytes());
    value.extend_from_slice(b"; details=");
    value.extend_from_slice(details.as_bytes());
    // The member is a header value and the details printable ASCII: the join is one too.
    HeaderValue::from_bytes(&value).unwrap_or(member)
}

/// A gRPC caller's answer (see [`grpc::answer`]): the error in gRPC's own fields, with the same
/// `Proxy-Status` and `Retry-After` as any generated error. The head keeps
/// `Cache-Control: no-store` and drops `Vary: accept`: the answer follows the request's
/// `Content-Type`, not its `Accept`. A trailers-only answer has no body and so no
/// `Content-Length`; a gRPC-Web answer states its body's.
fn grpc_answer(
    head: &ErrorHead<'_>,
    call: GrpcCall,
    code: GrpcCode,
    detail: &str,
    retry_after: Option<RetryAfter>,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let build = |detailed: Option<HeaderValue>| {
        let mut headers = head.headers(&Bytes::new(), detailed);
        headers.remove(header::VARY);
        headers.remove(header::CONTENT_LENGTH);
        // The delay the caller is told, an origin's own on a rewrite included.
        let pushback = retry_after.map(|after| after.delay_from(std::time::SystemTime::now()));
        let body = grpc::answer(call, code, detail, pushback, &mut headers);
        if call.is_web() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        CachedResponse { body, headers }
    };
    if !head.depends_on_its_slot_alone() {
        let built = build(detailed);
        return (built.body, built.headers);
    }
    let cached = head.config.grpc.cached(call, head.kind, || build(None));
    let mut headers = cached.headers.clone();
    // Kept once per framing: the caller's own `+proto` or `+json` goes back to it. Replacing a
    // value does not grow the map.
    headers.insert(header::CONTENT_TYPE, call.content_type());
    if let Some(detailed) = detailed {
        headers.insert(PROXY_STATUS.clone(), detailed);
    }
    (cached.body.clone(), headers)
}

/// Records the decision on the span, and one event with the whole error chain for operators.
/// `sent` is the status the client gets: 200 for a gRPC caller, whose error's own status still
/// decides the severity.
fn record(pending: &Pending, error: &ProxyError, sent: StatusCode, intercepted: bool) {
    let span = &pending.span;
    let status = error.status();
    let error_type: &str = match error.kind() {
        Some(kind) => kind.token(),
        None => status.as_str(),
    };
    if span.is_disabled() {
        if !tracing::event_enabled!(target: TARGET, Level::WARN) {
            return;
        }
    } else {
        // Integers as i64: tracing-opentelemetry exports u64 fields as strings.
        span.record("http.response.status_code", i64::from(sent.as_u16()));
        span.record("error.type", error_type);
        span.record("gateway.generated", true);
        span.record("gateway.retryable", error.is_retryable());
        span.record("gateway.phase", error.phase().as_str());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    let cause = StdError::source(error).map(ErrorChain);
    let message = if intercepted {
        "origin error replaced by a generated body"
    } else {
        "upstream request failed"
    };
    macro_rules! event_at {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                parent: span,
                $level,
                error.type = error_type,
                http.response.status_code = i64::from(sent.as_u16()),
                gateway.retryable = error.is_retryable(),
                gateway.phase = error.phase().as_str(),
                error = cause.as_ref().map(tracing::field::display),
                "{message}",
            )
        };
    }
    if status.is_server_error() {
        event_at!(Level::WARN);
    } else {
        event_at!(Level::INFO);
    }
}
