//! [`RetryPolicy`]: how often, how soon and how much a [`RetryLayer`](super::RetryLayer) retries.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tower::retry::budget::{Budget, TpsBudget};

use crate::random::random_unit;
use crate::retry::after::RetryAfter;

/// The settings of a [`RetryLayer`](super::RetryLayer): attempts, backoff, jitter and the budget
/// shared across requests.
///
/// It is a value: give it to [`RetryLayer::new`](super::RetryLayer::new). What the layer decides
/// from, and in which order, is on [`RetryLayer`](super::RetryLayer).
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::retry::{RetryLayer, RetryPolicy};
///
/// let retry = RetryLayer::new(
///     RetryPolicy::new()
///         .max_attempts(3)
///         .base_delay(Duration::from_millis(20))
///         .max_delay(Duration::from_millis(500)),
/// );
/// # let _ = retry;
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    pub(super) max_attempts: u32,
    base_delay: Duration,
    pub(super) max_delay: Duration,
    jitter: f64,
    pub(super) budget: Arc<dyn Budget + Send + Sync>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// A policy with the defaults: 3 attempts in all, backoff from 50 ms up to 2 s with 50%
    /// jitter, and tower's default [`TpsBudget`].
    pub fn new() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            jitter: 0.5,
            budget: Arc::new(TpsBudget::default()),
        }
    }

    /// How many times a request may be sent in all, the first attempt included. `1` turns
    /// retries off; `0` counts as `1`.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The wait before the first retry; each further retry doubles it, up to
    /// [`max_delay`](RetryPolicy::max_delay). Default 50 ms.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The longest the layer waits before a retry, `Retry-After` included: an error whose
    /// `Retry-After` is longer is not retried. Default 2 s.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The share of each backoff that is random, from `0.0` (none: every client waits the same)
    /// to `1.0` (anything from zero to the full backoff). Default `0.5`. Out-of-range values are
    /// clamped.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The budget that bounds retries across all requests, such as a [`TpsBudget`] with your own
    /// numbers. Every clone of this policy, and every service of a layer made with it, shares it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::retry::RetryPolicy;
    /// use tower::retry::budget::TpsBudget;
    ///
    /// // Retries up to 10% of requests, plus 5 a second, counted over the last 10 s.
    /// let policy = RetryPolicy::new().budget(TpsBudget::new(Duration::from_secs(10), 5, 0.1));
    /// # let _ = policy;
    /// ```
    pub fn budget<B>(mut self, budget: B) -> Self
    where
        B: Budget + Send + Sync + 'static,
    {
        self.budget = Arc::new(budget);
        self
    }

    /// The capped, jittered exponential backoff before retry number `retry` (1 for the first).
    fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let full = self
            .base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay);
        let cut = self.jitter * random_unit();
        full.mul_f64(1.0 - cut)
    }

    /// The wait before retry number `retry`, or `None` when `retry_after` asks for more than the
    /// cap.
    pub(super) fn wait(&self, retry: u32, retry_after: Option<RetryAfter>) -> Option<Duration> {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(after) => {
                let after = after.delay_from(SystemTime::now());
                (after <= self.max_delay).then(|| after.max(backoff))
            }
            None => Some(backoff),
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(35))
            .jitter(0.0);
        assert_eq!(policy.backoff(1), Duration::from_millis(10));
        assert_eq!(policy.backoff(2), Duration::from_millis(20));
        assert_eq!(policy.backoff(3), Duration::from_millis(35));
        assert_eq!(policy.backoff(40), Duration::from_millis(35));
    }

    #[test]
    fn jitter_stays_within_its_share_and_varies() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(0.5);
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(1)).collect();
        for wait in &waits {
            assert!(*wait > Duration::from_millis(50) && *wait <= Duration::from_millis(100));
        }
        let first = waits[0];
        assert!(
            waits.iter().any(|w| *w != first),
            "jitter never varied: {first:?}"
        );
    }

    #[test]
    fn retry_after_wins_over_a_shorter_backoff_but_not_over_the_cap() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_secs(3))
            .jitter(0.0);
        let after = |delay: Duration| Some(RetryAfter::from(delay));
        assert_eq!(
            policy.wait(1, after(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(policy.wait(1, after(Duration::from_secs(4))), None);
        let date = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(policy.wait(1, Some(RetryAfter::from(date))), None);
    }
}
