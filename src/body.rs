//! The bodies of the layer's service: [`GatewayBody`], the response body (the origin's body,
//! observed and timed, or a generated one), and [`UploadBody`], the request body as the inner
//! service sees it (the client's, watched).

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::LocalKey;
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::deadline::{self, BodyClock, BodyLimits};
use crate::error::ProxyError;
use crate::fault::Fault;
use crate::kind::ProxyErrorKind;
#[cfg(feature = "metrics")]
use crate::metrics::ResponseTimer;
use crate::spare::{Recycle, Recycled, Spare};
use crate::stale::tee::Tee;
use crate::trace::BodyTrace;
pub use crate::upload::UploadBody;

pin_project! {
    /// The response body of [`GatewayErrorService`](crate::GatewayErrorService).
    ///
    /// An origin's body passes through frame by frame, trailers included, unchanged. If it fails
    /// mid-stream, or stalls past the [read timeout](crate::TimeLimits::read_timeout)
    /// or the [response deadline](crate::TimeLimits::response_deadline), the body ends with
    /// an error, which the server answers by breaking the connection (HTTP/1.1) or resetting the
    /// stream (HTTP/2): a client never sees a cut body as a complete one. A timeout's error is a
    /// [`ProxyError`] of kind `connection_read_timeout` (or `http_response_timeout` for the
    /// deadline), so an outer layer can tell what happened; the span records it too.
    ///
    /// The timer and what watches the body live out of line, in a box that the thread's next body
    /// uses again (no allocation per response), taken only when the body needs it: a body with
    /// just the read timeout on takes it the first time the origin keeps the gateway waiting. The
    /// body is a few words more than the origin's, and it is `Unpin` when the origin's body is.
    pub struct GatewayBody<B> {
        #[pin]
        inner: Inner<B>,
        // The clock and the watch of an origin's body; none for a generated body, nor for an
        // origin's body that nothing times or watches.
        extras: Extras,
    }
}

pin_project! {
    /// What an origin's body carries besides itself.
    #[project = PartsProj]
    struct Parts {
        #[pin]
        clock: BodyClock,
        watch: Watch,
    }
}

/// The [`Parts`] of a body, out of line: a body is moved several times on its way to the client,
/// and one this small is moved in registers rather than copied by `memcpy` each time. The box is
/// not allocated per body: it comes from, and goes back to, a list of spare ones kept per thread.
/// The parts are dropped as the body is (the timer leaves the runtime's wheel, the watch says
/// what a dropped body says), before their box is kept for another body.
///
/// A body that only a read timeout is on, with no one watching it, takes no box until the origin
/// first makes the gateway wait: a short body that arrives with its head (most of them) never
/// does, and costs nothing but its own frames. The clock starts at that first wait, as it would
/// with the box (a read timeout counts the time the gateway waits on the origin).
enum Extras {
    /// Nothing times or watches the body.
    None,
    /// A read timeout, not yet running: the origin has not yet made the gateway wait.
    ReadTimeout(Duration),
    /// The clock and the watch.
    Parts(Recycled<Parts>),
}

impl Recycle for Parts {
    fn spare() -> &'static LocalKey<Spare<Self>> {
        thread_local! {
            static SPARE: Spare<Parts> = const { Spare::new() };
        }
        &SPARE
    }

    /// No clock running, and no one to tell (a dropped watch says what a dropped body says).
    fn empty(self: Pin<&mut Self>) {
        let mut this = self.project();
        this.clock.set(BodyClock::new(BodyLimits::default()));
        *this.watch = Watch::default();
    }
}

impl Extras {
    const NONE: Extras = Extras::None;

    /// What a body with `limits` and `watch` carries: the parts at once when something watches
    /// it or a deadline runs, else a read timeout to start at the first wait.
    #[inline]
    fn new(limits: BodyLimits, watch: Watch) -> Self {
        match limits {
            BodyLimits {
                read_timeout: None,
                response_deadline: None,
            } if watch.is_idle() => Extras::None,
            BodyLimits {
                read_timeout: Some(after),
                response_deadline: None,
            } if watch.is_idle() => Extras::ReadTimeout(after),
            limits => Extras::parts(limits, watch),
        }
    }

    fn parts(limits: BodyLimits, watch: Watch) -> Self {
        Extras::Parts(Recycled::new(Parts {
            clock: BodyClock::new(limits),
            watch,
        }))
    }

