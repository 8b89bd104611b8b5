//! A refusal of the adaptive limit: [`LimitReached`], the source of the error a client is
//! answered with, and what the table tells the service.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Why [`UpstreamHealth`](crate::health::UpstreamHealth) refused a request: as many requests as the
/// upstream's adaptive concurrency limit allows were already in flight, and the request was not
/// sent.
///
/// The refusal is a [`ProxyError`](crate::ProxyError) of kind `connection_limit_reached` (503,
/// not sent) with this as its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReached {
    // Zero-sized: boxing it as an error's source allocates nothing.
    _private: (),
}

impl LimitReached {
    pub(crate) const fn new() -> Self {
        LimitReached { _private: () }
    }
}

impl fmt::Display for LimitReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream's concurrency limit is reached; the request was not sent to it")
    }
}

impl StdError for LimitReached {}

/// A refusal: the limit that refused.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) limit: u32,
    pub(crate) retry_after: Duration,
}
