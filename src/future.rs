//! [`ResponseFuture`]: the future of [`GatewayErrorService`](crate::GatewayErrorService).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::GatewayBody;
use crate::deadline::HeadClock;
use crate::respond::{self, Outcome, Pending};
use crate::BoxError;

pin_project! {
    /// The future of [`GatewayErrorService`](crate::GatewayErrorService): waits for the inner
    /// service, under the upstream timeout and the response deadline. Never fails: every outcome
    /// is a response.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        #[pin]
        clock: HeadClock,
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

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F, clock: HeadClock, pending: Pending) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
            clock,
            pending: Some(pending),
        }
    }

    /// The inner service failed in `poll_ready`: the answer is its error.
    pub(crate) fn failed(error: BoxError, pending: Pending) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            clock: HeadClock::off(),
            pending: Some(pending),
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
                    Poll::Pending => match this.clock.poll_expired(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(timed_out) => Outcome::TimedOut(timed_out),
                    },
                },
            }
        };
        let pending = this.pending.take().expect("checked above");
        Poll::Ready(Ok(respond::finish(pending, outcome)))
    }
}
