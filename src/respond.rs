//! The one decision point: from the outcome of the inner service to the response the client gets.
//!
//! The status is decided once, from the classification, and the body, headers, extension and span
//! all read that decision.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body;
use tracing::Span;

use crate::BoxError;
use crate::body::GatewayBody;
use crate::cache::{Answer, MAX_KEPT_DELAY};
use crate::classify::classification::Classification;
use crate::classify::classify;
use crate::config::Config;
use crate::deadline::{BodyLimits, ResponseDeadline, TimedOut};
use crate::error::{PendingProxyError, ProxyError, chain};
use crate::facts::RequestFacts;
use crate::fault::Fault;
use crate::grpc::answer as grpc_answer;
use crate::grpc::call::{GRPC_STATUS, GrpcCall, status_in_headers};
use crate::headers::retry_after::RetryAfter;
use crate::headers::{PROXY_STATUS, append_member, with_details, with_tls_alert};
use crate::health::{LimitReached, UpstreamUnavailable};
use crate::interim::check_final_interim;
use crate::kind::{Phase, ProxyErrorKind};
use crate::negotiate::Format;
use crate::render::{ErrorView, UNRECOGNIZED_DETAIL};
use crate::retry::RetryFacts;
use crate::stale::{FromCopy, Hides, StaleIfError};
use crate::trace::{self, BodyTrace};

/// What the answer will need, kept from the request until the outcome is known.
pub(crate) struct Pending {
    pub(crate) config: Arc<Config>,
    pub(crate) facts: RequestFacts,
    pub(crate) span: Span,
    /// For `gateway.upstream_ms`; not read when no subscriber wants the span.
    pub(crate) started: Option<Instant>,
    /// When the whole response must be over, if a response deadline is set.
    pub(crate) response_deadline: Option<ResponseDeadline>,
}

impl Pending {
    pub(crate) fn new(
        config: Arc<Config>,
        facts: RequestFacts,
        span: Span,
        response_deadline: Option<ResponseDeadline>,
    ) -> Self {
        Pending {
            started: (!span.is_disabled()).then(Instant::now),
            config,
            facts,
            span,
            response_deadline,
        }
    }
}

/// The client went away before its answer was decided: recorded as such (nginx logs 499), an
/// error of no one's, on the span and in the metrics.
pub(crate) fn client_gone(pending: &Pending) {
    trace::record_client_gone(&pending.span);
    #[cfg(feature = "metrics")]
    crate::metrics::client_gone(
        pending.config.metrics.as_ref(),
        pending.facts.metrics.as_ref(),
    );
}

/// How the inner service ended.
pub(crate) enum Outcome<B> {
    Response(Response<B>),
    Failed(BoxError),
    /// A limit on the head ran out first.
    TimedOut(TimedOut),
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
                let offered = pending.facts.upgrade.as_ref();
                if let Some(error) = check_final_interim(status, offered, response.headers()) {
                    return generate(&pending, error, None, None);
                }
            }
            // Looked up only when the answer could be replaced: a status to intercept, or a
            // store that may answer in its place.
            let may_replace = pending.config.intercept.contains(status)
                || (pending.config.stale.is_some() && pending.facts.stale.is_some());
            let generated_inside = may_replace && {
                let extensions = response.extensions();
                extensions.get::<Generated>().is_some() || extensions.get::<ProxyError>().is_some()
            };
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
            if !generated_inside {
                if let Some(answer) = origin_error_from_copy(&pending, status) {
                    return answer;
                }
            }
            forward(pending, response)
        }
        Outcome::Failed(error) => {
            // A ProxyError is an error already decided (by this layer, or by a service that knows
            // exactly what went wrong): it is answered as it is, its own source kept.
            let error = match error.downcast::<ProxyError>() {
                Ok(decided) => *decided,
                Err(error) => {
                    let classification = classify(&pending.config.classifiers, &*error);
                    // A ProxyError deeper in the chain may know when to come back.
                    let retry_after = chain(&*error)
                        .find_map(|e| e.downcast_ref::<ProxyError>())
                        .and_then(ProxyError::retry_after);
                    let error =
                        ProxyError::from_classification(classification).with_source_boxed(error);
                    match retry_after {
                        Some(after) => error.with_retry_after(after),
                        None => error,
                    }
                }
            };
            generate(&pending, error, None, None)
        }
        Outcome::TimedOut(timed_out) => {
            let classification = Classification::new(timed_out.kind());
            // A gRPC caller's own deadline is answered as any timeout, but it is the caller's.
            let classification = if timed_out.is_upstreams() {
                classification
            } else {
                classification.with_fault(Fault::Client)
            };
            let error = ProxyError::from_classification(classification).with_source(timed_out);
            generate(&pending, error, None, None)
        }
    }
}

