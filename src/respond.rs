//! The one decision point: from the outcome of the inner service to the response the client gets.
//!
//! The status is decided once, from the classification, and the body, headers, extension and span
//! all read that decision.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tracing::Level;

use crate::body::GatewayBody;
use crate::classify::{classify, Classification};
use crate::error::{ErrorChain, PendingProxyError, ProxyError};
use crate::future::Pending;
use crate::headers::{append_member, PROXY_STATUS};
use crate::kind::{Phase, ProxyErrorKind};
use crate::layer::Config;
use crate::negotiate::{negotiate, Format};
use crate::render::{ErrorView, UNRECOGNIZED_DETAIL};
use crate::retry::{has_idempotency_key, RetryFacts};
use crate::trace::{BodyObserver, TARGET};
use crate::BoxError;

/// What the response will need from the request, read once in `call`, without allocating.
pub(crate) struct RequestFacts {
    format: Format,
    is_head: bool,
    idempotent_method: bool,
    idempotency_key: bool,
    /// Cloning a parsed header value shares its bytes; it does not copy them.
    request_id: Option<HeaderValue>,
}

impl RequestFacts {
    pub(crate) fn capture<B>(request: &Request<B>, config: &Config) -> Self {
        let headers = request.headers();
        let request_id = request
            .extensions()
            .get::<tower_http::request_id::RequestId>()
            .map(|id| id.header_value().clone())
            .or_else(|| headers.get(&config.request_id_header).cloned());
        RequestFacts {
            format: negotiate(headers.get_all(header::ACCEPT), config.default_format),
            is_head: request.method() == Method::HEAD,
            idempotent_method: config.retry.is_idempotent(request.method()),
            idempotency_key: headers.contains_key(&crate::retry::IDEMPOTENCY_KEY)
                && has_idempotency_key(headers),
            request_id,
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

pub(crate) fn finish<B>(pending: Pending, outcome: Outcome<B>) -> Response<GatewayBody<B>> {
    let elapsed_ms = pending.started.elapsed().as_millis() as u64;
    pending.span.record("gateway.upstream_ms", elapsed_ms);
    match outcome {
        Outcome::Response(mut response) => {
            if let Some(PendingProxyError(error)) =
                response.extensions_mut().remove::<PendingProxyError>()
            {
                let (parts, _) = response.into_parts();
                return generate(&pending, error, Some(&parts.headers), None);
            }
            let status = response.status();
            if pending.config.intercept.contains(status) {
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
fn forward<B>(pending: Pending, response: Response<B>) -> Response<GatewayBody<B>> {
    let span = pending.span;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    span.record("gateway.generated", false);
    if status.is_server_error() {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
    }
    response.map(|body| GatewayBody::origin(body, BodyObserver::new(span)))
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
    let status = error.status();
    let kind = error.kind();

    let retry_facts = RetryFacts {
        phase: error.phase(),
        kind,
        idempotent_method: facts.idempotent_method,
        idempotency_key: facts.idempotency_key,
    };
    let retryable = config.retry.retryable(&retry_facts);
    let retry_after = config.retry.retry_after(kind, status);
    let error = error.with_retry_hint(retryable, retry_after);

    let detail = match (kind, received) {
        (Some(kind), _) => kind.detail(),
        (None, Some(s)) if s.is_server_error() => {
            "The upstream server failed to handle the request."
        }
        (None, Some(_)) => "The upstream server could not process the request.",
        (None, None) => UNRECOGNIZED_DETAIL,
    };
    let now = std::time::SystemTime::now();
    let view = ErrorView {
        status,
        kind,
        detail,
        request_id: facts.request_id(),
        retryable,
        retry_after_seconds: retry_after.map(|a| {
            let delay = a.delay_from(now);
            delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
        }),
        proxy: &config.proxy_name,
    };
    let body = config.templates.render(&view, facts.format);

    // RFC 9110 §6.4.1: 1xx, 204 and 304 never carry content; a classifier could pick one.
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut headers = HeaderMap::with_capacity(8);
    if !bodiless_status {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(facts.format.content_type()),
        );
        // For HEAD, the length a GET would have had (RFC 9110 §8.6).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    let ours = match received {
        Some(received) => received_status_member(config, received),
        None => config.proxy_status.get(kind),
    };
    match rewritten {
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
    if let Some(after) = retry_after {
        headers.insert(header::RETRY_AFTER, after.to_header_value());
    }

    record(pending, &error, received.is_some());

    let body = if facts.is_head || bodiless_status {
        GatewayBody::generated(bytes::Bytes::new())
    } else {
        GatewayBody::generated(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if received.is_none() {
        response.extensions_mut().insert(error);
    }
    response
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

/// Records the decision on the span, and one event with the whole error chain for operators.
fn record(pending: &Pending, error: &ProxyError, intercepted: bool) {
    let span = &pending.span;
    let status = error.status();
    let error_type: &str = match error.kind() {
        Some(kind) => kind.token(),
        None => status.as_str(),
    };
    span.record("http.response.status_code", status.as_u16());
    span.record("error.type", error_type);
    span.record("gateway.generated", true);
    span.record("gateway.retryable", error.is_retryable());
    span.record("gateway.phase", error.phase().as_str());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if span.is_disabled() && !tracing::event_enabled!(target: TARGET, Level::WARN) {
        return;
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
                http.response.status_code = status.as_u16(),
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
