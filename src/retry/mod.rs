//! Retries: whether a failed request is safe to send again, when, and [`RetryLayer`], the
//! middleware that sends it again.
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
//! extension ([`ProxyError::is_retryable`]) and on the span. [`RetryLayer`] (feature `tower`, on
//! by default) retries on it.
//!
//! # Where the pieces go
//!
//! ```text
//! RetryLayer               sends the request again when the layer inside says so
//!   GatewayErrorLayer      classifies each attempt; decides, with the retry policy, whether
//!                          it is the last; renders only the last one
//!     route                points the request at its upstream (one upstream per path, host...)
//!       UpstreamHealthLayer  counts every attempt against the upstream it really went to
//!         client           hyper-util, reqwest, ...
//! ```
//!
//! `RetryLayer` goes outside `GatewayErrorLayer`: the layer sees every attempt and turns each
//! failure into an error with its retry hint. `UpstreamHealthLayer` goes inside, next to the
//! client: every attempt is a real request to an upstream and counts as one there, and a router
//! between the two may send a retry to another upstream. Placed the other way round, each of them
//! compiles and does nothing; each says so once, in a `WARN` event (target `gateway_errors`).
//!
//! # One request, however many attempts
//!
//! A retry is invisible to whoever watches the gateway from outside, except where it says so:
//!
//! - **One span.** The retry service puts a small shared context in the extensions of every
//!   attempt (the first included); the layer makes the request's `gateway.request` span at the
//!   first attempt and reuses it for the others. An attempt that
//!   will be retried is a `DEBUG` event in that span ("retrying the upstream request", with
//!   `http.request.resend_count`, `error.type` and `gateway.wait_ms`), and nothing else: no
//!   `WARN`, no field on the span, no metric. The last attempt's answer is recorded as any
//!   answer is, once, and the span gets `http.request.resend_count`, the number of resends,
//!   when there were any (OpenTelemetry's attribute of that name).
//! - **One deadline.** The layer's upstream timeout and response deadline count from the start of
//!   the first attempt: a later attempt gets what is left of them, and a retry whose wait would
//!   end after the sooner of them is not made. An upstream timeout of 5 s with 3 attempts keeps a
//!   client 5 s at most, not 15. The timeout error of a later attempt names the time that attempt
//!   had.
//! - **One duration.** `http.server.request.duration` runs from the first attempt's start.
//! - **The retry before the stale copy.** With a [stale copy store](crate::stale), a failure that
//!   will be retried is not answered from a copy: a fresh answer is better, and the copy still
//!   answers the last attempt's failure.
//!
//! The layer decides, because only the layer knows everything the decision needs at the moment
//! it is needed: the classified error and its hint, its deadline, its span. The retry service
//! only counts, waits and sends the copy. The decision travels back in the shared context, not in
//! the answer, so nothing between the two can lose it, and an answer that will be dropped is not
//! rendered at all. A later attempt's limits are what is left of them, rather than limits moved
//! back to the first attempt's start: the layer's other clocks (the upload's, which stops while
//! the gateway waits on a slow client) keep counting from the attempt they watch. A request that
//! passes the layer without a retry service outside pays for none of this: one lookup in its
//! (usually empty) extensions.
//!
//! The body the layer hands inside ([`UploadBody`](crate::body::UploadBody)) cannot be sent
//! again, so a `RetryLayer` directly inside `GatewayErrorLayer` does not compile; one that sees
//! the caller's own body there (a router that unwraps it) compiles, forwards, and warns.
//!
//! # When: `Retry-After`
//!
//! `Retry-After` is sent on generated errors where it is configured, per status or per error type
//! (a type's setting wins), as seconds or, given a `SystemTime`, as an HTTP-date; the health
//! layer's refusals carry their own. The body states the same delay (`retry_after`), and a gRPC
//! caller gets it as `grpc-retry-pushback-ms`.
//!
//! ```
//! use std::time::Duration;
//!
//! use gateway_errors::retry::RetryHints;
//! use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
//! use http::StatusCode;
//!
//! let hints = RetryHints::new()
//!     .retry_after_for_status(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5))
//!     .retry_after_for_kind(ProxyErrorKind::ConnectionRefused, Duration::from_secs(2));
//! let layer = GatewayErrorLayer::new().retry_hints(hints);
//! ```
//!
//! An origin's own `Retry-After` is never touched: a forwarded response keeps it, and when the
//! layer replaces an origin error's body ([`failure_statuses`](crate::GatewayErrorLayer::failure_statuses)),
//! the header stays the origin's and the generated body states the same delay.
//!
//! [`ProxyError`]: crate::ProxyError
//! [`ProxyError::is_retryable`]: crate::ProxyError::is_retryable

pub(crate) mod after;
pub(crate) mod attempt;
#[cfg(feature = "tower")]
mod body;
#[cfg(feature = "tower")]
pub mod future;
pub(crate) mod hint;
pub(crate) mod hints;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "tower")]
mod policy;
#[cfg(feature = "tower")]
mod service;

use http::HeaderName;

pub use after::RetryAfter;
#[cfg(feature = "tower")]
pub use body::TryCloneBody;
pub use hints::RetryHints;
#[cfg(feature = "tower")]
pub use layer::RetryLayer;
#[cfg(feature = "tower")]
pub use policy::RetryPolicy;
#[cfg(feature = "tower")]
pub use service::RetryService;

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
