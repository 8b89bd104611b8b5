//! A generated error answer: the status decided from the error, a body in the format the client
//! negotiated or gRPC's own answer, the retry hint, the span and the metrics.

use std::error::Error as StdError;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};

use super::Pending;
use super::answer::{answer_grpc, answer_negotiated};
use super::copy::from_copy;
use super::head::{ErrorHead, Generated, carries_no_content, detailed_member};
use crate::body::GatewayBody;
use crate::error::{ProxyError, chain};
use crate::fault::Fault;
use crate::headers::retry_after::RetryAfter;
use crate::health::{LimitReached, UpstreamUnavailable};
use crate::render::{ErrorView, UNRECOGNIZED_DETAIL};
use crate::retry::RetryFacts;
use crate::stale::Hides;
use crate::trace;

/// A generated error response. `rewritten` holds the headers of the response it replaces (a
/// handler's marked response, or an intercepted origin error); `received` the origin's status
/// when intercepting.
pub(super) fn generate<B>(
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
    let detailed = detailed_member(config, &error, received, || head.proxy_status_member());
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
            known: chain(&error).any(|e| e.is::<UpstreamUnavailable>() || e.is::<LimitReached>()),
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
        response.extensions_mut().insert(error);
    }
    // Zero-sized: costs no allocation once the map exists.
    response.extensions_mut().insert(Generated);
    response
}

/// What a client is told about its own fault, by the status it gets.
fn client_detail(status: StatusCode) -> &'static str {
    if status == StatusCode::REQUEST_TIMEOUT {
        "The gateway timed out waiting for the rest of the request body."
    } else {
        "The request body ended before it was complete."
    }
}
