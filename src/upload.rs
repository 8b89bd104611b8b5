//! The client's upload, watched on its way to the upstream: when it has been sent in full, when
//! the client stalls it, when the client breaks it off.
//!
//! [`UploadBody`] wraps the request body the inner service sends upstream. What it sees goes to
//! an [`UploadWatch`] that the response future shares, so that
//!
//! - the upstream is timed only while the gateway waits on it: every moment the gateway spends
//!   waiting on the client for more of its body is left off the [upstream
//!   timeout](crate::TimeLimits::upstream_timeout) (for an upload, the upstream's time
//!   then in effect starts when the request has been sent in full, as Envoy's route timeout
//!   does, while an upstream that never takes the request still times out);
//! - an upload that stalls past the [client body
//!   timeout](crate::TimeLimits::client_body_timeout) is answered `408 Request Timeout`
//!   at once, and one the client breaks off `400 Bad Request`: both are the client's
//!   [fault](crate::fault), never counted against the upstream.
//!
//! A request without a body (the body says it is at its end when the request arrives) has
//! nothing to watch: no shared state is made, nothing is allocated.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::BoxError;

/// How an upload stands.
const SENDING: u8 = 0;
const SENT: u8 = 1;
const STALLED: u8 = 2;
const BROKEN_OFF: u8 = 3;

/// What the response future and the body share about one upload.
pub(crate) struct UploadWatch {
    /// `SENDING`, `SENT`, `STALLED` or `BROKEN_OFF`.
    progress: AtomicU8,
    /// When the current wait on the client began, in nanoseconds after `arrived`, plus one; 0
    /// while the gateway is not waiting on the client.
    waiting_since: AtomicU64,
    /// Nanoseconds spent waiting on the client, over the waits that are over.
    waited: AtomicU64,
    /// When the request arrived: the base of the two clocks above.
    arrived: Instant,
    /// The longest the client may keep the gateway waiting for the next part of its body.
    stall_timeout: Option<Duration>,
    /// The upstream timeout, in nanoseconds plus one, while the response future waits for the
    /// client's current wait to end before it runs the upstream's clock again; 0 otherwise.
    parked: AtomicU64,
    /// The response future, told when the client stalls or breaks off.
    future: AtomicWaker,
}

/// A fault of the client's upload, as the response future reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadFault {
    Stalled,
    BrokenOff,
}

impl UploadFault {
    /// The status the client is answered with.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            UploadFault::Stalled => StatusCode::REQUEST_TIMEOUT,
            UploadFault::BrokenOff => StatusCode::BAD_REQUEST,
        }
    }
}

impl UploadWatch {
    /// The watch for `body`, arriving now; `None` when the body is already at its end.
    pub(crate) fn start<B: Body>(body: &B, stall_timeout: Option<Duration>) -> Option<Arc<Self>> {
        if body.is_end_stream() {
            return None;
        }
        Some(Arc::new(UploadWatch {
            progress: AtomicU8::new(SENDING),
            waiting_since: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            arrived: Instant::now(),
            stall_timeout,
            parked: AtomicU64::new(0),
            future: AtomicWaker::new(),
        }))
    }

    /// The client's fault, if its upload stalled or broke off.
    pub(crate) fn fault(&self) -> Option<UploadFault> {
        match self.progress.load(Ordering::Acquire) {
            STALLED => Some(UploadFault::Stalled),
            BROKEN_OFF => Some(UploadFault::BrokenOff),
            _ => None,
        }
    }

    /// The error for the client's fault, when the response future finds it before the inner
    /// service has failed with it.
    pub(crate) fn error(&self) -> Option<UploadError> {
        let kind = match self.fault()? {
            UploadFault::Stalled => {
                UploadErrorKind::Stalled(self.stall_timeout.unwrap_or(Duration::ZERO))
            }
            UploadFault::BrokenOff => UploadErrorKind::BrokenOff(None),
        };
        Some(UploadError { kind })
    }

    /// Has the response future woken when the client's upload fails.
    pub(crate) fn wake_on_fault(&self, waker: &Waker) {
        self.future.register(waker);
    }

