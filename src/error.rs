//! [`ProxyError`]: one classified upstream failure.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use http::{Response, StatusCode};

use crate::classify::Classification;
use crate::headers::RetryAfter;
use crate::kind::{Phase, ProxyErrorKind};

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
#[derive(Clone)]
pub struct ProxyError {
    classification: Classification,
    retryable: bool,
    retry_after: Option<RetryAfter>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl ProxyError {
    /// A failure of a known kind, with the kind's status and phase.
    pub fn new(kind: ProxyErrorKind) -> Self {
        ProxyError::from_classification(Classification::new(kind))
    }

    /// A failure classified by hand.
    pub fn from_classification(classification: Classification) -> Self {
        ProxyError {
            classification,
            retryable: classification.phase() == Phase::NotSent,
            retry_after: None,
            source: None,
        }
    }

    /// Classifies `error` with the [`DefaultClassifier`](crate::DefaultClassifier) and keeps it as
    /// the source.
    pub fn from_error<E>(error: E) -> Self
    where
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        let error = error.into();
        let classification = crate::classify::classify(&[], &*error);
        ProxyError::from_classification(classification).with_source_boxed(error)
    }

    /// Keeps `source` as the cause, for spans and logs.
    pub fn with_source<E>(self, source: E) -> Self
    where
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        self.with_source_boxed(source.into())
    }

    pub(crate) fn with_source_boxed(mut self, source: Box<dyn StdError + Send + Sync>) -> Self {
        self.source = Some(Arc::from(source));
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
    pub fn status(&self) -> StatusCode {
        self.classification.status()
    }

    /// Whether the request may have reached the origin.
    pub fn phase(&self) -> Phase {
        self.classification.phase()
    }

    /// The full classification.
    pub fn classification(&self) -> Classification {
        self.classification
    }

    /// Whether sending the request again is safe: it never left the gateway, its method is
    /// idempotent, or it carries an `Idempotency-Key`.
    ///
    /// Set by the layer from the request; on an error made by hand it is true only for
    /// [`Phase::NotSent`].
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The advised delay before a retry, where one is configured.
    pub fn retry_after(&self) -> Option<RetryAfter> {
        self.retry_after
    }

    /// A response with this error's status and an empty body, marked for the layer to render.
    ///
    /// Without the layer around it, a client gets the bare status, which is still the right one.
    pub fn into_response<B: Default>(self) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        response.extensions_mut().insert(PendingProxyError(self));
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
            .field("phase", &self.phase())
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
        ProxyError::into_response(self)
    }
}

/// Displays an error and every `source()` below it: `a: b: c`. For spans and logs.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        let mut depth = 0;
        while let Some(err) = next {
            write!(f, ": {err}")?;
            depth += 1;
            if depth == 32 {
                return f.write_str(": ...");
            }
            next = err.source();
        }
        Ok(())
    }
}
