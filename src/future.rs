//! [`ResponseFuture`]: the future of [`GatewayErrorService`](crate::GatewayErrorService).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::LocalKey;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::body::GatewayBody;
use crate::classify::classification::Classification;
use crate::deadline::{self, HeadClock, ResponseDeadline};
use crate::error::ProxyError;
use crate::fault::Fault;
use crate::kind::RequestSent;
use crate::respond::{self, Outcome, Pending};
use crate::spare::{Recycle, Recycled, Spare};
use crate::upload::{UploadError, UploadWatch};

pin_project! {
    /// The future of [`GatewayErrorService`](crate::GatewayErrorService): waits for the inner
    /// service, under the upstream timeout and the response deadline, and watches the client's
    /// upload. Never fails: every outcome is a response.
    ///
    /// One pointer beside the inner future: what the answer will need, and the clock, live in a
    /// box that the thread's next request uses again (no allocation per request). A server
    /// moves the future several times on its way to being polled: each move copies the inner
    /// future and that pointer, nothing more.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        held: Recycled<Held>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before it finished: the client went away. Not an error of anyone's.
            if let Some(pending) = this.project().held.as_mut().project().pending.take() {
                respond::client_gone(&pending);
            }
        }
    }
}

pin_project! {
    /// What the future keeps out of line until the answer is decided.
    #[project = HeldProj]
    pub(crate) struct Held {
        #[pin]
        clock: HeadClock,
        // `None` once answered (and in a spare box).
        pending: Option<Pending>,
        // The client's upload, while it may still keep the gateway waiting; `None` for a request
        // without a body.
        upload: Option<Arc<UploadWatch>>,
    }
}

impl Held {
    /// The parts of a request's future and its clock, in a box the thread keeps for requests.
    #[inline(always)]
    pub(crate) fn new(
        clock: HeadClock,
        pending: Pending,
        upload: Option<Arc<UploadWatch>>,
    ) -> Recycled<Held> {
        Recycled::new(Held {
            clock,
            pending: Some(pending),
            upload,
        })
    }

    /// The request's span, entered while the inner service is called (none once answered).
    pub(crate) fn span(&self) -> &tracing::Span {
        let pending = self.pending.as_ref();
        pending.map_or(const { &tracing::Span::none() }, |pending| &pending.span)
    }
}

impl Recycle for Held {
    fn spare() -> &'static LocalKey<Spare<Self>> {
        thread_local! {
            static SPARE: Spare<Held> = const { Spare::new() };
        }
        &SPARE
    }

    /// No timer in the runtime's wheel, nothing of a request.
    fn empty(self: Pin<&mut Self>) {
        let mut this = self.project();
        this.clock.set(HeadClock::off());
        *this.pending = None;
        *this.upload = None;
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
    /// The future of a call made: `future`, and its parts, already in their box.
    #[inline(always)]
    pub(crate) fn waiting(future: F, held: Recycled<Held>) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
            held,
        }
    }

    /// The inner service failed in `poll_ready`: the answer is its error.
    pub(crate) fn failed(error: BoxError, pending: Pending) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            held: Held::new(HeadClock::off(), pending, None),
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
        let held = this.held.as_mut().project();
        let mut clock = held.clock;
        let upload = held.upload;
        // Answered where it lies, then dropped there: moving `Pending` out first would copy it.
        let pending = held
            .pending
            .as_mut()
            .expect("ResponseFuture polled after completion");
        let entered = pending.span.enter();
        let outcome = match this.state.as_mut().project() {
            StateProj::Failed { error } => {
                Outcome::Failed(error.take().expect("error is taken once"))
            }
            StateProj::Waiting { future } => match future.poll(cx) {
                Poll::Ready(Ok(response)) => {
                    // The common case, answered at once: the response goes straight to its
                    // answer, not through an `Outcome` (each move is a copy of its bytes).
                    drop(entered);
                    let answer = respond::from_response(pending, response);
                    *held.pending = None;
                    return Poll::Ready(Ok(answer));
                }
                Poll::Ready(Err(error)) => {
                    let error = error.into();
                    // The client's upload failed first: whatever the inner service made of
                    // it, the fault is the client's.
                    match upload.as_ref().and_then(|upload| upload.fault()) {
                        Some(fault) => Outcome::Failed(client_fault(fault.status(), error)),
                        None => Outcome::Failed(error),
                    }
                }
                Poll::Pending => {
                    if let Some(upload) = upload.as_ref() {
                        upload.wake_on_fault(cx.waker());
                    }
                    let deadline = pending.response_deadline;
                    match poll_limits(clock.as_mut(), deadline, upload.as_deref(), cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(outcome) => outcome,
                    }
                }
            },
            StateProj::Done => unreachable!("a finished future keeps no `pending`"),
        };
        match outcome {
            Outcome::TimedOut(timed_out) => {
                // The upstream's future is dropped now, inside the span, with the reason: a
                // layer inside it counts the timeout as the upstream's failure, not as a
                // client that went away.
                let mut state = this.state.as_mut();
                deadline::drop_timed_out(timed_out, || state.set(State::Done));
            }
            Outcome::Failed(_) if this.state.as_ref().is_waiting() => {
                // The client's fault, found while the upstream still had the request: it is
                // abandoned as a client that went away would abandon it.
                this.state.as_mut().set(State::Done);
            }
            _ => {}
        }
        drop(entered);
        let answer = respond::finish(pending, outcome);
        *held.pending = None;
        Poll::Ready(Ok(answer))
    }
}