    /// The upstream timeout of `after` ran out while, maybe, the gateway was waiting on the
    /// client: if it is, the response future is to be woken when that wait ends (true), else
    /// nothing changes (false).
    pub(crate) fn park_while_waiting(&self, now: Instant, after: Duration) -> bool {
        let nanos = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX - 1);
        // Parked first, then the wait checked: the body ends a wait first, then checks for a
        // parked future, so one of the two always sees the other (both sequentially consistent).
        self.parked.store(nanos + 1, Ordering::SeqCst);
        if self.current_wait(now).is_some() {
            return true;
        }
        self.parked.store(0, Ordering::SeqCst);
        false
    }

    /// The upstream timeout the response future parked with, once the client's wait it parked
    /// for is over.
    pub(crate) fn resumed(&self) -> Option<Duration> {
        if self.parked.load(Ordering::SeqCst) == 0 || self.waiting_since.load(Ordering::SeqCst) != 0
        {
            return None;
        }
        match self.parked.swap(0, Ordering::SeqCst) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos - 1)),
        }
    }

    /// When the request arrived.
    pub(crate) fn arrived(&self) -> Instant {
        self.arrived
    }

    /// How long, up to `now`, the gateway has waited on the client for its body.
    pub(crate) fn client_time(&self, now: Instant) -> Duration {
        // The current wait first: once it is over, it is in `waited`.
        let current = self.current_wait(now).unwrap_or(Duration::ZERO);
        let waited = Duration::from_nanos(self.waited.load(Ordering::SeqCst));
        waited.saturating_add(current)
    }

    /// How long the gateway has been waiting on the client right now, if it is.
    pub(crate) fn current_wait(&self, now: Instant) -> Option<Duration> {
        let since = self.waiting_since.load(Ordering::SeqCst);
        (since != 0).then(|| {
            let began = self.arrived + Duration::from_nanos(since - 1);
            now.saturating_duration_since(began)
        })
    }

    fn nanos_since_arrival(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.arrived).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The gateway asked for more of the body and the client has none yet.
    fn wait_began(&self, now: Instant) {
        if self.waiting_since.load(Ordering::Relaxed) == 0 {
            let since = self.nanos_since_arrival(now).saturating_add(1);
            self.waiting_since.store(since, Ordering::SeqCst);
        }
    }

    /// The client sent more (or the wait is over for another reason): the wait is added up, and
    /// a response future that stopped the upstream's clock for it is woken.
    fn wait_ended(&self, now: Instant) {
        let since = self.waiting_since.load(Ordering::SeqCst);
        if since == 0 {
            return;
        }
        let waited = self.nanos_since_arrival(now).saturating_sub(since - 1);
        // Added up before the wait is said to be over: a reader never sees neither.
        self.waited.fetch_add(waited, Ordering::SeqCst);
        self.waiting_since.store(0, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) != 0 {
            self.future.wake();
        }
    }

    fn ended(&self, progress: u8) {
        self.wait_ended(Instant::now());
        // The first end wins: a body that broke off stays broken off.
        let _ =
            self.progress
                .compare_exchange(SENDING, progress, Ordering::AcqRel, Ordering::Acquire);
        if progress != SENT {
            self.future.wake();
        }
    }
}

pin_project! {
    /// The request body as the inner service sees it: the client's body, passed through frame by
    /// frame, unchanged (its size hint included), and watched. See the [module docs](self).
    ///
    /// If the client stalls past the [client body
    /// timeout](crate::TimeLimits::client_body_timeout), or its body fails, the body ends
    /// with an [`UploadError`]: the inner service's request fails, and the layer answers the
    /// client with 408 or 400 as its own fault.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use gateway_errors::GatewayErrorLayer;
    /// use gateway_errors::body::UploadBody;
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // The inner service takes the watched body; here it echoes it.
    /// let echo = service_fn(|request: Request<UploadBody<Full<Bytes>>>| async move {
    ///     let bytes = request.into_body().collect().await?.to_bytes();
    ///     Ok::<_, gateway_errors::BoxError>(Response::new(Full::new(bytes)))
    /// });
    /// let gateway = ServiceBuilder::new()
    ///     .layer(GatewayErrorLayer::new())
    ///     .service(echo);
    /// let request = Request::post("/echo").body(Full::new(Bytes::from("hello"))).unwrap();
    /// let response = gateway.oneshot(request).await.unwrap();
    /// let body = response.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(body, "hello");
    /// # }
    /// ```
    pub struct UploadBody<B> {
        #[pin]
        inner: B,
        watch: Watching,
        // Made the first time the client keeps the gateway waiting: a body that arrives with its
        // head never pays for a timer.
        stall: Option<Pin<Box<Sleep>>>,
    }
}

/// The body's hold on its watch, until the body ends or is dropped.
struct Watching(Option<Arc<UploadWatch>>);

