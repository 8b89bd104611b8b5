//! The one decision point: from the outcome of the inner service to the response the client gets.
//!
//! The status is decided once, from the classification, and the body, headers, extension and span
//! all read that decision.
//!
//! The answer is the origin's, passing through (`forward`), or one this gateway makes: a
//! generated error (`generate`, its body and head in the caller's form in `answer`), or a stored
//! copy in its place (`copy`). Every field of a made answer's head is written in `head`.

mod answer;
mod copy;
mod forward;
mod generate;
mod head;

use std::sync::Arc;
use std::time::Instant;

use http::Response;
use http_body::Body;
use tracing::Span;

use crate::BoxError;
use crate::body::GatewayBody;
use crate::classify::classification::Classification;
use crate::classify::classify;
use crate::config::Config;
use crate::deadline::{ResponseDeadline, TimedOut};
use crate::error::{PendingProxyError, ProxyError, chain};
use crate::facts::RequestFacts;
use crate::fault::Fault;
use crate::grpc::call::GRPC_STATUS;
use crate::interim::check_final_interim;
use crate::kind::RequestSent;
use crate::retry::attempt::Attempt;
use crate::trace;
use copy::origin_error_from_copy;
use forward::forward;
use generate::generate;
use head::Generated;

/// What the answer will need, kept from the request until the outcome is known.
pub(crate) struct Pending {
    pub(crate) config: Arc<Config>,
    pub(crate) facts: RequestFacts,
    pub(crate) span: Span,
    /// For `gateway.upstream_ms`; not read when no subscriber wants the span.
    pub(crate) started: Option<Instant>,
    /// When the whole response must be over, if a response deadline is set.
    pub(crate) response_deadline: Option<ResponseDeadline>,
    /// With a retry service outside: the request across its attempts.
    pub(crate) attempt: Option<Attempt>,
}

