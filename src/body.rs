//! [`GatewayBody`]: the origin's body, observed, or a generated one.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::trace::BodyObserver;
use crate::BoxError;

pin_project! {
    /// The response body of [`GatewayError`](crate::GatewayError).
    ///
    /// An origin's body passes through frame by frame, trailers included, unchanged. If it fails
    /// mid-stream, the error goes on to the server, which then breaks the connection (HTTP/1.1) or
    /// resets the stream (HTTP/2): a client never sees a cut body as a complete one. The failure is
    /// recorded on the request's span as `http_response_incomplete`.
    pub struct GatewayBody<B> {
        #[pin]
        inner: Inner<B>,
        observer: Option<BodyObserver>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Origin { #[pin] body: B },
        Generated { data: Option<Bytes> },
    }
}

impl<B> GatewayBody<B> {
    pub(crate) fn origin(body: B, observer: Option<BodyObserver>) -> Self {
        GatewayBody {
            inner: Inner::Origin { body },
            observer,
        }
    }

    pub(crate) fn generated(data: Bytes) -> Self {
        GatewayBody {
            inner: Inner::Generated {
                data: (!data.is_empty()).then_some(data),
            },
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
        let this = self.project();
        match this.inner.project() {
            InnerProj::Generated { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            InnerProj::Origin { mut body } => match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Err(error))) => {
                    let error = error.into();
                    if let Some(observer) = this.observer.take() {
                        observer.failed(&*error);
                    }
                    Poll::Ready(Some(Err(error)))
                }
                Poll::Ready(None) => {
                    if let Some(observer) = this.observer.take() {
                        observer.completed();
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // A server stops polling once `is_end_stream` says the body is done, so the
                    // end may never be seen as `None`.
                    if body.is_end_stream() {
                        if let Some(observer) = this.observer.take() {
                            observer.completed();
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other.map_err(Into::into),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Origin { body } => body.is_end_stream(),
            Inner::Generated { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Origin { body } => body.size_hint(),
            Inner::Generated { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> fmt::Debug for GatewayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Origin { .. } => f.write_str("GatewayBody::Origin"),
            Inner::Generated { data } => f
                .debug_struct("GatewayBody::Generated")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}