impl Drop for Watching {
    fn drop(&mut self) {
        // Whatever dropped the body (the upstream answered early, the request failed), the
        // gateway is no longer waiting on the client: the upstream's clock runs again.
        if let Some(watch) = self.0.take() {
            watch.wait_ended(Instant::now());
        }
    }
}

impl<B> UploadBody<B> {
    pub(crate) fn new(inner: B, watch: Option<Arc<UploadWatch>>) -> Self {
        UploadBody {
            inner,
            watch: Watching(watch),
            stall: None,
        }
    }

    /// `body`, unwatched: for calling the inner service on a path that does not go through the
    /// layer (a health check of its own, a baseline without the layer), with the same body type.
    pub fn unwatched(body: B) -> Self {
        UploadBody::new(body, None)
    }

    /// The client's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Consumes `self`, returning the client's body, no longer watched.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for UploadBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        let Some(watch) = this.watch.0.as_ref() else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => {
                let now = Instant::now();
                watch.wait_began(now);
                let Some(limit) = watch.stall_timeout else {
                    return Poll::Pending;
                };
                let began = now - watch.current_wait(now).unwrap_or(Duration::ZERO);
                let due = began + limit;
                let timer = match this.stall.as_mut() {
                    Some(timer) => {
                        if timer.deadline() != due {
                            timer.as_mut().reset(due);
                        }
                        timer
                    }
                    None => this.stall.insert(Box::pin(tokio::time::sleep_until(due))),
                };
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                watch.ended(STALLED);
                this.watch.0 = None;
                Poll::Ready(Some(Err(Box::new(UploadError {
                    kind: UploadErrorKind::Stalled(limit),
                }))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                watch.wait_ended(Instant::now());
                if this.inner.is_end_stream() {
                    watch.ended(SENT);
                    this.watch.0 = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                watch.ended(SENT);
                this.watch.0 = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                watch.ended(BROKEN_OFF);
                this.watch.0 = None;
                Poll::Ready(Some(Err(Box::new(UploadError {
                    kind: UploadErrorKind::BrokenOff(Some(error.into())),
                }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for UploadBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadBody")
            .field("watched", &self.watch.0.is_some())
            .finish_non_exhaustive()
    }
}

/// The client's upload failed: it stalled past the [client body
/// timeout](crate::TimeLimits::client_body_timeout), or its body broke off. The client's
/// fault, answered 408 or 400, never the upstream's.
///
/// It is the error [`UploadBody`] ends with, so the inner service's own error carries it in its
/// `source()` chain.
pub struct UploadError {
    kind: UploadErrorKind,
}

enum UploadErrorKind {
    Stalled(Duration),
    /// With the client body's own error, when the failure was seen where it was.
    BrokenOff(Option<BoxError>),
    /// The response deadline ran out while the gateway waited on the client's body.
    OverDeadline,
}

impl UploadError {
    /// Whether the client kept the gateway waiting past the client body timeout.
    pub fn is_stalled(&self) -> bool {
        matches!(
            self.kind,
            UploadErrorKind::Stalled(_) | UploadErrorKind::OverDeadline
        )
    }

    /// Whether the client's body broke off (it closed or reset its connection, or its stream,
    /// before the body was complete).
    pub fn is_broken_off(&self) -> bool {
        matches!(self.kind, UploadErrorKind::BrokenOff(_))
    }

    /// The status the client is answered with: 408 for a stall, 400 for a body cut short.
    pub fn status(&self) -> StatusCode {
        if self.is_stalled() {
            StatusCode::REQUEST_TIMEOUT
        } else {
            StatusCode::BAD_REQUEST
        }
    }

    /// The response deadline ran out while the gateway was waiting on the client's body.
    pub(crate) fn over_deadline() -> Self {
        UploadError {
            kind: UploadErrorKind::OverDeadline,
        }
    }
}

impl fmt::Debug for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("UploadError");
        match &self.kind {
            UploadErrorKind::Stalled(limit) => debug.field("stalled_for", limit),
            UploadErrorKind::BrokenOff(source) => debug.field("broken_off", source),
            UploadErrorKind::OverDeadline => debug.field("over_deadline", &true),
        };
        debug.finish()
    }
}

impl fmt::Display for UploadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            UploadErrorKind::Stalled(limit) => {
                write!(f, "client sent no request body data for {limit:?}")
            }
            UploadErrorKind::BrokenOff(_) => f.write_str("client's request body broke off"),
            UploadErrorKind::OverDeadline => f.write_str(
                "client's request body was not complete when the response deadline ran out",
            ),
        }
    }
}

impl StdError for UploadError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            UploadErrorKind::BrokenOff(Some(source)) => Some(&**source),
            _ => None,
        }
    }
}

