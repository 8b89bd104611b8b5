//! Classification: from an inner service's error to an RFC 9209 error type.
//!
//! The layer asks each classifier added with
//! [`GatewayErrorLayer::classifier`](crate::GatewayErrorLayer::classifier) in the order they were
//! added, then the [`DefaultClassifier`]. The first answer wins. An error nobody recognises
//! becomes a 502 without an error type: the layer never guesses a type it cannot stand behind.
//! [`UpstreamHealthLayer::classifier`](crate::health::UpstreamHealthLayer::classifier) takes the
//! same classifiers, so that the health of an upstream is judged as its answers are.
//!
//! # Adding a classifier
//!
//! A classifier is a closure (or a [`Classify`]) that recognises the errors it knows and answers
//! `None` for the rest. Say whether the request was sent: a failure before it was
//! ([`RequestSent::NotSent`](crate::RequestSent::NotSent)) is safe to retry for any method.
//!
//! ```
//! use std::error::Error;
//!
//! use gateway_errors::classify::Classification;
//! use gateway_errors::{GatewayErrorLayer, ProxyErrorKind, RequestSent};
//!
//! /// The error of a service discovery client: no instance of the upstream is registered.
//! #[derive(Debug)]
//! struct NoInstances;
//! impl std::fmt::Display for NoInstances {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         f.write_str("no healthy instance registered")
//!     }
//! }
//! impl Error for NoInstances {}
//!
//! let layer = GatewayErrorLayer::new().classifier(|error: &(dyn Error + 'static)| {
//!     error.is::<NoInstances>().then(|| {
//!         Classification::new(ProxyErrorKind::DestinationUnavailable)
//!             .with_request_sent(RequestSent::NotSent)
//!     })
//! });
//! ```
//!
//! An inner service, or an axum handler, that knows exactly what went wrong can also return a
//! [`ProxyError`] itself; the layer renders it like any other.
//!
//! # TLS to the upstream (feature `rustls`)
//!
//! The default classifier finds a `rustls::Error` wherever it sits in the chain (hyper-rustls,
//! tokio-rustls, reqwest with rustls) and names it: a certificate the gateway does not accept
//! (expired, not yet valid, unknown issuer, another host name) is `tls_certificate_error`; an alert
//! from the upstream (it wants a client certificate, no protocol in common) is
//! `tls_alert_received`, with `alert-id` and `alert-message` in `Proxy-Status`; anything else (a
//! plain-HTTP port answering the handshake) is `tls_protocol_error`. The body never shows the
//! certificate or the host; the reason goes to the span's event, and to `Proxy-Status`'s `details`
//! only with [`proxy_status_details(true)`](crate::GatewayErrorLayer::proxy_status_details).
//!
//! ```text
//! HTTP/1.1 502 Bad Gateway
//! content-type: application/problem+json
//! cache-control: no-store
//! proxy-status: edge-1; error=tls_certificate_error
//!
//! {"type":"about:blank","title":"Bad Gateway","status":502,"detail":"The upstream server's certificate was not accepted.","error_type":"tls_certificate_error","retryable":true}
//! ```
//!
//! `retryable: true` means the request never left the gateway, so sending it again is safe; it
//! will not help until the certificate is replaced, and the HTML and text pages say so. All three
//! are the upstream's failures, counted by the health layer like a refused connection. The example
//! gateway reaches `https://` upstreams with `--features rustls` (webpki roots, HTTP/2 by ALPN where
//! offered, `--upstream-ca PEM_FILE` to trust a private CA).

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
