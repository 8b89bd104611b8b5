//! [`GatewayBody`]: the origin's body, observed, or a generated one.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::deadline::{BodyClock, BodyLimits};
use crate::error::ProxyError;
use crate::kind::ProxyErrorKind;
use crate::trace::BodyObserver;
use crate::BoxError;

pin_project! {
    /// The response body of [`GatewayError`](crate::GatewayError).
    ///
    /// An origin's body passes through frame by frame, trailers included, unchanged. If it fails
    /// mid-stream, or stalls past the [read timeout](crate::GatewayErrorLayer::upstream_read_timeout)
    /// or the [response deadline](crate::GatewayErrorLayer::response_deadline), the body ends with
    /// an error, which the server answers by breaking the connection (HTTP/1.1) or resetting the
    /// stream (HTTP/2): a client never sees a cut body as a complete one. A timeout's error is a
    /// [`ProxyError`](crate::ProxyError) of kind `connection_read_timeout` (or
    /// `http_response_timeout` for the deadline), so an outer layer can tell what happened; the
    /// span records it too.
    ///
    /// The timer lives inline, so the body is `!Unpin` (as tower-http's `TimeoutBody` is): hyper
    /// and axum pin it themselves; to poll it by hand, pin it first (`std::pin::pin!`, `Box::pin`).
    pub struct GatewayBody<B> {
        #[pin]
        inner: Inner<B>,
        #[pin]
        clock: BodyClock,
        observer: Option<BodyObserver>,
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

impl<B> GatewayBody<B> {
    pub(crate) fn origin(body: B, limits: BodyLimits, observer: Option<BodyObserver>) -> Self {
        GatewayBody {
            inner: Inner::Origin { body },
            clock: BodyClock::new(limits),
            observer,
        }
    }

    pub(crate) fn generated(data: Bytes) -> Self {
        GatewayBody {
            inner: Inner::Generated {
                data: (!data.is_empty()).then_some(data),
            },
            clock: BodyClock::new(BodyLimits::default()),
            observer: None,
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
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            InnerProj::Cut => return Poll::Ready(None),
            InnerProj::Origin { mut body } => match body.as_mut().poll_frame(cx) {
                Poll::Pending => match this.clock.poll_expired(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(timed_out) => timed_out,
                },
                Poll::Ready(Some(Ok(frame))) => {
                    this.clock.frame_arrived();
                    if let Some(observer) = this.observer.as_mut() {
                        observer.forwarded(&frame);
                    }
                    // A server stops polling once `is_end_stream` says the body is done, so the
                    // end may never be seen as `None`.
                    if body.is_end_stream() {
                        if let Some(observer) = this.observer.take() {
                            observer.completed();
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(error))) => {
                    let error = error.into();
                    if let Some(observer) = this.observer.take() {
                        observer.failed(ProxyErrorKind::HttpResponseIncomplete, &*error);
                    }
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    if let Some(observer) = this.observer.take() {
                        observer.completed();
                    }
                    return Poll::Ready(None);
                }
            },
        };
        // Drop the stalled body now: its upstream connection is closed rather than kept waiting.
        this.inner.set(Inner::Cut);
        if let Some(observer) = this.observer.take() {
            observer.failed(timed_out.kind(), &timed_out);
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
