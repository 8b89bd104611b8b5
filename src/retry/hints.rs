//! [`RetryHints`]: what a generated error says about retrying it.

use std::fmt;
use std::sync::Arc;

use http::{Method, StatusCode};

use super::RetryFacts;
use super::after::RetryAfter;
use super::hint::RetryRules;
use crate::kind::ProxyErrorKind;

/// What every generated error says about retrying it, for
/// [`GatewayErrorLayer::retry_hints`](crate::GatewayErrorLayer::retry_hints): which methods are
/// safe to repeat, the rule that decides whether a retry is safe, and the `Retry-After` to send
/// per kind or status.
///
/// [`RetryHints::new`] is the defaults: GET, HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent,
/// the rule is [`RetryFacts::default_rule`] (see the [module docs](crate::retry)), and no
/// `Retry-After` is sent.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::retry::RetryHints;
/// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
/// use http::{Method, StatusCode};
///
/// let hints = RetryHints::new()
///     // This API's custom method is idempotent too.
///     .idempotent_methods([
///         Method::GET,
///         Method::HEAD,
///         Method::PUT,
///         Method::DELETE,
///         Method::from_bytes(b"PURGE")?,
///     ])
///     // A full pool clears in a moment; an unavailable upstream takes longer.
///     .retry_after_for_kind(ProxyErrorKind::ConnectionLimitReached, Duration::from_secs(1))
///     .retry_after_for_status(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(30));
/// let layer = GatewayErrorLayer::new().retry_hints(hints);
/// # let _ = layer;
/// # Ok::<(), http::method::InvalidMethod>(())
/// ```
#[derive(Clone, Default)]
pub struct RetryHints {
    pub(crate) rules: RetryRules,
}

impl RetryHints {
    /// The defaults: GET, HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent, the
    /// [default rule](RetryFacts::default_rule), no `Retry-After`.
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    /// use gateway_errors::retry::RetryHints;
    ///
    /// // The same as not calling `retry_hints` at all.
    /// let layer = GatewayErrorLayer::new().retry_hints(RetryHints::new());
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        RetryHints::default()
    }

    /// The methods whose requests are safe to repeat after they may have reached the origin; it
    /// replaces the default set. Default: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    ///
    /// ```
    /// use gateway_errors::retry::RetryHints;
    /// use http::Method;
    ///
    /// // This API's DELETE is not idempotent (it pops from a queue).
    /// let hints = RetryHints::new().idempotent_methods([Method::GET, Method::HEAD, Method::PUT]);
    /// # let _ = hints;
    /// ```
    pub fn idempotent_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.rules.set_idempotent_methods(methods);
        self
    }

    /// Replaces the rule that decides whether a failed request is safe to retry. Default:
    /// [`RetryFacts::default_rule`].
    ///
    /// ```
    /// use gateway_errors::RequestSent;
    /// use gateway_errors::retry::{RetryFacts, RetryHints};
    ///
    /// // Stricter: only what never left the gateway.
    /// let hints =
    ///     RetryHints::new().rule(|facts: &RetryFacts| facts.request_sent == RequestSent::NotSent);
    /// # let _ = hints;
    /// ```
    pub fn rule<F>(mut self, rule: F) -> Self
    where
        F: Fn(&RetryFacts) -> bool + Send + Sync + 'static,
    {
        self.rules.set_rule(Arc::new(rule));
        self
    }

    /// Sends `Retry-After` on generated errors of this kind (a [`Duration`](std::time::Duration)
    /// or a [`SystemTime`](std::time::SystemTime)). Wins over a setting for the status.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::ProxyErrorKind;
    /// use gateway_errors::retry::RetryHints;
    ///
    /// let hints =
    ///     RetryHints::new().retry_after_for_kind(ProxyErrorKind::ConnectionRefused, Duration::from_secs(5));
    /// # let _ = hints;
    /// ```
    pub fn retry_after_for_kind(
        mut self,
        kind: ProxyErrorKind,
        after: impl Into<RetryAfter>,
    ) -> Self {
        self.rules.set_after_for_kind(kind, after.into());
        self
    }

    /// Sends `Retry-After` on generated errors with this status (a kind's setting wins).
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::retry::RetryHints;
    /// use http::StatusCode;
    ///
    /// let hints =
    ///     RetryHints::new().retry_after_for_status(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(30));
    /// # let _ = hints;
    /// ```
    pub fn retry_after_for_status(
        mut self,
        status: StatusCode,
        after: impl Into<RetryAfter>,
    ) -> Self {
        self.rules.set_after_for_status(status, after.into());
        self
    }
}

impl fmt::Debug for RetryHints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHints").finish_non_exhaustive()
    }
}
