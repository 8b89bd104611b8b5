//! What the builder sets for the breaker, and the arithmetic of the open time.

use std::sync::Arc;
use std::time::Duration;

use crate::classify::Classify;
use crate::config::StatusSet;
use crate::health::attempt::Attempt;
use crate::health::clock::nanos;
use crate::health::limit::AdaptiveLimit;
use crate::random::random_unit;

/// The rule that decides which attempts are failures.
pub(crate) type FailureRule = Arc<dyn Fn(&Attempt<'_>) -> bool + Send + Sync>;

/// A failure ratio over a sliding window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RatioRule {
    pub(crate) ratio: f64,
    pub(crate) window: Duration,
    pub(crate) min_requests: u32,
}

/// What the builder sets.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) consecutive_failures: u32,
    pub(crate) ratio: Option<RatioRule>,
    pub(crate) open_time: Duration,
    pub(crate) max_open_time: Duration,
    pub(crate) jitter: f64,
    pub(crate) probe_timeout: Duration,
    pub(crate) forget_after: Duration,
    pub(crate) max_upstreams: usize,
    pub(crate) failure_statuses: StatusSet,
    pub(crate) rule: Option<FailureRule>,
    /// Asked before the default classifier for the kind of an error the rule reads.
    pub(crate) classifiers: Vec<Arc<dyn Classify>>,
    pub(crate) forward: bool,
    /// The adaptive concurrency limit, if one is set.
    pub(crate) limit: Option<AdaptiveLimit>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::HealthMetrics>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consecutive_failures: 5,
            ratio: None,
            open_time: Duration::from_secs(10),
            max_open_time: Duration::from_secs(300),
            jitter: 0.1,
            probe_timeout: Duration::from_secs(30),
            forget_after: Duration::from_secs(60),
            max_upstreams: 1024,
            failure_statuses: StatusSet::default(),
            rule: None,
            classifiers: Vec::new(),
            forward: false,
            limit: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl Settings {
    /// Whether `attempt` counts as a failure of the upstream.
    pub(crate) fn is_failure(&self, attempt: &Attempt<'_>) -> bool {
        if let Some(status) = attempt.status {
            if self.failure_statuses.contains(status) {
                return true;
            }
        }
        match &self.rule {
            Some(rule) => rule(attempt),
            None => attempt.counts_by_default(),
        }
    }

    /// How long the upstream stays open after its `trips`-th trip in a row: the open time times
    /// `trips`, at most the maximum, less a random share of up to `jitter` of it.
    ///
    /// Counted in whole nanoseconds, as the table keeps times: any setting, `Duration::MAX`
    /// included, gives a time (at most `u64::MAX` nanoseconds, some 584 years) and never a panic
    /// (`Duration::mul_f64` would panic on a product past `Duration::MAX`).
    pub(super) fn open_for(&self, trips: u32) -> Duration {
        let full = nanos(
            self.open_time
                .saturating_mul(trips.max(1))
                .min(self.max_open_time),
        );
        // A float-to-integer `as` saturates (and takes NaN to 0); the cut is at most `full`.
        let cut = (full as f64 * (self.jitter * random_unit()).clamp(0.0, 1.0)) as u64;
        Duration::from_nanos(full - cut.min(full))
    }

    /// How long a key's failures are remembered without a new one.
    pub(super) fn memory(&self) -> Duration {
        let window = self.ratio.map_or(Duration::ZERO, |ratio| ratio.window);
        self.forget_after.max(window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_shortens_the_open_time() {
        let settings = Settings {
            jitter: 0.2,
            ..Settings::default()
        };
        let times: Vec<Duration> = (0..200).map(|_| settings.open_for(3)).collect();
        for time in &times {
            assert!(*time > Duration::from_secs(24) && *time <= Duration::from_secs(30));
        }
        assert!(times.iter().any(|t| *t != times[0]), "jitter never varied");
        let capped = Settings {
            jitter: 0.0,
            ..Settings::default()
        };
        assert_eq!(capped.open_for(1000), Duration::from_secs(300));
    }
}