/// What a client is told about its own fault, by the status it gets.
fn client_detail(status: StatusCode) -> &'static str {
    if status == StatusCode::REQUEST_TIMEOUT {
        "The gateway timed out waiting for the rest of the request body."
    } else {
        "The request body ended before it was complete."
    }
}

/// Whether a response with `status` has no content (RFC 9110 §6.4.1): 1xx, 204 and 304.
fn carries_no_content(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// An origin response: status, headers and body go on unchanged; the body is only observed.
fn forward<B: Body>(pending: Pending, response: Response<B>) -> Response<GatewayBody<B>> {
    let status = response.status();
    let grpc_status = pending
        .facts
        .grpc
        .and_then(|_| status_in_headers(response.headers()));
    trace::record_forwarded(&pending.span, status, grpc_status);
    // A server never polls a body it will not send (HEAD, 1xx, 204, 304, or one that is already
    // at its end): the response is complete with its head, and dropping that body is no
    // cancellation.
    let no_body =
        pending.facts.is_head || carries_no_content(status) || response.body().is_end_stream();
    // A response the store keeps gets its body copied as it passes (or is stored now, bodiless).
    let tee = match (&pending.config.stale, &pending.facts.stale) {
        (Some(store), Some(request)) => {
            store.on_response(request, status, response.headers(), no_body)
        }
        _ => None,
    };
    let trace = if no_body {
        None
    } else {
        BodyTrace::new(pending.span)
    };
    let limits = BodyLimits {
        read_timeout: pending.config.body_read_timeout(),
        response_deadline: pending.response_deadline,
    };
    // Recorded now when there is no body, else when the body ends.
    #[cfg(feature = "metrics")]
    let timer = crate::metrics::forwarded(
        pending.config.metrics.as_ref(),
        pending.facts.metrics,
        status,
        no_body,
    );
    response.map(|body| {
        let body = GatewayBody::origin(body, limits, trace, tee);
        #[cfg(feature = "metrics")]
        let body = body.timed(timer);
        body
    })
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
    let error = match from_copy(pending, error, received, Hides::LayerError) {
        Ok(answer) => return answer,
        Err(error) => error,
    };
    let config = &pending.config;
    let facts = &pending.facts;
    let status = error.status();
    let kind = error.kind();

    let retry_facts = RetryFacts {
        phase: error.phase(),
        kind,
        idempotent_method: facts.idempotent_method,
        idempotency_key: facts.idempotency_key.is_valid(),
    };
    let retryable = config.retry.retryable(&retry_facts);
    // An origin's (or a handler's) own Retry-After is kept on a rewrite and wins over ours, so the
    // body and the extension state the delay the header sends. Then the delay the error itself
    // advises (a service that knows when its upstream is back), then the configured one.
    let kept_retry_after = rewritten
        .and_then(|old| old.get(header::RETRY_AFTER))
        .filter(|_| config.keep_on_rewrite.contains(&header::RETRY_AFTER));
    let retry_after = match kept_retry_after {
        Some(value) => RetryAfter::parse(value.as_bytes()),
        None => error
            .retry_after()
            .or_else(|| config.retry.retry_after(kind, status)),
    };
    let error = error.with_retry_hint(retryable, retry_after);

    let fault = error.fault();
    let detail = match (kind, received) {
        (Some(kind), _) => kind.detail(),
        (None, Some(s)) if s.is_server_error() => {
            "The upstream server failed to handle the request."
        }
        (None, Some(_)) => "The upstream server could not process the request.",
        (None, None) if fault == Fault::Client => client_detail(status),
        (None, None) => UNRECOGNIZED_DETAIL,
    };
    let head = ErrorHead {
        config,
        format: facts.format(config.default_format),
        status,
        kind,
        retry_after: retry_after.filter(|_| kept_retry_after.is_none()),
        received,
        rewritten,
    };
    // Our member with its parameters beyond the kind: the TLS alert the upstream sent, and, opt-in
    // only, the details (the chain may name internal hosts). Built per response, never kept.
    let alert = error
        .classification()
        .tls_alert()
        .filter(|_| received.is_none());
    let member = alert_member(head.proxy_status_member(), kind, alert);
    let detailed = match StdError::source(&error).filter(|_| config.details) {
        Some(cause) => Some(with_details(
            member.unwrap_or_else(|| head.proxy_status_member()),
            chain(cause),
        )),
        None => member,
    };
    let (sent, body, headers, grpc_code) = match facts.grpc {
        Some(call) => {
            let code = config.grpc_codes.code(kind, status);
            let (body, headers) = answer_grpc(&head, call, code, detail, detailed);
            // gRPC requires HTTP 200 for its own errors.
            (StatusCode::OK, body, headers, Some(code.as_i32()))
        }
        None => {
            let view = ErrorView {
                status,
                kind,
                detail,
                request_id: facts.request_id(),
                retryable,
                retry_after_seconds: retry_after.map(|a| a.seconds_from(SystemTime::now())),
                proxy: config.proxy_name.as_str(),
            };
            let (body, headers) = answer_negotiated(&head, &view, retryable, detailed);
            (status, body, headers, None)
        }
    };

    let error_type: &str = match kind {
        Some(kind) => kind.token(),
        None => status.as_str(),
    };
    trace::record_generated(
        &pending.span,
        &trace::Generated {
            error_type,
            status,
            sent,
            retryable,
            phase: error.phase(),
            grpc_code,
            cause: StdError::source(&error),
            intercepted: received.is_some(),
            fault,
            // The breaker logged the outage when it marked the upstream, and the limit its fall:
            // their refusals are not news.
            known: &|| {
                chain(&error).any(|e| e.is::<UpstreamUnavailable>() || e.is::<LimitReached>())
            },
        },
    );
    #[cfg(feature = "metrics")]
    crate::metrics::generated(
        config.metrics.as_ref(),
        facts.metrics.as_ref(),
        &crate::metrics::GeneratedError {
            sent,
            kind,
            status,
            retryable,
            fault,
        },
    );

    let body = if facts.is_head || carries_no_content(sent) {
        GatewayBody::generated(Bytes::new())
    } else {
        GatewayBody::generated(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = sent;
    *response.headers_mut() = headers;
    if received.is_none() {
        // Marks it as generated too: one entry in the map, not two.
        response.extensions_mut().insert(error);
    } else {
        // Zero-sized: costs no allocation once the map exists.
        response.extensions_mut().insert(Generated);
    }
    response
}

/// An origin error a copy answers in place of, when one may: a copy whose origin sent
/// `stale-if-error`, or any copy for a status the operator names (see
/// [`StaleIfError::answer_origin_errors`](crate::stale::StaleIfError::answer_origin_errors)).
fn origin_error_from_copy<B>(
    pending: &Pending,
    status: StatusCode,
) -> Option<Response<GatewayBody<B>>> {
    if pending.config.stale.is_none()
        || pending.facts.stale.is_none()
        || !StaleIfError::may_hide(status, None)
    {
        return None;
    }
    let error = ProxyError::from_classification(
        Classification::unrecognized()
            .with_status(status)
            .with_phase(Phase::MaybeSent),
    );
    from_copy(pending, error, Some(status), Hides::OriginError(status)).ok()
}

/// A stale copy in place of the error the layer would answer a GET or HEAD with (a 500, 502,
/// 503 or 504, RFC 5861's errors), when the store has one that may answer; else the error,
/// untouched. `received` is the origin's status when the error stands for one.
fn from_copy<B>(
    pending: &Pending,
    error: ProxyError,
    received: Option<StatusCode>,
    hides: Hides,
) -> Result<Response<GatewayBody<B>>, ProxyError> {
    let (Some(store), Some(request)) = (&pending.config.stale, &pending.facts.stale) else {
        return Err(error);
    };
    let hidden = error.status();
    // A copy stands in only for the upstream's failure: never for what a client did.
    if !error.fault().is_upstream() || !StaleIfError::may_hide(hidden, error.kind()) {
        return Err(error);
    }
    let Some(answer) = store.answer(request, hides) else {
        return Err(error);
    };
    let config = &pending.config;
    let kind = error.kind();
    let member = match received {
        Some(received) => config.proxy_status.received(received),
        None => {
            let member = config.proxy_status.get(kind);
            let alert = error.classification().tls_alert();
            alert_member(member.clone(), kind, alert).unwrap_or(member)
        }
    };
    // Opt-in only, as on a generated error: the chain may name internal hosts.
    let member = match StdError::source(&error).filter(|_| config.details) {
        Some(cause) => with_details(member, chain(cause)),
        None => member,
    };
    let age = answer.age;
    let (sent, headers, body) = answer.into_parts(&config.proxy_status.get(None), member, hidden);
    trace::record_stale(
        &pending.span,
        &trace::StaleAnswer {
            error_type: match kind {
                Some(kind) => kind.token(),
                None => hidden.as_str(),
            },
            sent,
            age,
            cause: StdError::source(&error),
        },
    );
    #[cfg(feature = "metrics")]
    crate::metrics::stale_served(
        config.metrics.as_ref(),
        pending.facts.metrics.as_ref(),
        sent,
        kind,
        hidden,
    );
    let mut response = Response::new(GatewayBody::generated(body));
    *response.status_mut() = sent;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(FromCopy::new(age, error));
    // An outer layer leaves it alone, as it leaves a generated error.
    response.extensions_mut().insert(Generated);
    Ok(response)
}

/// `member` with the `alert-id` and `alert-message` of `tls_alert_received`, when the classifier
/// recorded the alert; `None` when there is nothing to add.
fn alert_member(
    member: HeaderValue,
    kind: Option<ProxyErrorKind>,
    alert: Option<u8>,
) -> Option<HeaderValue> {
    alert
        .filter(|_| kind == Some(ProxyErrorKind::TlsAlertReceived))
        .map(|alert| with_tls_alert(member, alert))
}

/// The body in the negotiated format, and its head; `detailed` is our `Proxy-Status` member with
/// its details, if any.
fn answer_negotiated(
    head: &ErrorHead<'_>,
    view: &ErrorView<'_>,
    retryable: bool,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let config = head.config;
    let format = head.format;
    let keep = if view.request_id.is_some() || config.templates.has_renderer() {
        Keep::Never
    } else {
        head.keep()
    };
    let build = |detailed: Option<HeaderValue>| {
        let body = config.templates.render(view, format);
        let headers = head.headers(&body, detailed);
        Answer { body, headers }
    };
    // A clone of the kept head costs the map's two allocations and no hashing.
    let kept = match keep {
        Keep::Never => {
            let built = build(detailed);
            return (built.body, built.headers);
        }
        Keep::BySlot => config
            .answers
            .get_or_build(format.index(), head.kind, retryable, || build(None)),
        Keep::ByDelay(seconds) => config.answers.get_or_build_delayed(
            format.index(),
            head.kind,
            retryable,
            seconds,
            || build(None),
        ),
    };
    (
        kept.body.clone(),
        with_member(kept.headers.clone(), detailed),
    )
}

/// A gRPC caller's answer ([`grpc_answer::answer`]): the error in gRPC's own fields, with the
/// same `Proxy-Status` and `Retry-After` as any generated error.
fn answer_grpc(
    head: &ErrorHead<'_>,
    call: GrpcCall,
    code: crate::grpc::GrpcCode,
    detail: &str,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let build = |detailed: Option<HeaderValue>| {
        let mut headers = head.headers(&Bytes::new(), detailed);
        // The delay the caller is told, an origin's own on a rewrite included.
        let pushback = head
            .retry_after_sent(&headers)
            .map(|after| after.delay_from(SystemTime::now()));
        let body = grpc_answer::answer(call, code, detail, pushback, &mut headers);
        Answer { body, headers }
    };
    // Kept once per framing, not per retry hint: a gRPC answer does not state the hint.
    let form = Format::ALL.len() + call.framing_index();
    let answers = &head.config.answers;
    let kept = match head.keep() {
        Keep::Never => {
            let built = build(detailed);
            return (built.body, built.headers);
        }
        Keep::BySlot => answers.get_or_build(form, head.kind, false, || build(None)),
        Keep::ByDelay(seconds) => {
            answers.get_or_build_delayed(form, head.kind, false, seconds, || build(None))
        }
    };
    let mut headers = kept.headers.clone();
    // The caller's own `+proto` or `+json` goes back to it. Replacing a value does not grow the
    // map.
    headers.insert(header::CONTENT_TYPE, call.content_type());
    (kept.body.clone(), with_member(headers, detailed))
}

/// `headers` with our `Proxy-Status` member replaced by `detailed`, if given. Only for an answer
/// that is not a rewrite, whose field holds our member alone: replacing it does not grow the map.
fn with_member(mut headers: HeaderMap, detailed: Option<HeaderValue>) -> HeaderMap {
    if let Some(detailed) = detailed {
        headers.insert(PROXY_STATUS.clone(), detailed);
    }
    headers
}

/// Marks a response this crate generated, so that an outer layer that intercepts origin errors
/// leaves it alone instead of rendering it a second time. A generated error's [`ProxyError`]
/// extension marks it as well.
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

/// How much of a generated answer can be built once and kept.
enum Keep {
    /// Built every time.
    Never,
    /// It depends on the form, kind and retry hint alone.
    BySlot,
    /// It depends on those and on a delay of this many whole seconds that the error stated
    /// itself (the seconds until an unavailable upstream's next probe).
    ByDelay(u64),
}

impl ErrorHead<'_> {
    /// Whether this head (and the body for it) can be built once and kept, and under which key.
    /// Not for a rewrite (it keeps the old response's fields), a status a classifier chose over
    /// the kind's, a date (it changes by the second), or a delay of the error's own that is not
    /// whole seconds or longer than [`MAX_KEPT_DELAY`].
    fn keep(&self) -> Keep {
        let plain = self.rewritten.is_none()
            && self.status
                == self
                    .kind
                    .map_or(StatusCode::BAD_GATEWAY, ProxyErrorKind::status);
        if !plain {
            return Keep::Never;
        }
        let configured = self.config.retry.retry_after(self.kind, self.status);
        match self.retry_after {
            Some(RetryAfter::At(_)) => Keep::Never,
            after if after == configured => Keep::BySlot,
            Some(RetryAfter::Delay(delay))
                if delay.subsec_nanos() == 0 && (1..=MAX_KEPT_DELAY).contains(&delay.as_secs()) =>
            {
                Keep::ByDelay(delay.as_secs())
            }
            _ => Keep::Never,
        }
    }

    /// The `Retry-After` this answer sends: ours, or the one a rewrite keeps.
    fn retry_after_sent(&self, headers: &HeaderMap) -> Option<RetryAfter> {
        self.retry_after.or_else(|| {
            headers
                .get(header::RETRY_AFTER)
                .and_then(|value| RetryAfter::parse(value.as_bytes()))
        })
    }

    /// Our `Proxy-Status` member, without details.
    fn proxy_status_member(&self) -> HeaderValue {
        match self.received {
            Some(received) => self.config.proxy_status.received(received),
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
        if !carries_no_content(self.status) {
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
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a stalled body may still arrive: the connection cannot carry another
            // request (RFC 9110 §15.5.9).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        headers
    }
}
