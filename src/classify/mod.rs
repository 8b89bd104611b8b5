//! Classification: from an inner service's error to an RFC 9209 error type.
//!
//! The layer asks each classifier added with
//! [`GatewayErrorLayer::classifier`](crate::GatewayErrorLayer::classifier) in the order they were
//! added, then the [`DefaultClassifier`]. The first answer wins. An error nobody recognises
//! becomes a 502 without an error type: the layer never guesses a type it cannot stand behind.

pub(crate) mod classification;
pub(crate) mod default;
#[cfg(feature = "rustls")]
mod tls;

use std::error::Error as StdError;
use std::sync::Arc;

pub use classification::Classification;
pub use default::DefaultClassifier;

use crate::error::ProxyError;

/// Decides what an inner service's error means.
///
/// Return `None` to leave the error to the next classifier. Closures of the shape
/// `Fn(&(dyn Error + 'static)) -> Option<T>` where `T: Into<Classification>` (a
/// [`ProxyErrorKind`](crate::ProxyErrorKind) or a [`Classification`]) implement this trait.
///
/// ```
/// use std::error::Error;
/// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
///
/// #[derive(Debug)]
/// struct PolicyRefused;
/// impl std::fmt::Display for PolicyRefused {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("refused by policy")
///     }
/// }
/// impl Error for PolicyRefused {}
///
/// let layer = GatewayErrorLayer::new().classifier(|error: &(dyn Error + 'static)| {
///     error.is::<PolicyRefused>().then_some(ProxyErrorKind::HttpRequestDenied)
/// });
/// # let _ = layer;
/// ```
pub trait Classify: Send + Sync + 'static {
    /// Classifies `error`, the error the inner service returned (not one of its sources: walk
    /// [`Error::source`](std::error::Error::source) yourself where that matters).
    fn classify(&self, error: &(dyn StdError + 'static)) -> Option<Classification>;
}

impl<F, T> Classify for F
where
    F: Fn(&(dyn StdError + 'static)) -> Option<T> + Send + Sync + 'static,
    T: Into<Classification>,
{
    fn classify(&self, error: &(dyn StdError + 'static)) -> Option<Classification> {
        self(error).map(Into::into)
    }
}

/// Runs the user's classifiers, then the default one.
pub(crate) fn classify(
    classifiers: &[Arc<dyn Classify>],
    error: &(dyn StdError + 'static),
) -> Classification {
    classifiers
        .iter()
        .find_map(|c| c.classify(error))
        .or_else(|| DefaultClassifier.classify(error))
        .unwrap_or(Classification::unrecognized())
}

// Here rather than beside the walk: the walk recognises a `ProxyError` in the chain, and
// `ProxyError::from_error` runs the walk, so `error` uses `default` and only this module uses both.
impl Classify for DefaultClassifier {
    fn classify(&self, error: &(dyn StdError + 'static)) -> Option<Classification> {
        DefaultClassifier::walk(error, ProxyError::carried)
    }
}
