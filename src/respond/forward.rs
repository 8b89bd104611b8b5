//! An origin's answer passing through: status, headers and body bytes as the origin sent them,
//! the body only observed (its end, its failure, its pace) and, for the store, copied.

use http::Response;
use http_body::Body;

use super::Pending;
use super::head::carries_no_content;
use crate::body::GatewayBody;
use crate::deadline::BodyLimits;
use crate::grpc::call::status_in_headers;
use crate::trace::{self, BodyTrace};

/// An origin response: status, headers and body go on unchanged; the body is only observed.
#[inline]
pub(super) fn forward<B: Body>(
    pending: &mut Pending,
    response: Response<B>,
) -> Response<GatewayBody<B>> {
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
    let tee = match (&pending.config.stale, pending.facts.stale()) {
        (Some(store), Some(request)) => {
            store.on_response(request, status, response.headers(), no_body)
        }
        _ => None,
    };
    let trace = if no_body {
        None
    } else {
        // The span goes with the body, if it is wanted; `Pending` is dropped right after this.
        BodyTrace::new(&mut pending.span)
    };
    let limits = BodyLimits {
        read_timeout: pending.config.body_read_timeout(),
        response_deadline: pending.response_deadline,
    };
    // Recorded now when there is no body, else when the body ends.
    #[cfg(feature = "metrics")]
    let timer = crate::metrics::forwarded(
        pending.config.metrics.as_ref(),
        pending.facts.metrics.take(),
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

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Method, StatusCode};

    use super::*;
    use crate::config::Settings;
    use crate::respond::tests::{body_of, get, origin, pending};

    #[tokio::test(start_paused = true)]
    async fn an_origin_500_keeps_its_status_headers_and_body_bytes() {
        let mut response = origin(
            StatusCode::INTERNAL_SERVER_ERROR,
            "{\"origin\":\"own words\"}",
        );
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("cache-control", HeaderValue::from_static("max-age=5"));
        headers.append("x-trace", HeaderValue::from_static("a"));
        headers.append("x-trace", HeaderValue::from_static("b"));
        let sent = response.headers().clone();

        let answer = forward(&mut pending(Settings::default(), &get(&[])), response);
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.headers(), &sent);
        assert_eq!(body_of(answer).await, "{\"origin\":\"own words\"}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_answer_is_complete_with_its_head() {
        let mut request = get(&[]);
        *request.method_mut() = Method::HEAD;
        let mut response = origin(StatusCode::OK, "");
        response
            .headers_mut()
            .insert("content-length", HeaderValue::from_static("120"));
        let answer = forward(&mut pending(Settings::default(), &request), response);
        assert_eq!(answer.headers()["content-length"], "120");
        assert!(answer.body().is_end_stream());
    }
}
