//! [`ResponseFuture`]: the future of [`GatewayErrorService`](crate::GatewayErrorService).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::body::GatewayBody;
use crate::deadline::{self, HeadClock};
use crate::respond::{self, Outcome, Pending};

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
        // The inner future, dropped when a limit ran out.
        Done,
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
        let mut this = self.project();
        let outcome = {
            let pending = this
                .pending
                .as_ref()
                .expect("ResponseFuture polled after completion");
            let _entered = pending.span.enter();
            let outcome = match this.state.as_mut().project() {
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
                StateProj::Done => unreachable!("a finished future keeps no `pending`"),
            };
            if let Outcome::TimedOut(timed_out) = outcome {
                // The upstream's future is dropped now, inside the span, with the reason: a layer
                // inside it counts the timeout as the upstream's failure, not as a client that
                // went away.
                let mut state = this.state.as_mut();
                deadline::drop_timed_out(timed_out, || state.set(State::Done));
            }
            outcome
        };
        let pending = this.pending.take().expect("checked above");
        Poll::Ready(Ok(respond::finish(pending, outcome)))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::time::Duration;

    use http::{Request, StatusCode};
    use http_body_util::Empty;
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use crate::{GatewayErrorLayer, ProxyError, ProxyErrorKind};

    type Answer = Result<http::Response<Empty<bytes::Bytes>>, std::io::Error>;

    /// An upstream that answers 200 after `delay`, or never.
    fn upstream(
        delay: Option<Duration>,
    ) -> impl tower::Service<
        Request<()>,
        Response = http::Response<Empty<bytes::Bytes>>,
        Error = std::io::Error,
        Future = impl Future<Output = Answer>,
    > + Clone {
        service_fn(move |_request: Request<()>| async move {
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
            Ok(http::Response::new(Empty::new()))
        })
    }

    fn error_of<B>(response: &http::Response<B>) -> &ProxyError {
        response
            .extensions()
            .get::<ProxyError>()
            .expect("a generated error")
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_gets_a_504_at_the_timeout_and_not_before() {
        let layer = GatewayErrorLayer::new().upstream_timeout(Duration::from_secs(1));
        let started = Instant::now();
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(upstream(None))
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let error = error_of(&response);
        assert_eq!(error.kind(), Some(ProxyErrorKind::HttpResponseTimeout));
        assert_eq!(
            error.source().unwrap().to_string(),
            "upstream sent no response head within 1s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_just_inside_the_timeout_passes() {
        let layer = GatewayErrorLayer::new().upstream_timeout(Duration::from_secs(1));
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(upstream(Some(Duration::from_millis(999))))
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.extensions().get::<ProxyError>().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_deadline_fires_first_when_it_is_sooner() {
        let layer = GatewayErrorLayer::new()
            .upstream_timeout(Duration::from_secs(5))
            .response_deadline(Duration::from_millis(500));
        let started = Instant::now();
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(upstream(None))
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let cause = error_of(&response).source().unwrap().to_string();
        assert!(cause.contains("response deadline of 500ms"), "{cause}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_the_future_waits_as_long_as_the_upstream() {
        let response = ServiceBuilder::new()
            .layer(GatewayErrorLayer::new())
            .service(upstream(Some(Duration::from_secs(3600))))
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_in_poll_ready_is_the_next_calls_answer() {
        let response = ServiceBuilder::new()
            .layer(GatewayErrorLayer::new())
            .service(NotReady)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            error_of(&response).kind(),
            Some(ProxyErrorKind::ConnectionRefused)
        );
    }

    /// Fails in `poll_ready` with a refused connection, as a pool that cannot connect does.
    #[derive(Clone)]
    struct NotReady;

    impl tower::Service<Request<()>> for NotReady {
        type Response = http::Response<Empty<bytes::Bytes>>;
        type Error = std::io::Error;
        type Future = std::future::Ready<Answer>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::io::Error>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionRefused.into()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            unreachable!("never ready, never called")
        }
    }
}