impl Pending {
    #[inline(always)]
    pub(crate) fn new(
        config: Arc<Config>,
        facts: RequestFacts,
        span: Span,
        response_deadline: Option<ResponseDeadline>,
        attempt: Option<Attempt>,
    ) -> Self {
        Pending {
            attempt,
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

/// How the inner service ended, when it gave no response (see [`from_response`] for one that did).
pub(crate) enum Outcome {
    Failed(BoxError),
    /// A limit on the head ran out first.
    TimedOut(TimedOut),
}

/// The answer to `outcome`. `pending` is borrowed, not moved: it stays where the future keeps it
/// (a move is a copy of all its bytes), and is dropped there; only its span may be taken.
pub(crate) fn finish<B: Body>(pending: &mut Pending, outcome: Outcome) -> Response<GatewayBody<B>> {
    match outcome {
        Outcome::Failed(error) => {
            record_upstream_time(pending);
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
            generate(pending, error, None, None)
        }
        Outcome::TimedOut(timed_out) => {
            record_upstream_time(pending);
            let classification = Classification::new(timed_out.kind());
            // A gRPC caller's own deadline is answered as any timeout, but it is the caller's.
            let classification = if timed_out.is_upstreams() {
                classification
            } else {
                classification.with_fault(Fault::Client)
            };
            let error = ProxyError::from_classification(classification).with_source(timed_out);
            generate(pending, error, None, None)
        }
    }
}

/// The answer to the response the inner service gave: the origin's, passing through, or one
/// made in its place. The future calls it directly (not through [`Outcome`]): the response is
/// then not copied into an `Outcome` and out again.
#[inline]
pub(crate) fn from_response<B: Body>(
    pending: &mut Pending,
    response: Response<B>,
) -> Response<GatewayBody<B>> {
    record_upstream_time(pending);
    let status = response.status();
    // A success or a redirection passes through as it is: only an error status can be a
    // handler's error to render (see `From<ProxyError> for Response`), be intercepted, or be
    // hidden by a stored copy, and only a 1xx can be a final interim response.
    if status.is_success() || status.is_redirection() {
        return forward(pending, response);
    }
    decide(pending, response)
}

/// [`from_response`] for a response that may not simply pass: an interim or error status.
#[inline(never)]
fn decide<B: Body>(pending: &mut Pending, mut response: Response<B>) -> Response<GatewayBody<B>> {
    let status = response.status();
    if let Some(PendingProxyError(error)) = response.extensions_mut().remove::<PendingProxyError>()
    {
        let (parts, _) = response.into_parts();
        return generate(pending, error, Some(&parts.headers), None);
    }
    if status.is_informational() {
        let offered = pending.facts.upgrade();
        if let Some(error) = check_final_interim(status, offered, response.headers()) {
            return generate(pending, error, None, None);
        }
    }
    // An answer made inside (by another layer of this crate, or a handler's ProxyError)
    // is left alone; looked up only when something could replace it: interception, or a
    // store that may answer in its place.
    let intercepted = pending.config.intercept.contains(status);
    let may_replace =
        intercepted || (pending.config.stale.is_some() && pending.facts.stale().is_some());
    let generated_inside = may_replace && {
        let extensions = response.extensions();
        extensions.get::<Generated>().is_some() || extensions.get::<ProxyError>().is_some()
    };
    // A gRPC status from the origin is its answer to a gRPC caller, whatever the HTTP
    // status: never replaced.
    let grpc_answer = pending.facts.grpc.is_some() && response.headers().contains_key(&GRPC_STATUS);
    if intercepted && !generated_inside && !grpc_answer {
        let (parts, _) = response.into_parts();
        let error = ProxyError::from_classification(
            Classification::unrecognized()
                .with_status(status)
                .with_request_sent(RequestSent::MaybeSent),
        );
        return generate(pending, error, Some(&parts.headers), Some(status));
    }
    if !generated_inside {
        if let Some(answer) = origin_error_from_copy(pending, status) {
            return answer;
        }
    }
    forward(pending, response)
}

/// `gateway.upstream_ms`, when the span is wanted.
fn record_upstream_time(pending: &Pending) {
    if let Some(started) = pending.started {
        let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        pending.span.record("gateway.upstream_ms", elapsed_ms);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::config::Settings;
    use crate::facts::Fields;
    use crate::kind::ProxyErrorKind;

    /// What the answer to `request` will need, under `settings`.
    pub(in crate::respond) fn pending(settings: Settings, request: &Request<()>) -> Pending {
        pending_in(&Arc::new(Config::new(settings)), request)
    }

    /// What the answer to `request` will need, under `config` (shared with other requests).
    pub(in crate::respond) fn pending_in(config: &Arc<Config>, request: &Request<()>) -> Pending {
        let config = Arc::clone(config);
        let fields = Fields::scan(request.headers(), &config.request_id_header);
        let facts = RequestFacts::capture(request, &fields, &config);
        Pending::new(config, facts, Span::none(), None, None)
    }

    /// A GET of `/page` with `headers`.
    pub(in crate::respond) fn get(headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut request = Request::get("/page").body(()).unwrap();
        *request.headers_mut() = crate::testing::header_map(headers);
        request
    }

    /// An origin's answer with `status` and `body`.
    pub(in crate::respond) fn origin(
        status: StatusCode,
        body: &'static str,
    ) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    }

    /// The whole body of `response`.
    pub(in crate::respond) async fn body_of<B>(response: Response<GatewayBody<B>>) -> Bytes
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn intercepting(status: StatusCode) -> Settings {
        let mut settings = Settings::default();
        settings.intercept.insert(status);
        settings
    }

    #[tokio::test(start_paused = true)]
    async fn an_intercepted_origin_status_is_answered_by_the_gateway_and_another_passes() {
        let settings = intercepting(StatusCode::SERVICE_UNAVAILABLE);
        let answer = from_response(
            &mut pending(settings.clone(), &get(&[])),
            origin(StatusCode::SERVICE_UNAVAILABLE, "origin page"),
        );
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer.headers()["proxy-status"],
            "gateway; received-status=503"
        );
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
        assert!(answer.extensions().get::<Generated>().is_some());
        assert_ne!(body_of(answer).await, "origin page");

        let answer = from_response(
            &mut pending(settings, &get(&[])),
            origin(StatusCode::INTERNAL_SERVER_ERROR, "origin page"),
        );
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(answer.headers().get("proxy-status").is_none());
        assert!(answer.extensions().get::<Generated>().is_none());
        assert_eq!(body_of(answer).await, "origin page");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_generated_inside_or_a_grpc_status_is_never_replaced() {
        let settings = intercepting(StatusCode::SERVICE_UNAVAILABLE);
        let mut inner = origin(StatusCode::SERVICE_UNAVAILABLE, "inner answer");
        inner.extensions_mut().insert(Generated);
        let answer = from_response(&mut pending(settings.clone(), &get(&[])), inner);
        assert_eq!(body_of(answer).await, "inner answer");

        let call = get(&[("content-type", "application/grpc")]);
        let mut grpc = origin(StatusCode::SERVICE_UNAVAILABLE, "");
        grpc.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
        let answer = from_response(&mut pending(settings, &call), grpc);
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers()["grpc-status"], "8");
        assert!(answer.headers().get("proxy-status").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_or_a_marked_response_is_answered_with_its_error() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let answer = finish::<Full<Bytes>>(
            &mut pending(Settings::default(), &get(&[])),
            Outcome::Failed(Box::new(refused)),
        );
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            answer.headers()["proxy-status"],
            "gateway; error=connection_refused"
        );
        let error = answer.extensions().get::<ProxyError>().unwrap();
        assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionRefused));

        // A handler's response marked with the error it stands for: its body is replaced.
        let marked = |status| {
            let mut marked = origin(status, "handler body");
            marked
                .extensions_mut()
                .insert(PendingProxyError(ProxyError::new(
                    ProxyErrorKind::DestinationUnavailable,
                )));
            marked
        };
        let answer = from_response(
            &mut pending(Settings::default(), &get(&[])),
            marked(StatusCode::SERVICE_UNAVAILABLE),
        );
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer.headers()["proxy-status"],
            "gateway; error=destination_unavailable"
        );
        assert_ne!(body_of(answer).await, "handler body");

        // A mark on a success (a handler that set its own status after all) is not looked for:
        // the response passes as it is.
        let answer = from_response(
            &mut pending(Settings::default(), &get(&[])),
            marked(StatusCode::OK),
        );
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(answer.headers().get("proxy-status").is_none());
        assert_eq!(body_of(answer).await, "handler body");
    }
}
