//! Retries: whether a failed request is safe to send again, when, and a ready
//! `tower::retry::Policy` that acts on it.
//!
//! RFC 9110 §9.2.2: a proxy "MUST NOT automatically retry non-idempotent requests". What the layer
//! knows and no client can is whether the request ever left the gateway. The default rule:
//!
//! - a failure before the request was sent ([`RequestSent::NotSent`]) is safe to retry for every method;
//! - after it may have reached the origin, only an idempotent method (GET, HEAD, OPTIONS, TRACE,
//!   PUT, DELETE) or a request with a valid [`Idempotency-Key`](IDEMPOTENCY_KEY) is;
//! - a forwarding loop (`proxy_loop_detected`) never is: it was not sent, but another attempt
//!   would loop again.
//!
//! Every generated error carries the hint: in its body (`retryable`), in the [`ProxyError`]
//! extension ([`ProxyError::is_retryable`]) and on the span. [`RetryPolicy`] (feature `tower`, on
//! by default) retries on it.
//!
//! [`ProxyError`]: crate::ProxyError
//! [`ProxyError::is_retryable`]: crate::ProxyError::is_retryable

pub(crate) mod after;
pub(crate) mod hint;
pub(crate) mod hints;
#[cfg(feature = "tower")]
mod policy;

use http::HeaderName;

pub use after::RetryAfter;
pub use hints::RetryHints;
#[cfg(feature = "tower")]
pub use policy::{ReplayBody, RetryDelay, RetryPolicy};

use crate::kind::{ProxyErrorKind, RequestSent};

/// The `Idempotency-Key` header name (draft-ietf-httpapi-idempotency-key-header).
///
/// A request counts as carrying one when the field is exactly one Structured Field Item (RFC
/// 9651) whose value is a non-empty String, such as
/// `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`, parameters allowed. Anything else
/// (a bare token, two keys, a malformed parameter) is no key: a request is never taken for
/// one that may safely be repeated on the strength of a value that does not parse.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What the retry rule may look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryFacts {
    /// Whether the request may have reached the origin.
    pub request_sent: RequestSent,
    /// The kind of the failure, if recognised.
    pub kind: Option<ProxyErrorKind>,
    /// Whether the request's method is in the idempotent set.
    pub idempotent_method: bool,
    /// Whether the request carried a valid `Idempotency-Key`.
    pub idempotency_key: bool,
}

impl RetryFacts {
    /// The default rule: not sent, or an idempotent method, or an idempotency key; never a
    /// forwarding loop (`proxy_loop_detected`), which the next attempt would run into again.
    pub fn default_rule(&self) -> bool {
        if self.kind == Some(ProxyErrorKind::ProxyLoopDetected) {
            return false;
        }
        self.request_sent == RequestSent::NotSent || self.idempotent_method || self.idempotency_key
    }
}