/// The number of bytes a frame carries, for tests that count what went upstream.
#[cfg(test)]
fn data_len<D: bytes::Buf>(frame: &Frame<D>) -> usize {
    frame.data_ref().map_or(0, bytes::Buf::remaining)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    use crate::testing::{Frames, Scripted};

    fn scripted(stall: Option<Duration>) -> (Frames, UploadBody<Scripted>, Arc<UploadWatch>) {
        let (send, body) = Scripted::channel();
        let watch = UploadWatch::start(&body, stall).expect("a body that is not at its end");
        (send, UploadBody::new(body, Some(watch.clone())), watch)
    }

    async fn next(body: &mut Pin<Box<UploadBody<Scripted>>>) -> Option<Result<usize, BoxError>> {
        std::future::poll_fn(|cx| body.as_mut().poll_frame(cx))
            .await
            .map(|r| r.map(|frame| data_len(&frame)))
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_waiting_on_the_client_is_counted_and_a_body_that_ends_is_sent() {
        let (send, body, watch) = scripted(Some(Duration::from_secs(10)));
        let mut body = Box::pin(body);
        let client = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                send.send(Ok(Bytes::from_static(b"part"))).unwrap();
            }
        });
        for _ in 0..3 {
            assert_eq!(next(&mut body).await.unwrap().unwrap(), 4);
        }
        client.await.unwrap();
        assert!(next(&mut body).await.is_none());
        // Three waits of 2 s each: a slow but steady upload, none of it the upstream's time.
        assert_eq!(watch.client_time(Instant::now()), Duration::from_secs(6));
        assert_eq!(watch.fault(), None);
        assert_eq!(watch.current_wait(Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stalls_past_the_timeout_ends_the_body_with_a_stall() {
        let (send, body, watch) = scripted(Some(Duration::from_secs(5)));
        let mut body = Box::pin(body);
        send.send(Ok(Bytes::from_static(b"first"))).unwrap();
        assert_eq!(next(&mut body).await.unwrap().unwrap(), 5);
        let started = Instant::now();
        let error = next(&mut body).await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let error = error.downcast::<UploadError>().unwrap();
        assert!(error.is_stalled());
        assert_eq!(error.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(watch.fault(), Some(UploadFault::Stalled));
        drop(send);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_fails_is_broken_off_by_the_client() {
        let (send, body, watch) = scripted(None);
        let mut body = Box::pin(body);
        send.send(Err(std::io::ErrorKind::UnexpectedEof.into()))
            .unwrap();
        let error = next(&mut body).await.unwrap().unwrap_err();
        let error = error.downcast::<UploadError>().unwrap();
        assert!(error.is_broken_off());
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.source().unwrap().is::<std::io::Error>());
        assert_eq!(watch.fault(), Some(UploadFault::BrokenOff));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_while_waiting_no_longer_holds_the_upstreams_clock() {
        let (_send, body, watch) = scripted(None);
        let mut body = Box::pin(body);
        let poll =
            std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx).is_pending()));
        assert!(poll.await);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(watch.current_wait(Instant::now()).is_some());
        drop(body);
        assert_eq!(watch.current_wait(Instant::now()), None);
        assert_eq!(watch.client_time(Instant::now()), Duration::from_secs(3));
        // Dropped is not broken off: the client did nothing wrong.
        assert_eq!(watch.fault(), None);
    }

    #[test]
    fn a_body_already_at_its_end_is_not_watched() {
        let body = http_body_util::Empty::<Bytes>::new();
        assert!(UploadWatch::start(&body, Some(Duration::from_secs(1))).is_none());
    }

    #[test]
    fn the_client_body_is_given_back_unwatched() {
        let body = http_body_util::Full::new(Bytes::from_static(b"x"));
        let watch = UploadWatch::start(&body, None).unwrap();
        let upload = UploadBody::new(body, Some(watch.clone()));
        assert_eq!(upload.size_hint().exact(), Some(1));
        let inner = upload.into_inner();
        assert_eq!(inner.size_hint().exact(), Some(1));
        assert_eq!(Arc::strong_count(&watch), 1);
    }
}
