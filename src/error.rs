//! [`ProxyError`]: one classified upstream failure, and the other error types of the crate.

use std::error::Error as StdError;
use std::fmt;

use http::{Response, StatusCode};

use crate::classify::classification::Classification;
use crate::classify::default::{DefaultClassifier, MAX_CHAIN_DEPTH};
use crate::fault::Fault;
use crate::kind::{ProxyErrorKind, RequestSent};
use crate::retry::after::RetryAfter;
pub use crate::upload::UploadError;

pub use crate::kind::UnknownProxyErrorKind;

/// A classified upstream failure.
///
/// The layer puts one in the extensions of every response it generates, so that an outer retry
/// policy, logger or metrics layer can read the decision instead of guessing from the status:
///
/// ```
/// use gateway_errors::ProxyError;
/// # fn inspect(response: http::Response<()>) {
/// if let Some(error) = response.extensions().get::<ProxyError>() {
///     println!("{:?} {} retryable={}", error.kind(), error.status(), error.is_retryable());
/// }
/// # }
/// ```
///
/// An axum handler that proxies by hand returns one to have the layer around the router render the
/// error exactly as it renders an inner service's error (this needs the `axum` feature, on by
/// default):
///
/// ```
/// use gateway_errors::{ProxyError, ProxyErrorKind};
///
/// async fn handler() -> Result<String, ProxyError> {
///     let upstream_answer: Result<String, std::io::Error> =
///         Err(std::io::ErrorKind::ConnectionRefused.into());
///     upstream_answer.map_err(ProxyError::from_error)
/// }
/// ```
///
/// Its [`source`](std::error::Error::source) is the original error, for logs and spans only: no part
/// of it is ever written to a response.
///
/// It is `Clone`, as response extensions require, but errors in general are not: a clone keeps the
/// classification and the messages of the whole source chain, while the original error (the one to
/// downcast) stays with the value the layer inserted. Owning the error in a `Box` rather than an
/// `Arc` saves an allocation on every generated error; clones are rare.
///
/// ```
/// use gateway_errors::{ProxyError, ProxyErrorKind};
/// use std::error::Error;
///
/// let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
/// let error = ProxyError::new(ProxyErrorKind::ConnectionRefused).with_source(refused);
/// assert!(error.source().unwrap().is::<std::io::Error>());
///
/// let copy = error.clone();
/// assert_eq!(copy.kind(), Some(ProxyErrorKind::ConnectionRefused));
/// assert_eq!(copy.source().unwrap().to_string(), "refused");
/// ```
pub struct ProxyError {
    classification: Classification,
    retryable: bool,
    retry_after: Option<RetryAfter>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Clone for ProxyError {
    fn clone(&self) -> Self {
        ProxyError {
            classification: self.classification,
            retryable: self.retryable,
            retry_after: self.retry_after,
            source: self.source.as_deref().map(|source| {
                let copy: Box<dyn StdError + Send + Sync> = Box::new(CopiedError::of(source));
                copy
            }),
        }
    }
}

/// The messages of an error chain, copied when a [`ProxyError`] is cloned.
#[derive(Debug)]
struct CopiedError {
    message: String,
    source: Option<Box<CopiedError>>,
}

impl CopiedError {
    /// The messages of `error` and of its sources, as far as [`chain`] goes; a chain cut there
    /// ends with `...`.
    fn of(error: &(dyn StdError + 'static)) -> Self {
        let levels: Vec<&(dyn StdError + 'static)> = chain(error).collect();
        let cut = levels
            .last()
            .and_then(|last| last.source())
            .map(|_| CopiedError {
                message: "...".to_owned(),
                source: None,
            });
        levels
            .iter()
            .rev()
            .fold(cut, |below, error| {
                Some(CopiedError {
                    message: error.to_string(),
                    source: below.map(Box::new),
                })
            })
            .expect("a chain has at least its first error")
    }
}

impl fmt::Display for CopiedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for CopiedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl ProxyError {
    /// A failure of a known kind, with the kind's status and its [`RequestSent`].
    pub fn new(kind: ProxyErrorKind) -> Self {
        ProxyError::from_classification(Classification::new(kind))
    }

    /// A failure classified by hand.
    pub fn from_classification(classification: Classification) -> Self {
        ProxyError {
            classification,
            retryable: classification.request_sent() == RequestSent::NotSent,
            retry_after: None,
            source: None,
        }
    }

    /// Classifies `error` with the [`DefaultClassifier`] and keeps it as the source.
    ///
    /// ```
    /// use gateway_errors::{ProxyError, ProxyErrorKind};
    ///
    /// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let error = ProxyError::from_error(refused);
    /// assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionRefused));
    /// ```
    pub fn from_error<E>(error: E) -> Self
    where
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let error = error.into();
        let classification = DefaultClassifier::walk(&*error, ProxyError::carried)
            .unwrap_or(Classification::unrecognized());
        ProxyError::from_classification(classification).with_source_boxed(error)
    }

    /// The classification `error` carries, if it is a `ProxyError`: an inner service that knows
    /// exactly what went wrong says so with one, and the default classifier takes its word.
    pub(crate) fn carried(error: &(dyn StdError + 'static)) -> Option<Classification> {
        error
            .downcast_ref::<ProxyError>()
            .map(ProxyError::classification)
    }

    /// Keeps `source` as the cause, for spans and logs.
    pub fn with_source<E>(self, source: E) -> Self
    where
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.with_source_boxed(source.into())
    }

    pub(crate) fn with_source_boxed(mut self, source: Box<dyn StdError + Send + Sync>) -> Self {
        self.source = Some(source);
        self
    }

    pub(crate) fn with_retry_hint(mut self, retryable: bool, after: Option<RetryAfter>) -> Self {
        self.retryable = retryable;
        self.retry_after = after;
        self
    }

    /// The RFC 9209 kind, or `None` for an error no classifier recognised.
    pub fn kind(&self) -> Option<ProxyErrorKind> {
        self.classification.kind()
    }

    /// The status of the generated response.
    ///
    /// A gRPC caller's response is HTTP 200 whatever this says, with the error in `grpc-status`
    /// (see the [crate docs](crate#grpc-callers)); this stays the status an HTTP client would
    /// have got.
    pub fn status(&self) -> StatusCode {
        self.classification.status()
    }

    /// Whether the request may have reached the origin.
    pub fn request_sent(&self) -> RequestSent {
        self.classification.request_sent()
    }

    /// Whose fault the failure is (see [`fault`](crate::fault)).
    pub fn fault(&self) -> Fault {
        self.classification.fault()
    }

    /// The full classification.
    pub fn classification(&self) -> Classification {
        self.classification
    }

    /// Whether sending the request again is safe: it never left the gateway, its method is
    /// idempotent, or it carries an `Idempotency-Key`.
    ///
    /// Set by the layer from the request; on an error made by hand it is true only for
    /// [`RequestSent::NotSent`].
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The advised delay before a retry, where one is known: configured with
    /// [`retry_after_for_kind`](crate::retry::RetryHints::retry_after_for_kind), or set on the
    /// error by the service that made it ([`with_retry_after`](ProxyError::with_retry_after)).
    pub fn retry_after(&self) -> Option<RetryAfter> {
        self.retry_after
    }

    /// Advises a delay before a retry: the layer sends it as `Retry-After` (and to a gRPC caller
    /// as `grpc-retry-pushback-ms`), in place of any delay its configuration names for the
    /// error's kind or status. For a service that knows when to come back, such as one that has
    /// marked its upstream unavailable ([`UpstreamHealthLayer`](crate::health::UpstreamHealthLayer)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::{ProxyError, ProxyErrorKind};
    /// use gateway_errors::retry::RetryAfter;
    ///
    /// let error = ProxyError::new(ProxyErrorKind::DestinationUnavailable)
    ///     .with_retry_after(Duration::from_secs(10));
    /// assert_eq!(error.retry_after(), Some(RetryAfter::Delay(Duration::from_secs(10))));
    /// ```
    pub fn with_retry_after(mut self, after: impl Into<RetryAfter>) -> Self {
        self.retry_after = Some(after.into());
        self
    }
}

/// A response with the error's status and an empty body, marked for the layer to render: what
/// a handler returns to have [`GatewayErrorLayer`](crate::GatewayErrorLayer) answer with the
/// error. Without the layer around it, a client gets the bare status, which is still the right
/// one. (With the `axum` feature, `IntoResponse` does the same.) The layer looks for the mark
/// on a response with an error status only: one whose status was changed to a success passes
/// as it is.
///
/// ```
/// use gateway_errors::{ProxyError, ProxyErrorKind};
/// use http::{Response, StatusCode};
///
/// let response: Response<String> = ProxyError::new(ProxyErrorKind::ConnectionRefused).into();
/// assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
/// ```
impl<B: Default> From<ProxyError> for Response<B> {
    fn from(error: ProxyError) -> Self {
        let mut response = Response::new(B::default());
        *response.status_mut() = error.status();
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        response.extensions_mut().insert(PendingProxyError(error));
        response
    }
}

/// The mark on a handler's response that asks the layer to render the error. A separate type from
/// [`ProxyError`] so that an outer layer does not render again what an inner one already rendered.
#[derive(Clone)]
pub(crate) struct PendingProxyError(pub(crate) ProxyError);

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyError")
            .field("kind", &self.kind())
            .field("status", &self.status())
            .field("request_sent", &self.request_sent())
            .field("retryable", &self.retryable)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Some(kind) => write!(f, "upstream request failed: {kind}"),
            None => f.write_str("upstream request failed"),
        }
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<ProxyErrorKind> for ProxyError {
    fn from(kind: ProxyErrorKind) -> Self {
        ProxyError::new(kind)
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for ProxyError {
    fn into_response(self) -> axum_core::response::Response {
        self.into()
    }
}

/// `error`, then its sources, at most [`MAX_CHAIN_DEPTH`] of them.
pub(crate) fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> + Clone {
    std::iter::successors(Some(error), |&error| error.source()).take(MAX_CHAIN_DEPTH + 1)
}

/// Displays an error and the sources below it: `a: b: c`, ending in `: ...` where [`chain`]
/// stops short of the end. For spans and logs.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0;
        for (level, error) in chain(self.0).enumerate() {
            if level > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{error}")?;
            last = error;
        }
        if last.source().is_some() {
            f.write_str(": ...")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::ProxyErrorKind;

    /// An error whose `source()` is itself: a chain that never ends.
    #[derive(Debug)]
    struct Looping;

    impl fmt::Display for Looping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("loop")
        }
    }

    impl StdError for Looping {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self)
        }
    }

    fn chain_of(error: &(dyn StdError + 'static)) -> Vec<String> {
        let mut messages = Vec::new();
        let mut next = Some(error);
        while let Some(error) = next {
            messages.push(error.to_string());
            next = error.source();
            assert!(messages.len() < 100, "the copied chain must end");
        }
        messages
    }

    #[test]
    fn a_clone_keeps_the_classification_and_the_chain_text() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = ErrorWithSource("connect failed", inner);
        let error = ProxyError::new(ProxyErrorKind::ConnectionRefused)
            .with_source(outer)
            .with_retry_hint(
                true,
                Some(RetryAfter::Delay(std::time::Duration::from_secs(3))),
            );
        let copy = error.clone();
        assert_eq!(copy.kind(), error.kind());
        assert_eq!(copy.status(), error.status());
        assert!(copy.is_retryable());
        assert_eq!(copy.retry_after(), error.retry_after());
        assert_eq!(
            chain_of(&copy),
            chain_of(&error),
            "the same messages, level by level"
        );
        assert_eq!(
            chain_of(&copy),
            [
                "upstream request failed: connection_refused",
                "connect failed",
                "refused"
            ]
        );
    }

    #[test]
    fn a_clone_of_a_looping_chain_ends() {
        let error = ProxyError::new(ProxyErrorKind::ConnectionRefused).with_source(Looping);
        // The error itself, then the source chain as far as it is read, then the cut.
        let chain = chain_of(&error.clone());
        assert_eq!(chain.len(), 1 + (MAX_CHAIN_DEPTH + 1) + 1);
        assert_eq!(chain.last().map(String::as_str), Some("..."));
        let shown = ErrorChain(&error).to_string();
        assert!(shown.ends_with("loop: loop: ..."), "{shown}");
    }

    #[derive(Debug)]
    struct ErrorWithSource(&'static str, std::io::Error);

    impl fmt::Display for ErrorWithSource {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for ErrorWithSource {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.1)
        }
    }
}
