//! [`AdaptiveLimit`]: the settings of the adaptive concurrency limit, as the builder takes them.

use std::time::Duration;

/// The settings of the adaptive concurrency limit: see the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::health::{AdaptiveLimit, UpstreamHealthLayer};
///
/// // The defaults, spelled out.
/// let limit = AdaptiveLimit::new()
///     .initial(20)
///     .max(1_000)
///     .window(Duration::from_millis(100))
///     .tolerance(1.1)
///     .baseline_interval(Duration::from_secs(60))
///     .retry_after(Duration::from_secs(1));
/// let layer = UpstreamHealthLayer::new().adaptive_limit(limit);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    pub(super) initial: u32,
    pub(super) max: u32,
    pub(super) window: Duration,
    pub(super) tolerance: f64,
    pub(super) baseline_interval: Duration,
    pub(super) retry_after: Duration,
    pub(super) max_upstreams: usize,
}

impl Default for AdaptiveLimit {
    fn default() -> Self {
        AdaptiveLimit::new()
    }
}

impl AdaptiveLimit {
    /// The defaults: a limit of 20 to begin with, at most 1,000, windows of 100 ms, a tolerance
    /// of 1.1, the baseline measured again every 60 s, `Retry-After: 1`, 256 upstreams.
    pub fn new() -> Self {
        AdaptiveLimit {
            initial: 20,
            max: 1_000,
            window: Duration::from_millis(100),
            tolerance: 1.1,
            baseline_interval: Duration::from_secs(60),
            retry_after: Duration::from_secs(1),
            max_upstreams: 256,
        }
    }

    /// The limit an upstream starts with (default 20; at least 1, at most [`max`](Self::max)).
    pub fn initial(mut self, limit: u32) -> Self {
        self.initial = limit.max(1);
        self
    }

    /// The highest the limit may rise (default 1,000; at least 1). A cap for an upstream that
    /// stays fast under any load, whose limit would otherwise grow without end.
    pub fn max(mut self, limit: u32) -> Self {
        self.max = limit.max(1);
        self
    }

    /// How long a window of samples lasts (default 100 ms, at least 1 ms): the limit moves once
    /// per window. A window closes only once it holds 4 samples (fewer while the limit is
    /// lower), so an upstream with little traffic is judged on enough of it.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }

    /// How much slower than its baseline the upstream may answer before the limit falls
    /// (default 1.1, at least 1.0): the share of queueing accepted in exchange for keeping the
    /// upstream busy.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = if tolerance.is_nan() {
            1.1
        } else {
            tolerance.clamp(1.0, 100.0)
        };
        self
    }

    /// How often the upstream's baseline latency is measured again (default 60 s), holding the
    /// limit at 1 for two windows. `Duration::MAX` never measures it again.
    pub fn baseline_interval(mut self, interval: Duration) -> Self {
        self.baseline_interval = interval;
        self
    }

    /// The `Retry-After` of a refusal (default 1 s), rounded up to whole seconds when rendered.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// How many upstreams are limited at most (default 256, rounded up to a power of two, at
    /// least 8). An upstream whose group of 8 slots is full is not limited.
    pub fn max_upstreams(mut self, upstreams: usize) -> Self {
        self.max_upstreams = upstreams;
        self
    }
}
