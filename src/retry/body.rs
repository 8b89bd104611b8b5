//! [`TryCloneBody`]: the request bodies a retry can send again.

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};

/// A request body that can be sent again.
///
/// [`RetryService`](super::RetryService) keeps a copy of the request, made before the first
/// attempt, and sends a fresh copy of it each time it tries again, so the body has to be copied
/// without reading it. Bodies held in memory copy cheaply ([`Bytes`] and [`Full`] share
/// their buffer); a streamed body cannot be copied once it may have been read, so it answers
/// `None` unless it is known to be empty, and its request is sent once.
///
/// Implemented for [`Full<Bytes>`], [`Empty<Bytes>`], [`String`], [`Bytes`], and (with the `axum`
/// feature) `axum::body::Body` when its size hint says it is empty, which is how a GET or DELETE
/// from an axum router arrives. To retry requests with a streamed body, buffer it first (for
/// example into `Full<Bytes>`, with a size limit), then implement this trait for your body type or
/// use one of the types above.
///
/// ```
/// use bytes::Bytes;
/// use gateway_errors::retry::TryCloneBody;
/// use http_body_util::Full;
///
/// let body = Full::new(Bytes::from_static(b"{\"order\":42}"));
/// assert!(body.try_clone().is_some());
///
/// # #[cfg(feature = "axum")] {
/// // An axum body may be a stream: only an empty one is replayed.
/// assert!(axum::body::Body::empty().try_clone().is_some());
/// assert!(axum::body::Body::from("{\"order\":42}").try_clone().is_none());
/// # }
/// ```
pub trait TryCloneBody: Sized {
    /// A body that sends the same bytes as this one, or `None` if it cannot be sent again.
    fn try_clone(&self) -> Option<Self>;
}

impl TryCloneBody for Full<Bytes> {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl TryCloneBody for Empty<Bytes> {
    fn try_clone(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl TryCloneBody for String {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl TryCloneBody for Bytes {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

#[cfg(feature = "axum")]
impl TryCloneBody for axum_core::body::Body {
    fn try_clone(&self) -> Option<Self> {
        use http_body::Body as _;
        let empty = self.is_end_stream() || self.size_hint().exact() == Some(0);
        empty.then(axum_core::body::Body::empty)
    }
}

/// A copy of `request` with a copy of its body, or `None` when the body cannot be copied.
pub(super) fn try_clone<B: TryCloneBody>(request: &Request<B>) -> Option<Request<B>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}