impl<F> State<F> {
    fn is_waiting(&self) -> bool {
        matches!(self, State::Waiting { .. })
    }
}

/// The limits on the head, and the client's upload, while the upstream has not answered: ready
/// with the outcome once one of them decides it.
fn poll_limits(
    mut clock: Pin<&mut HeadClock>,
    deadline: Option<ResponseDeadline>,
    upload: Option<&UploadWatch>,
    cx: &mut Context<'_>,
) -> Poll<Outcome> {
    if let Some(error) = upload.and_then(UploadWatch::error) {
        return Poll::Ready(Outcome::Failed(client_fault(
            error.status(),
            Box::new(error),
        )));
    }
    if let Some((upload, after)) = upload.and_then(|u| u.resumed().map(|after| (u, after))) {
        // The client's wait that held the upstream's clock is over: it runs again from here.
        let now = tokio::time::Instant::now();
        let due = upload.arrived() + after.saturating_add(upload.client_time(now));
        clock.as_mut().postpone(due, after, deadline);
    }
    loop {
        let timed_out = std::task::ready!(clock.as_mut().poll_expired(cx));
        let Some(upload) = upload else {
            return Poll::Ready(Outcome::TimedOut(timed_out));
        };
        let now = tokio::time::Instant::now();
        if let Some(after) = timed_out.upstream_timeout() {
            // Only the time spent waiting on the upstream counts against it. While the gateway
            // waits on the client, the upstream's clock is stopped: the body wakes this future
            // when that wait ends (the timer is set a whole timeout on, as a bound).
            if upload.park_while_waiting(now, after) {
                clock.as_mut().postpone(now + after, after, deadline);
                continue;
            }
            let upstream_time = now
                .saturating_duration_since(upload.arrived())
                .saturating_sub(upload.client_time(now));
            if upstream_time < after {
                clock
                    .as_mut()
                    .postpone(now + (after - upstream_time), after, deadline);
                continue;
            }
        }
        if timed_out.is_response_deadline() && upload.current_wait(now).is_some() {
            // The whole exchange ran out of time while the gateway waited on the client.
            return Poll::Ready(Outcome::Failed(client_overran()));
        }
        return Poll::Ready(Outcome::TimedOut(timed_out));
    }
}

/// The client's upload stalled or broke off: the client's fault, answered with `status`, with
/// the error it caused.
fn client_fault(status: StatusCode, error: BoxError) -> BoxError {
    let classification = Classification::unrecognized()
        .with_status(status)
        .with_request_sent(RequestSent::MaybeSent)
        .with_fault(Fault::Client);
    Box::new(ProxyError::from_classification(classification).with_source_boxed(error))
}

