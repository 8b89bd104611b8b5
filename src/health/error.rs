//! [`UpstreamUnavailable`]: the cause of a refusal.

use std::error::Error as StdError;
use std::fmt;

/// Why [`UpstreamHealth`](super::UpstreamHealth) refused a request: its upstream is marked
/// unavailable, and the request was not sent.
///
/// The refusal is a [`ProxyError`](crate::ProxyError) of kind `destination_unavailable` (503,
/// not sent), with the delay until the next probe as its
/// [`retry_after`](crate::ProxyError::retry_after), and this as its source. Look for it in the
/// source chain to tell a refusal from the upstream's own failures:
///
/// ```
/// use gateway_errors::health::UpstreamUnavailable;
///
/// fn was_refused(error: &(dyn std::error::Error + 'static)) -> bool {
///     std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<UpstreamUnavailable>())
/// }
/// ```
///
/// [`RetryLayer`](crate::retry::RetryLayer) does that, and never retries a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamUnavailable {
    // Zero-sized: boxing it as an error's source allocates nothing.
    _private: (),
}

impl UpstreamUnavailable {
    pub(crate) const fn new() -> Self {
        UpstreamUnavailable { _private: () }
    }
}

impl fmt::Display for UpstreamUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream is marked unavailable; the request was not sent to it")
    }
}

impl StdError for UpstreamUnavailable {}
