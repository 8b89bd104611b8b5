//! [`ResponseFuture`]: the future of [`RetryService`](super::RetryService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use http::Request;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;
use tracing::Level;

use super::attempt::Attempt;
use super::body::{TryCloneBody, try_clone};
use crate::trace::{self, TARGET};

pin_project! {
    /// The future of [`RetryService`](super::RetryService): one attempt after another, with the
    /// wait between them, until the answer of one is the request's.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // The copy each later attempt is cloned from; `None` when the body cannot be sent again.
        copy: Option<Request<B>>,
        attempt: Attempt,
        warned: Arc<AtomicBool>,
    }

    impl<S, B> PinnedDrop for ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        fn drop(this: Pin<&mut Self>) {
            // Dropped between two attempts: the client went away while the gateway waited.
            if this.state.is_between() {
                if let Some(span) = this.attempt.span() {
                    trace::record_client_gone(span);
                }
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Waiting { #[pin] sleep: Sleep },
        Ready,
        // The inner service failed while getting ready for the next attempt: its error is the
        // answer.
        Failed,
    }
}

impl<F> State<F> {
    fn is_between(&self) -> bool {
        matches!(self, State::Waiting { .. } | State::Ready)
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn new(
        future: S::Future,
        service: S,
        copy: Option<Request<B>>,
        attempt: Attempt,
        warned: Arc<AtomicBool>,
    ) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            service,
            copy,
            attempt,
            warned,
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: TryCloneBody,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    // The layer planned another attempt only if there is a copy to send.
                    match this.attempt.take_wait().filter(|_| this.copy.is_some()) {
                        Some(wait) => {
                            drop(result);
                            this.state.set(State::Waiting {
                                sleep: tokio::time::sleep(wait),
                            });
                        }
                        None => {
                            if !this.attempt.seen() {
                                misplaced(this.warned);
                            }
                            return Poll::Ready(result);
                        }
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        this.state.set(State::Failed);
                        return Poll::Ready(Err(error));
                    }
                    let more = this.attempt.next();
                    // The last attempt sends the copy itself; one before it, a copy of the copy.
                    let request = match this.copy.as_ref().filter(|_| more).and_then(try_clone) {
                        Some(request) => request,
                        None => {
                            // Whatever this attempt's answer, it is the request's.
                            this.attempt.copy_sent();
                            this.copy
                                .take()
                                .expect("a retry is planned only with a copy")
                        }
                    };
                    let future = this.service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Failed => panic!("retry::ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::Waiting { .. } => "waiting",
            State::Ready => "ready",
            State::Failed => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// No `GatewayErrorService` saw the request: the retry service is placed inside the layer, or
/// with none, and can never retry. Told once per service.
fn misplaced(warned: &AtomicBool) {
    // A load first: once warned, each request costs a read, not a write.
    if warned.load(Ordering::Relaxed) || warned.swap(true, Ordering::Relaxed) {
        return;
    }
    tracing::event!(
        target: TARGET,
        Level::WARN,
        "RetryLayer sees requests that no GatewayErrorLayer inside it handles: it is placed \
         inside GatewayErrorLayer, or without one, so it never retries. Place it outside \
         GatewayErrorLayer: ServiceBuilder::new().layer(RetryLayer::new(policy))\
         .layer(GatewayErrorLayer::new())",
    );
}
