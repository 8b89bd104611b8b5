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
use crate::health::{LimitReached, UpstreamUnavailable};
use crate::render::{ErrorView, UNRECOGNIZED_DETAIL};
use crate::retry::RetryFacts;
use crate::retry::after::RetryAfter;
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
    let error = match retried(pending, error, rewritten, received) {
        Ok(dropped) => return dropped,
        Err(error) => error,
    };
    let error = match from_copy(pending, error, received, Hides::LayerError) {
        Ok(answer) => return answer,
        Err(error) => error,
    };
    let config = &pending.config;
    let facts = &pending.facts;
    let status = error.status();
    let kind = error.kind();

    let retry_facts = RetryFacts {
        request_sent: error.request_sent(),
        kind,
        idempotent_method: facts.idempotent_method,
        idempotency_key: facts.idempotency_key().is_valid(),
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
            phase: error.request_sent(),
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

/// What a client is told about its own fault, by the status it gets.
fn client_detail(status: StatusCode) -> &'static str {
    if status == StatusCode::REQUEST_TIMEOUT {
        "The gateway timed out waiting for the rest of the request body."
    } else {
        "The request body ended before it was complete."
    }
}

/// With a retry service outside, an attempt it will make again (the retry policy decides): an
/// answer it drops, with nothing rendered, logged or counted; else `error`, for the answer the
/// client gets. Origin statuses replaced by a generated body are the origin's answers: not
/// retried.
fn retried<B>(
    pending: &Pending,
    error: ProxyError,
    rewritten: Option<&HeaderMap>,
    received: Option<StatusCode>,
) -> Result<Response<GatewayBody<B>>, ProxyError> {
    let Some(attempt) = pending.attempt.as_ref().filter(|_| received.is_none()) else {
        return Err(error);
    };
    let config = &pending.config;
    let retryable = config.retry.retryable(&RetryFacts {
        request_sent: error.request_sent(),
        kind: error.kind(),
        idempotent_method: pending.facts.idempotent_method,
        idempotency_key: pending.facts.idempotency_key().is_valid(),
    });
    // The delay the answer would state: a rewritten response's own, the error's, the configured.
    let retry_after = match rewritten
        .and_then(|old| old.get(header::RETRY_AFTER))
        .filter(|_| config.keep_on_rewrite.contains(&header::RETRY_AFTER))
    {
        Some(value) => RetryAfter::parse(value.as_bytes()),
        None => error
            .retry_after()
            .or_else(|| config.retry.retry_after(error.kind(), error.status())),
    };
    if !attempt.again(&pending.span, &error, retryable, retry_after) {
        return Err(error);
    }
    let mut response = Response::new(GatewayBody::generated(Bytes::new()));
    *response.status_mut() = error.status();
    response
        .extensions_mut()
        .insert(error.with_retry_hint(retryable, retry_after));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Method;
    use http_body_util::Full;

    use super::*;
    use crate::config::{Config, Settings};
    use crate::kind::ProxyErrorKind;
    use crate::respond::tests::{body_of, get, pending, pending_in};

    fn refused() -> ProxyError {
        ProxyError::new(ProxyErrorKind::ConnectionRefused)
    }

    #[tokio::test(start_paused = true)]
    async fn the_format_follows_accept() {
        for (accept, content_type, opening) in [
            ("text/html", "text/html; charset=utf-8", "<!"),
            ("text/plain", "text/plain; charset=utf-8", ""),
            ("application/json", "application/problem+json", "{"),
            ("*/*", "application/problem+json", "{"),
        ] {
            let pending = pending(Settings::default(), &get(&[("accept", accept)]));
            let answer = generate::<Full<Bytes>>(&pending, refused(), None, None);
            assert_eq!(answer.status(), StatusCode::BAD_GATEWAY, "{accept}");
            assert_eq!(answer.headers()["content-type"], content_type, "{accept}");
            let length: usize = answer.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body = body_of(answer).await;
            assert_eq!(body.len(), length, "{accept}");
            let text = std::str::from_utf8(&body).unwrap();
            assert!(
                text.to_ascii_lowercase().starts_with(opening),
                "{accept}: {text}"
            );
            assert!(text.contains("refused"), "{accept}: {text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_request_gets_the_length_without_the_body() {
        let mut request = get(&[]);
        *request.method_mut() = Method::HEAD;
        let answer = generate::<Full<Bytes>>(
            &pending(Settings::default(), &request),
            refused(),
            None,
            None,
        );
        assert_ne!(answer.headers()["content-length"], "0");
        assert!(answer.extensions().get::<ProxyError>().is_some());
        assert!(body_of(answer).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_caller_gets_a_trailers_only_answer_with_its_code() {
        let config = Arc::new(Config::new(Settings::default()));
        for content_type in ["application/grpc", "application/grpc+json"] {
            // The second answer comes from the one kept for the framing.
            let call = get(&[("content-type", content_type)]);
            let answer =
                generate::<Full<Bytes>>(&pending_in(&config, &call), refused(), None, None);
            assert_eq!(answer.status(), StatusCode::OK);
            assert_eq!(answer.headers()["content-type"], content_type);
            assert_eq!(answer.headers()["grpc-status"], "14");
            assert_eq!(
                answer.headers()["proxy-status"],
                "gateway; error=connection_refused"
            );
            let error = answer.extensions().get::<ProxyError>().unwrap();
            assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
            assert!(body_of(answer).await.is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_origins_own_retry_after_wins_on_a_rewrite() {
        let mut settings = Settings::default();
        settings.intercept.insert(StatusCode::SERVICE_UNAVAILABLE);
        let pending = pending(settings, &get(&[]));
        let old = crate::testing::header_map(&[("retry-after", "30")]);
        let error = ProxyError::new(ProxyErrorKind::DestinationUnavailable)
            .with_retry_after(std::time::Duration::from_secs(5));
        let answer = generate::<Full<Bytes>>(
            &pending,
            error,
            Some(&old),
            Some(StatusCode::SERVICE_UNAVAILABLE),
        );
        assert_eq!(answer.headers()["retry-after"], "30");
        let body = body_of(answer).await;
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("\"retry_after\":30"), "{text}");
    }
}
