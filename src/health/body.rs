//! [`HealthBody`]: the response body of [`UpstreamHealth`](super::UpstreamHealth).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

use super::key::AuthorityKey;
use super::record::Record;

pin_project! {
    /// The response body of [`UpstreamHealth`](super::UpstreamHealth): the origin's body,
    /// unchanged, watched for how it ends.
    ///
    /// A body that ends well is the request's success. One that breaks off
    /// (`http_response_incomplete`), or that [`GatewayErrorLayer`](crate::GatewayErrorLayer)
    /// cuts for stalling (`connection_read_timeout`, or `http_response_timeout` when the response
    /// deadline ran out while the gateway waited on the origin), counts as a failure of its
    /// upstream. One that its client stops reading counts as nothing, and so does one cut by the
    /// response deadline when that ran out while the gateway waited on a client that reads
    /// slowly.
    pub struct HealthBody<B, T = AuthorityKey> {
        #[pin]
        inner: B,
        record: Option<Record<T>>,
    }

    impl<B, T> PinnedDrop for HealthBody<B, T> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(record) = this.project().record.take() {
                record.dropped(true);
            }
        }
    }
}

impl<B, T> HealthBody<B, T> {
    pub(crate) fn new(inner: B, record: Option<Record<T>>) -> Self {
        HealthBody { inner, record }
    }

    /// The origin's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B, T> Body for HealthBody<B, T>
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
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                // A server stops polling once `is_end_stream` says the body is done, so its end
                // may never be seen as `None`.
                if this.inner.is_end_stream() {
                    if let Some(record) = this.record.take() {
                        record.ended();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error = error.into();
                if let Some(record) = this.record.take() {
                    record.failed(&*error, true);
                }
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Some(record) = this.record.take() {
                    record.ended();
                }
                Poll::Ready(None)
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

impl<B: fmt::Debug, T> fmt::Debug for HealthBody<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