/// The response deadline ran out while the client was still uploading: 408, the client's.
fn client_overran() -> BoxError {
    let error = UploadError::over_deadline();
    client_fault(error.status(), Box::new(error))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::time::Duration;

    use http::{Request, StatusCode};
    use http_body_util::Empty;
    use tokio::time::Instant;
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

    use crate::body::UploadBody;
    use crate::{GatewayErrorLayer, ProxyError, ProxyErrorKind, TimeLimits};

    type Answer = Result<http::Response<Empty<bytes::Bytes>>, std::io::Error>;

    /// An upstream that answers 200 after `delay`, or never.
    fn upstream(
        delay: Option<Duration>,
    ) -> impl tower::Service<
        Request<UploadBody<Empty<bytes::Bytes>>>,
        Response = http::Response<Empty<bytes::Bytes>>,
        Error = std::io::Error,
        Future = impl Future<Output = Answer>,
    > + Clone {
        service_fn(
            move |_request: Request<UploadBody<Empty<bytes::Bytes>>>| async move {
                match delay {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
                Ok(http::Response::new(Empty::new()))
            },
        )
    }

    fn error_of<B>(response: &http::Response<B>) -> &ProxyError {
        response
            .extensions()
            .get::<ProxyError>()
            .expect("a generated error")
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_gets_a_504_at_the_timeout_and_not_before() {
        let layer = GatewayErrorLayer::new()
            .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1)));
        let started = Instant::now();
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(upstream(None))
            .oneshot(Request::new(Empty::<bytes::Bytes>::new()))
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

    /// Where a future keeps what it holds out of line.
    fn box_address<F>(future: &super::ResponseFuture<F>) -> *const super::Held {
        future.held.address()
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_requests_box_is_used_again_by_the_next_one_on_its_thread_with_a_clock_of_its_own() {
        // A layer with a one-second upstream timeout in front of `upstream(delay)`.
        let gateway = |delay| {
            let limits = TimeLimits::new().upstream_timeout(Duration::from_secs(1));
            ServiceBuilder::new()
                .layer(GatewayErrorLayer::new().time_limits(limits))
                .service(upstream(delay))
        };
        let mut answering = gateway(Some(Duration::from_millis(10)));
        let mut silent = gateway(None);
        let get = || Request::new(Empty::<bytes::Bytes>::new());

        let future = answering.ready().await.unwrap().call(get());
        let first = box_address(&future);
        assert_eq!(future.await.unwrap().status(), StatusCode::OK);

        // The next request gets the same box, with a clock of its own: it is not cut at what
        // was left of the first one's second.
        tokio::time::advance(Duration::from_millis(900)).await;
        for (service, status, after) in [
            (&mut answering, StatusCode::OK, Duration::from_millis(10)),
            (
                &mut silent,
                StatusCode::GATEWAY_TIMEOUT,
                Duration::from_secs(1),
            ),
        ] {
            let future = service.ready().await.unwrap().call(get());
            assert_eq!(box_address(&future), first);
            let started = Instant::now();
            assert_eq!(future.await.unwrap().status(), status);
            assert_eq!(started.elapsed(), after);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_just_inside_the_timeout_passes() {
        let layer = GatewayErrorLayer::new()
            .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1)));
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(upstream(Some(Duration::from_millis(999))))
            .oneshot(Request::new(Empty::<bytes::Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.extensions().get::<ProxyError>().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_deadline_fires_first_when_it_is_sooner() {
        let layer = GatewayErrorLayer::new().time_limits(
            TimeLimits::new()
                .upstream_timeout(Duration::from_secs(5))
                .response_deadline(Duration::from_millis(500)),
        );
        let started = Instant::now();
        let response = ServiceBuilder::new()
            .layer(layer)
            .service(upstream(None))
            .oneshot(Request::new(Empty::<bytes::Bytes>::new()))
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
            .oneshot(Request::new(Empty::<bytes::Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_in_poll_ready_is_the_next_calls_answer() {
        let response = ServiceBuilder::new()
            .layer(GatewayErrorLayer::new())
            .service(NotReady)
            .oneshot(Request::new(Empty::<bytes::Bytes>::new()))
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

    impl<B> tower::Service<Request<B>> for NotReady {
        type Response = http::Response<Empty<bytes::Bytes>>;
        type Error = std::io::Error;
        type Future = std::future::Ready<Answer>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::io::Error>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionRefused.into()))
        }

        fn call(&mut self, _request: Request<B>) -> Self::Future {
            unreachable!("never ready, never called")
        }
    }

    /// A client body whose chunks come `gaps` apart (each gap before its chunk).
    fn paced_upload(
        gaps: Vec<Duration>,
    ) -> http_body_util::StreamBody<
        impl futures_util::Stream<Item = Result<http_body::Frame<bytes::Bytes>, std::io::Error>> + Send,
    > {
        let (send, receive) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for gap in gaps {
                tokio::time::sleep(gap).await;
                let chunk = Ok(http_body::Frame::data(bytes::Bytes::from_static(b"chunk")));
                if send.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        http_body_util::StreamBody::new(stream_of(receive))
    }

    fn stream_of<T>(
        mut receive: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| receive.poll_recv(cx))
    }

    /// One upload paced by `gaps` through `layer`, to an upstream that reads it and thinks.
    async fn upload(
        layer: GatewayErrorLayer,
        gaps: Vec<Duration>,
        think: Duration,
    ) -> http::Response<crate::body::GatewayBody<Empty<bytes::Bytes>>> {
        let request = Request::post("/upload").body(paced_upload(gaps)).unwrap();
        ServiceBuilder::new()
            .layer(layer)
            .service(reading_upstream(think))
            .oneshot(request)
            .await
            .unwrap()
    }

    /// An upstream that reads the whole upload, then answers 200 after `think`.
    fn reading_upstream<B>(
        think: Duration,
    ) -> impl tower::Service<
        Request<UploadBody<B>>,
        Response = http::Response<Empty<bytes::Bytes>>,
        Error = crate::BoxError,
        Future = impl Future<Output = Result<http::Response<Empty<bytes::Bytes>>, crate::BoxError>>,
    > + Clone
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<crate::BoxError>,
    {
        use http_body_util::BodyExt;
        service_fn(move |request: Request<UploadBody<B>>| async move {
            request.into_body().collect().await?;
            tokio::time::sleep(think).await;
            Ok(http::Response::new(Empty::new()))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_steady_upload_never_uses_the_upstreams_time() {
        // Ten chunks 300 ms apart: 3 s of upload against a 1 s upstream timeout.
        let layer = GatewayErrorLayer::new()
            .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1)));
        let response = upload(
            layer,
            vec![Duration::from_millis(300); 10],
            Duration::from_millis(900),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstreams_clock_runs_again_when_the_clients_wait_ends() {
        // The client pauses 5 s in the middle of its upload (well within the 60 s client body
        // timeout); the upstream then takes 1.5 s: a 504, one second after the upload ended.
        let layer = GatewayErrorLayer::new()
            .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1)));
        let started = Instant::now();
        let response = upload(
            layer,
            vec![Duration::ZERO, Duration::from_secs(5)],
            Duration::from_millis(1500),
        )
        .await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(6) && elapsed < Duration::from_millis(6100),
            "{elapsed:?}"
        );
        assert_eq!(error_of(&response).fault(), crate::fault::Fault::Upstream);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_is_the_clients_408_at_the_client_body_timeout() {
        let layer = GatewayErrorLayer::new().time_limits(
            TimeLimits::new()
                .upstream_timeout(Duration::from_secs(30))
                .client_body_timeout(Duration::from_secs(2)),
        );
        let started = Instant::now();
        let response = upload(
            layer,
            vec![Duration::ZERO, Duration::from_secs(3600)],
            Duration::ZERO,
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()["connection"], "close");
        let error = error_of(&response);
        assert_eq!(
            error.kind(),
            None,
            "no RFC 9209 type: not a next-hop failure"
        );
        assert_eq!(error.fault(), crate::fault::Fault::Client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_deadline_spent_on_the_clients_upload_is_the_clients() {
        let layer = GatewayErrorLayer::new().time_limits(
            TimeLimits::new()
                .response_deadline(Duration::from_secs(5))
                .client_body_timeout(Duration::from_secs(60)),
        );
        let response = upload(
            layer,
            vec![Duration::ZERO, Duration::from_secs(3600)],
            Duration::ZERO,
        )
        .await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(error_of(&response).fault(), crate::fault::Fault::Client);
    }

    #[tokio::test(start_paused = true)]
    async fn at_warn_a_body_that_breaks_after_the_head_is_still_told() {
        use http_body_util::BodyExt;

        let warnings = crate::testing::Warnings::default();
        let _guard = warnings.install();

        // The head arrives; the body then fails, as a reset connection does.
        let breaking = service_fn(|_request: Request<UploadBody<Empty<bytes::Bytes>>>| async {
            let (frames, body) = crate::testing::Scripted::channel();
            frames.send(Ok(bytes::Bytes::from_static(b"part"))).unwrap();
            frames
                .send(Err(std::io::ErrorKind::ConnectionReset.into()))
                .unwrap();
            Ok::<_, std::io::Error>(http::Response::new(body))
        });
        let response = ServiceBuilder::new()
            .layer(GatewayErrorLayer::new())
            .service(breaking)
            .oneshot(Request::new(Empty::<bytes::Bytes>::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err());
        let warnings = warnings.messages();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("body failed after the head"),
            "{warnings:?}"
        );
    }
}

#[cfg(test)]
mod size {
    use std::mem::size_of;

    use bytes::Bytes;
    use http_body_util::Empty;

    use super::ResponseFuture;
    use crate::body::GatewayBody;

    type Trivial = std::future::Ready<Result<http::Response<Empty<Bytes>>, std::io::Error>>;

    /// The future and the response body are each moved several times on their way through a
    /// server: every byte of them is copied each time, and a value larger than a few registers'
    /// worth is copied by a call to `memcpy`.
    #[test]
    fn the_response_future_is_the_inner_future_and_one_pointer() {
        let future = size_of::<ResponseFuture<Trivial>>();
        let body = size_of::<GatewayBody<Empty<Bytes>>>();
        eprintln!(
            "ResponseFuture<trivial> {future} (inner {}; in its box: Pending {}, RequestFacts {}, HeadClock {}), GatewayBody<Empty> {body}",
            size_of::<Trivial>(),
            size_of::<crate::respond::Pending>(),
            size_of::<crate::facts::RequestFacts>(),
            size_of::<crate::deadline::HeadClock>(),
        );
        // The state's tag shares the inner future's spare bits or takes one word.
        assert!(
            future <= size_of::<Trivial>() + 16,
            "ResponseFuture<trivial> is {future} bytes"
        );
        // The origin's body, a read timeout or one pointer to what times and watches it.
        assert!(body <= 64, "GatewayBody<Empty> is {body} bytes");
    }

    /// A value of at most 128 bytes is moved with a few register-wide loads and stores; a larger
    /// one by a call to `memcpy`. The request's facts and the head clock are each moved on their
    /// way into the future.
    #[test]
    fn the_facts_and_the_head_clock_are_moved_without_memcpy() {
        let clock = size_of::<crate::deadline::HeadClock>();
        assert!(clock <= 128, "HeadClock is {clock} bytes");
        let facts = size_of::<crate::facts::RequestFacts>();
        // The metrics' start of the request (its time and method) comes on top, when recorded.
        #[cfg(feature = "metrics")]
        let facts = facts - size_of::<Option<crate::metrics::Started>>();
        assert!(facts <= 128, "RequestFacts is {facts} bytes");
    }
}
