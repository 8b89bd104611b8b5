//! [`ResponseFuture`]: waits for the inner service, with the optional upstream timeout.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tracing::Span;

use crate::body::GatewayBody;
use crate::layer::Config;
use crate::respond::{self, Outcome, RequestFacts};
use crate::BoxError;

pin_project! {
    /// The future of [`GatewayError`](crate::GatewayError). Never fails: every outcome is a response.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        #[pin]
        deadline: Option<Sleep>,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before it finished: the client went away. Not an error of anyone's.
            if let Some(pending) = this.project().pending.take() {
                pending.span.record("gateway.cancelled", true);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Waiting { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

/// What the response will need, kept from the request until the outcome is known.
pub(crate) struct Pending {
    pub(crate) config: Arc<Config>,
    pub(crate) facts: RequestFacts,
    pub(crate) span: Span,
    /// For `gateway.upstream_ms`; not read when no subscriber wants the span.
    pub(crate) started: Option<Instant>,
    /// When the whole response must be over, if a response deadline is set.
    pub(crate) response_deadline: Option<(tokio::time::Instant, Duration)>,
}

fn started(span: &Span) -> Option<Instant> {
    (!span.is_disabled()).then(Instant::now)
}

impl<F> ResponseFuture<F> {
    /// `timeout` is this request's upstream timeout: see `RequestFacts::upstream_timeout`.
    pub(crate) fn new(
        future: F,
        timeout: Option<Duration>,
        config: Arc<Config>,
        facts: RequestFacts,
        span: Span,
    ) -> Self {
        // The clock is read only when a whole-response deadline needs a start.
        let response_deadline = config
            .response_deadline
            .map(|after| (tokio::time::Instant::now() + after, after));
        let deadline = match (timeout, response_deadline) {
            (None, None) => None,
            (Some(after), None) => Some(tokio::time::sleep(after)),
            // `at - whole` is the moment the clock was read: the head is due at the sooner limit.
            (timeout, Some((at, whole))) => Some(tokio::time::sleep_until(
                timeout
                    .filter(|head| *head < whole)
                    .map_or(at, |head| at - whole + head),
            )),
        };
        ResponseFuture {
            state: State::Waiting { future },
            deadline,
            pending: Some(Pending {
                config,
                facts,
                started: started(&span),
                span,
                response_deadline,
            }),
        }
    }

    pub(crate) fn failed(
        error: BoxError,
        config: Arc<Config>,
        facts: RequestFacts,
        span: Span,
    ) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            deadline: None,
            pending: Some(Pending {
                config,
                facts,
                started: started(&span),
                span,
                response_deadline: None,
            }),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<GatewayBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = {
            let pending = this
                .pending
                .as_ref()
                .expect("ResponseFuture polled after completion");
            let _entered = pending.span.enter();
            match this.state.project() {
                StateProj::Failed { error } => {
                    Outcome::Failed(error.take().expect("error is taken once"))
                }
                StateProj::Waiting { future } => match future.poll(cx) {
                    Poll::Ready(Ok(response)) => Outcome::Response(response),
                    Poll::Ready(Err(error)) => Outcome::Failed(error.into()),
                    Poll::Pending => {
                        let expired = this
                            .deadline
                            .as_pin_mut()
                            .is_some_and(|deadline| deadline.poll(cx).is_ready());
                        if !expired {
                            return Poll::Pending;
                        }
                        Outcome::TimedOut
                    }
                },
            }
        };
        let pending = this.pending.take().expect("checked above");
        Poll::Ready(Ok(respond::finish(pending, outcome)))
    }
}