    fn project(&mut self) -> Option<PartsProj<'_>> {
        match self {
            Extras::Parts(parts) => Some(parts.as_mut().project()),
            Extras::None | Extras::ReadTimeout(_) => None,
        }
    }

    /// The parts, made now if the body has none yet (with the read timeout it waits with).
    fn made(&mut self) -> PartsProj<'_> {
        let read_timeout = match *self {
            Extras::Parts(_) => None,
            Extras::ReadTimeout(after) => Some(after),
            Extras::None => None,
        };
        if !matches!(self, Extras::Parts(_)) {
            let limits = BodyLimits {
                read_timeout,
                response_deadline: None,
            };
            *self = Extras::parts(limits, Watch::default());
        }
        match self {
            Extras::Parts(parts) => parts.as_mut().project(),
            Extras::None | Extras::ReadTimeout(_) => unreachable!("just made"),
        }
    }

    /// The origin made the gateway wait: the parts, made now for a read timeout not yet running.
    fn waiting(&mut self) -> Option<PartsProj<'_>> {
        match self {
            Extras::None => None,
            Extras::ReadTimeout(_) | Extras::Parts(_) => Some(self.made()),
        }
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Origin { #[pin] body: B },
        Generated { data: Option<Bytes> },
        // The origin's body, dropped after it timed out (which also lets go of its connection).
        Cut,
    }
}

/// Who is told how an origin's body ends: the span (when a subscriber wants it), the metrics,
/// and the copy for the last-good-copy store (a body being stored). Each is told once.
#[derive(Default)]
struct Watch {
    trace: Option<BodyTrace>,
    #[cfg(feature = "metrics")]
    timer: Option<ResponseTimer>,
    /// Boxed, and present only for a response being stored: one pointer for every other body.
    tee: Option<Box<Tee>>,
}

impl Watch {
    /// Whether no one is to be told anything.
    fn is_idle(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.timer.is_some() {
            return false;
        }
        self.trace.is_none() && self.tee.is_none()
    }

    /// The body ended: well, or badly with `failure` (why, and the error).
    /// `failure` says why, whose fault it was, and the error.
    fn ended(&mut self, failure: Option<(ProxyErrorKind, Fault, &(dyn StdError + 'static))>) {
        #[cfg(feature = "metrics")]
        if let Some(mut timer) = self.timer.take() {
            timer.ended();
            if let Some((kind, fault, _)) = failure {
                timer.failed(kind, fault);
            }
            // Dropped here: that records the duration.
        }
        if let Some(trace) = self.trace.take() {
            match failure {
                Some((kind, fault, error)) => trace.failed(kind, fault, error),
                None => trace.completed(),
            }
        }
        // Only a body that ended as it should is stored; a broken one is dropped with its copy.
        if let Some(tee) = self.tee.take() {
            if failure.is_none() {
                tee.complete();
            }
        }
    }

    /// A frame passes: the copy takes its data; trailers, or data past the limit, end the copy
    /// (the body streams on).
    #[inline]
    fn copy(&mut self, frame: &Frame<Bytes>) {
        if let Some(tee) = self.tee.as_mut() {
            let keep = frame.data_ref().is_some_and(|data| tee.copy(data));
            if !keep {
                self.tee = None;
            }
        }
    }
}

impl<B> GatewayBody<B> {
    /// The origin's `body`, timed by `limits`, told to `trace`, and copied into `tee` for the
    /// last-good-copy store when it is being stored. Made whole in one go: the body is larger
    /// than a move the compiler makes in registers, and each extra move is a `memcpy`.
    #[inline]
    pub(crate) fn origin(
        body: B,
        limits: BodyLimits,
        trace: Option<BodyTrace>,
        tee: Option<Box<Tee>>,
    ) -> Self {
        let watch = Watch {
            trace,
            #[cfg(feature = "metrics")]
            timer: None,
            tee,
        };
        GatewayBody {
            inner: Inner::Origin { body },
            extras: Extras::new(limits, watch),
        }
    }

    /// Has the body record the request's duration when it ends.
    #[cfg(feature = "metrics")]
    pub(crate) fn timed(mut self, timer: Option<ResponseTimer>) -> Self {
        if timer.is_some() {
            self.extras.made().watch.timer = timer;
        }
        self
    }

    pub(crate) fn generated(data: Bytes) -> Self {
        GatewayBody {
            inner: Inner::Generated {
                data: (!data.is_empty()).then_some(data),
            },
            extras: Extras::NONE,
        }
    }

    /// Whether the layer generated this body (an error page) rather than forwarding the origin's.
    pub fn is_generated(&self) -> bool {
        matches!(self.inner, Inner::Generated { .. })
    }
}

impl<B> Body for GatewayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let timed_out = match this.inner.as_mut().project() {
            InnerProj::Generated { data } => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
            InnerProj::Cut => return Poll::Ready(None),
            InnerProj::Origin { mut body } => match body.as_mut().poll_frame(cx) {
                Poll::Pending => match this.extras.waiting() {
                    None => return Poll::Pending,
                    Some(parts) => match parts.clock.poll_expired(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(timed_out) => timed_out,
                    },
                },
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(parts) = this.extras.project() {
                        parts.clock.frame_arrived();
                        if let Some(trace) = parts.watch.trace.as_mut() {
                            trace.forwarded(&frame);
                        }
                        parts.watch.copy(&frame);
                        // A server stops polling once `is_end_stream` says the body is done, so
                        // the end may never be seen as `None`.
                        if body.is_end_stream() {
                            parts.watch.ended(None);
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(error))) => {
                    let error: BoxError = error.into();
                    if let Some(parts) = this.extras.project() {
                        parts.watch.ended(Some((
                            ProxyErrorKind::HttpResponseIncomplete,
                            Fault::Upstream,
                            &*error,
                        )));
                    }
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    if let Some(parts) = this.extras.project() {
                        parts.watch.ended(None);
                    }
                    return Poll::Ready(None);
                }
            },
        };
        // Drop the stalled body now: its upstream connection is closed rather than kept waiting.
        // What is dropped learns why (a layer inside counts it as the upstream's failure).
        deadline::drop_timed_out(timed_out, || this.inner.set(Inner::Cut));
        // A response deadline spent on a client that reads slowly is the client's.
        let fault = if timed_out.is_upstreams() {
            Fault::Upstream
        } else {
            Fault::Client
        };
        if let Some(parts) = this.extras.project() {
            parts
                .watch
                .ended(Some((timed_out.kind(), fault, &timed_out)));
        }
        let error = ProxyError::new(timed_out.kind()).with_source(timed_out);
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Origin { body } => body.is_end_stream(),
            Inner::Generated { data } => data.is_none(),
            Inner::Cut => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Origin { body } => body.size_hint(),
            Inner::Generated { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Cut => SizeHint::with_exact(0),
        }
    }
}

