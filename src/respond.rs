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
use crate::error::{ErrorChain, PendingProxyError, ProxyError};
use crate::future::Pending;
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
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Started::capture(config.metrics.as_ref(), request.method()),
        }
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

/// The upstream timeout fired. The source of the `http_response_timeout` error, for the span.
#[derive(Debug)]
struct UpstreamTimedOut(Duration);

impl fmt::Display for UpstreamTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream sent no response head within {:?}", self.0)
    }
}

impl StdError for UpstreamTimedOut {}

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
            let generated_inside = response.extensions().get::<Generated>().is_some();
            if pending.config.intercept.contains(status) && !generated_inside {
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
            let after = pending.config.upstream_timeout.unwrap_or_default();
            let error = ProxyError::new(ProxyErrorKind::HttpResponseTimeout)
                .with_source(UpstreamTimedOut(after));
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
    response.map(|body| GatewayBody::origin(body, observer))
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
    let view = ErrorView {
        status,
        kind,
        detail,
        request_id: facts.request_id(),
        retryable,
        retry_after_seconds: retry_after.map(|a| a.seconds_from(std::time::SystemTime::now())),
        proxy: &config.proxy_name,
    };
    // A rewritten response may carry its own Retry-After, which the body states: not cached.
    let cacheable = view.request_id.is_none()
        && rewritten.is_none()
        && !config.templates.has_renderer()
        && status == kind.map_or(StatusCode::BAD_GATEWAY, ProxyErrorKind::status)
        && !matches!(retry_after, Some(RetryAfter::At(_)));
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
    let (body, headers) = if cacheable {
        // The head of a cacheable error depends on its slot alone: a clone of the kept map costs
        // the map's two allocations and no hashing.
        let cached = config
            .response_cache
            .get_or_render(format, kind, retryable, || {
                let body = config.templates.render(&view, format);
                let headers = head.headers(&body, None);
                CachedResponse { body, headers }
            });
        let mut headers = cached.headers.clone();
        if let Some(detailed) = detailed {
            // Not a rewrite, so the field holds our member alone; replacing it does not grow
            // the map.
            headers.insert(PROXY_STATUS.clone(), detailed);
        }
        (cached.body.clone(), headers)
    } else {
        let body = config.templates.render(&view, format);
        let headers = head.headers(&body, detailed);
        (body, headers)
    };

    record(pending, &error, received.is_some());
    #[cfg(feature = "metrics")]
    crate::metrics::generated(config, facts, status, kind, retryable);

    let body = if facts.is_head || head.bodiless_status() {
        GatewayBody::generated(Bytes::new())
    } else {
        GatewayBody::generated(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if received.is_none() {
        response.extensions_mut().insert(error);
    }
    // Zero-sized: costs no allocation once the map exists.
    response.extensions_mut().insert(Generated);
    response
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
        self.status.is_informational()
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
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

/// Records the decision on the span, and one event with the whole error chain for operators.
fn record(pending: &Pending, error: &ProxyError, intercepted: bool) {
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
        span.record("http.response.status_code", i64::from(status.as_u16()));
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
                http.response.status_code = i64::from(status.as_u16()),
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