impl<B> fmt::Debug for GatewayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Origin { .. } => f.write_str("GatewayBody::Origin"),
            Inner::Cut => f.write_str("GatewayBody::Cut"),
            Inner::Generated { data } => f
                .debug_struct("GatewayBody::Generated")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;

    use super::*;
    use crate::deadline::ResponseDeadline;

    use crate::testing::{Frames, Scripted};

    fn scripted(limits: BodyLimits) -> (Frames, Pin<Box<GatewayBody<Scripted>>>) {
        let (tx, body) = Scripted::channel();
        (tx, Box::pin(GatewayBody::origin(body, limits, None, None)))
    }

    fn read_timeout(after: Duration) -> BodyLimits {
        BodyLimits {
            read_timeout: Some(after),
            response_deadline: None,
        }
    }

    fn kind_of(error: &BoxError) -> Option<ProxyErrorKind> {
        error
            .downcast_ref::<ProxyError>()
            .and_then(ProxyError::kind)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_at_the_read_timeout_and_frames_restart_the_clock() {
        let (tx, mut body) = scripted(read_timeout(Duration::from_secs(1)));
        let started = tokio::time::Instant::now();
        tx.send(Ok(Bytes::from_static(b"a"))).unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");

        // Frames 900 ms apart never trip a 1 s limit.
        for _ in 0..3 {
            let sender = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(900)).await;
                sender.send(Ok(Bytes::from_static(b"b"))).unwrap();
            });
            assert!(body.frame().await.unwrap().is_ok());
        }
        assert_eq!(started.elapsed(), Duration::from_millis(2700));

        // Then silence: an error after exactly one second, and the body is over.
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(kind_of(&error), Some(ProxyErrorKind::ConnectionReadTimeout));
        assert_eq!(started.elapsed(), Duration::from_millis(3700));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        drop(tx);
    }

    /// Where a body's clock and watch live, if it has them.
    fn parts_address(body: &GatewayBody<Scripted>) -> Option<*const Parts> {
        match &body.extras {
            Extras::Parts(parts) => Some(parts.address()),
            Extras::None | Extras::ReadTimeout(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bodys_parts_are_used_again_by_the_next_body_and_its_clock_starts_afresh() {
        let (tx, mut body) = scripted(read_timeout(Duration::from_secs(1)));
        // A body that only a read timeout is on takes its parts at its first wait, not before:
        // one whose frames never keep the gateway waiting never takes them.
        assert_eq!(parts_address(&body), None);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        let first = parts_address(&body).expect("a body that waited has its parts");
        // The first body's clock runs out.
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(kind_of(&error), Some(ProxyErrorKind::ConnectionReadTimeout));
        drop(body);
        drop(tx);

        // The next body on this thread gets the same box when it waits: no allocation.
        let (tx, mut body) = scripted(read_timeout(Duration::from_secs(1)));
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        assert_eq!(parts_address(&body), Some(first));
        // Its clock is its own: a frame 900 ms on is within its limit.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            tx.send(Ok(Bytes::from_static(b"a"))).unwrap();
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");

        // A body that nothing times or watches has no parts at all.
        let (_tx, untimed) = scripted(BodyLimits::default());
        assert_eq!(parts_address(&untimed), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_response_deadline_cuts_a_body_that_keeps_trickling() {
        let limits = BodyLimits {
            read_timeout: Some(Duration::from_secs(1)),
            response_deadline: Some(ResponseDeadline::start(Duration::from_secs(2))),
        };
        let (tx, mut body) = scripted(limits);
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if tx.send(Ok(Bytes::from_static(b"."))).is_err() {
                    return;
                }
            }
        });
        let mut frames = 0;
        let error = loop {
            match body.frame().await.unwrap() {
                Ok(_) => frames += 1,
                Err(error) => break error,
            }
        };
        assert_eq!(kind_of(&error), Some(ProxyErrorKind::HttpResponseTimeout));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(frames, 3, "the frames before the deadline went through");
    }

    #[tokio::test(start_paused = true)]
    async fn an_origin_error_passes_as_an_error_and_a_clean_end_as_an_end() {
        let (tx, mut body) = scripted(read_timeout(Duration::from_secs(1)));
        tx.send(Err(std::io::ErrorKind::ConnectionReset.into()))
            .unwrap();
        assert!(body.frame().await.unwrap().is_err());

        let (tx, mut body) = scripted(BodyLimits::default());
        tx.send(Ok(Bytes::from_static(b"all"))).unwrap();
        drop(tx);
        let bytes = body.as_mut().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "all");
    }

    #[tokio::test(start_paused = true)]
    async fn without_limits_a_silent_body_waits() {
        let (tx, mut body) = scripted(BodyLimits::default());
        let waited = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(waited.is_err(), "no limit, no cut");
        drop(tx);
    }

    /// A body of these frames, then its end.
    fn frames(frames: Vec<Frame<Bytes>>) -> impl Body<Data = Bytes, Error = std::io::Error> {
        http_body_util::StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok::<_, std::io::Error>),
        ))
    }

    /// Sends `body` through a copy for `store`, as the layer does for a GET it may store, and
    /// returns what the client read.
    async fn through_a_copy(
        store: &crate::stale::Store,
        body: impl Body<Data = Bytes, Error = std::io::Error>,
    ) -> Bytes {
        let request = http::Request::get("/page")
            .header("host", "site.example")
            .body(())
            .unwrap();
        let captured = store.capture(&request).unwrap();
        let tee = store.on_response(
            &captured,
            http::StatusCode::OK,
            &http::HeaderMap::new(),
            false,
        );
        assert!(tee.is_some(), "the response is admitted");
        let body = GatewayBody::origin(body, BodyLimits::default(), None, tee);
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_copy_is_stored_only_for_a_whole_body_within_the_limit_and_without_trailers() {
        let store = crate::stale::Store::new()
            .default_window(Duration::from_secs(60))
            .max_response_bytes(8);
        let data = |bytes: &'static [u8]| Frame::data(Bytes::from_static(bytes));

        let whole = through_a_copy(&store, frames(vec![data(b"abc"), data(b"def")])).await;
        assert_eq!(whole, "abcdef");
        assert_eq!(store.len(), 1);
        store.clear();

        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "1".parse().unwrap());
        let with_trailers = frames(vec![data(b"abc"), Frame::trailers(trailers)]);
        assert_eq!(through_a_copy(&store, with_trailers).await, "abc");
        assert_eq!(store.len(), 0, "trailers are not stored");

        let long = frames(vec![data(b"12345"), data(b"67890"), data(b"!")]);
        assert_eq!(through_a_copy(&store, long).await, "1234567890!");
        assert_eq!(store.len(), 0, "past the limit");
    }

    #[tokio::test]
    async fn a_generated_body_is_one_frame() {
        let body = GatewayBody::<Scripted>::generated(Bytes::from_static(b"502"));
        assert!(body.is_generated());
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "502");
    }
}
