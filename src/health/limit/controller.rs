//! The controller of one upstream's limit: a gradient on a sampled baseline (see the
//! [module docs](super)), moved once per window, and the warning when the limit falls sharply.

use std::sync::Arc;
use std::time::Duration;

use tracing::Level;

use crate::health::clock::nanos;
use crate::trace::TARGET;

use super::settings::AdaptiveLimit;

/// The least time between two warnings about one upstream's falling limit.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What only the window's closer touches, under the slot's lock.
pub(super) struct Controller {
    /// The limit, unrounded.
    limit: f64,
    /// The upstream's unloaded latency, in nanoseconds; 0 until the first window.
    baseline: u64,
    /// When the baseline was last measured (nanoseconds since the table was made).
    measured: u64,
    /// While the baseline is measured again: the limit to return to, and whether the draining
    /// window is over.
    probe: Option<(f64, bool)>,
    /// When the last warning about a falling limit was given.
    warned: Option<u64>,
    /// How many were given: what the tests read, whichever subscriber another test's thread
    /// has left the event's callsite to.
    #[cfg(test)]
    pub(super) warnings: u32,
    /// The upstream's key, as events and metrics show it (shared: a metric's attribute takes a
    /// reference, not a copy).
    name: Arc<str>,
}

impl Controller {
    /// The controller of an upstream that starts at `initial`, its baseline last measured at
    /// `measured` (nanoseconds since the table was made).
    pub(super) fn new(initial: u32, name: Arc<str>, measured: u64) -> Self {
        Controller {
            limit: f64::from(initial),
            baseline: 0,
            measured,
            probe: None,
            warned: None,
            #[cfg(test)]
            warnings: 0,
            name,
        }
    }

    /// The upstream's key, as metrics show it.
    #[cfg(feature = "metrics")]
    pub(super) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The controller's step at the end of a window whose samples averaged `average`
    /// nanoseconds, with at most `peak` requests in flight: the new limit.
    pub(super) fn close_window(
        &mut self,
        settings: &AdaptiveLimit,
        average: u64,
        peak: u32,
        now: u64,
    ) -> u32 {
        let max = f64::from(settings.max);
        match self.probe {
            Some((saved, false)) => {
                // The draining window is over: the next one measures the upstream unloaded.
                self.probe = Some((saved, true));
                return 1;
            }
            Some((saved, true)) => {
                self.probe = None;
                self.baseline = average;
                self.measured = now;
                self.limit = saved;
                return saved.round() as u32;
            }
            None => {}
        }
        if self.baseline == 0 || average < self.baseline {
            self.baseline = average;
        }
        if self.measured == 0 {
            self.measured = now;
        }
        let gradient = (self.baseline as f64 * settings.tolerance / average as f64).clamp(0.5, 2.0);
        let limit = self.limit;
        // A limit the traffic did not come near says nothing about what the upstream can take:
        // raising it would only let the next burst in unjudged. Falls are always taken.
        let unused = f64::from(peak) * 2.0 < limit;
        if gradient < 1.0 || !unused {
            // Headroom only while the upstream keeps up: a slow one loses limit in proportion.
            let headroom = if gradient >= 1.0 { limit.sqrt() } else { 0.0 };
            self.limit = (limit * gradient + headroom).clamp(1.0, max);
        }
        if now.saturating_sub(self.measured) >= nanos(settings.baseline_interval) {
            self.probe = Some((self.limit, false));
            return 1;
        }
        self.limit.round().clamp(1.0, max) as u32
    }

    /// A window moved the limit `from` to `limit`: a `WARN` event when it halved (from 4 or
    /// more, outside a measurement of the baseline), at most one every [`WARN_EVERY`].
    pub(super) fn warn_if_fell(&mut self, from: u32, limit: u32, average: u64, now: u64) {
        if from >= 4 && limit <= from / 2 && self.probe.is_none() {
            let quiet = self
                .warned
                .is_none_or(|at| now.saturating_sub(at) >= nanos(WARN_EVERY));
            if quiet {
                self.warned = Some(now);
                #[cfg(test)]
                {
                    self.warnings += 1;
                }
                tracing::event!(
                    target: TARGET,
                    Level::WARN,
                    gateway.upstream = %self.name,
                    gateway.concurrency_limit = limit,
                    from,
                    baseline_ms = self.baseline as f64 / 1e6,
                    average_ms = average as f64 / 1e6,
                    "upstream concurrency limit fell: it answers slower than its baseline",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The controller on paused time: an upstream whose latency the test sets, and requests
    //! admitted and answered in rounds.

    use std::time::Duration;

    use tokio::time::Instant;

    use crate::health::limit::fixture::{UPSTREAM, limits, window};
    use crate::health::limit::settings::AdaptiveLimit;
    use crate::health::limit::table::Limits;

    #[tokio::test(start_paused = true)]
    async fn it_rises_while_the_upstream_keeps_up_and_never_above_its_cap() {
        let limits = limits(AdaptiveLimit::new().initial(5).max(64));
        let mut last = 5;
        let mut seen = Vec::new();
        for _ in 0..20 {
            let limit = window(&limits, 1_000, 1_000, Duration::from_millis(10)).await;
            assert!(limit >= last, "a fast upstream never loses limit: {seen:?}");
            assert!(limit <= 64, "never above its cap: {limit}");
            seen.push(limit);
            last = limit;
        }
        assert_eq!(last, 64, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn it_falls_to_what_a_slow_upstream_serves_and_never_below_one() {
        let limits = limits(AdaptiveLimit::new().initial(100).max(1_000));
        // The baseline: the upstream unloaded.
        window(&limits, 4, 10, Duration::from_millis(10)).await;
        let mut seen = Vec::new();
        for _ in 0..30 {
            seen.push(window(&limits, 1_000, 10, Duration::from_millis(10)).await);
        }
        // Around tolerance × capacity (11) to that plus its square root (14): the upstream kept
        // busy, its queue short.
        let settled = &seen[10..];
        assert!(
            settled.iter().all(|limit| (5..=20).contains(limit)),
            "{seen:?}"
        );
        let mean = settled.iter().sum::<u32>() as f64 / settled.len() as f64;
        assert!((9.0..=15.0).contains(&mean), "{seen:?}");
        // A brownout: the upstream serves one at a time, ten times slower.
        let mut seen = Vec::new();
        for _ in 0..30 {
            let limit = window(&limits, 1_000, 1, Duration::from_millis(100)).await;
            assert!(limit >= 1, "never below 1");
            seen.push(limit);
        }
        assert_eq!(*seen.last().unwrap(), 1, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovering_upstream_gets_its_load_back_within_a_second() {
        let limits = limits(AdaptiveLimit::new().initial(50).max(200));
        window(&limits, 4, 100, Duration::from_millis(10)).await;
        for _ in 0..30 {
            window(&limits, 1_000, 1, Duration::from_millis(200)).await;
        }
        assert_eq!(limits.of(UPSTREAM).unwrap().0, 1);
        // It recovers: each request at the low limit finds it fast again.
        let recovered = Instant::now();
        while window(&limits, 1_000, 100, Duration::from_millis(10)).await < 100 {
            assert!(recovered.elapsed() < Duration::from_secs(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn light_traffic_does_not_raise_the_limit() {
        let limits = limits(AdaptiveLimit::new().initial(20).max(1_000));
        for _ in 0..50 {
            window(&limits, 4, 1_000, Duration::from_millis(10)).await;
        }
        assert_eq!(limits.of(UPSTREAM).unwrap().0, 20, "never tested above 4");
        // Traffic that uses it: it rises.
        for _ in 0..5 {
            window(&limits, 1_000, 1_000, Duration::from_millis(10)).await;
        }
        assert!(limits.of(UPSTREAM).unwrap().0 > 40);
    }

    #[tokio::test(start_paused = true)]
    async fn the_baseline_is_measured_again_at_a_limit_of_one() {
        let limits = limits(
            AdaptiveLimit::new()
                .initial(20)
                .max(100)
                .baseline_interval(Duration::from_secs(10)),
        );
        window(&limits, 4, 100, Duration::from_millis(10)).await;
        // The upstream's usual latency grows for good, five times, with no queue.
        let slower = Duration::from_millis(50);
        let mut seen = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(9) {
            seen.push(window(&limits, 1_000, 1_000, slower).await);
        }
        assert_eq!(
            *seen.last().unwrap(),
            1,
            "judged slow against the old baseline: {seen:?}"
        );
        // The interval is over: measured again (unloaded, at a limit of 1), the upstream is
        // judged against its new self, and its limit rises to the cap.
        let mut after = Vec::new();
        while start.elapsed() < Duration::from_secs(12) {
            after.push(window(&limits, 1_000, 1_000, slower).await);
        }
        assert_eq!(*after.last().unwrap(), 100, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_baseline_probe_holds_the_limit_at_one_for_two_windows_then_gives_it_back() {
        let limits = limits(
            AdaptiveLimit::new()
                .initial(50)
                .max(50)
                .baseline_interval(Duration::from_secs(1)),
        );
        let mut seen = Vec::new();
        while seen.len() < 150 {
            seen.push(window(&limits, 1_000, 1_000, Duration::from_millis(10)).await);
        }
        // Every second: the drain and the measurement at 1, then straight back to the cap.
        let probes = seen.windows(3).filter(|w| w == &[1, 1, 50]).count();
        assert!((1..=2).contains(&probes), "{seen:?}");
        assert!(
            seen.iter().all(|&limit| limit == 1 || limit == 50),
            "{seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sharp_fall_is_a_warning_at_most_once_in_ten_seconds() {
        let warnings = crate::testing::Warnings::default();
        let _guard = warnings.install();
        let limits = limits(AdaptiveLimit::new().initial(64).max(64));
        let begun = Instant::now();
        window(&limits, 4, 1_000, Duration::from_millis(10)).await;
        let given = |limits: &Limits| limits.warnings(UPSTREAM);
        // Brownouts one after another (ten times slower), each halving the limit at least once.
        for _ in 0..5 {
            for _ in 0..3 {
                window(&limits, 1_000, 1_000, Duration::from_millis(100)).await;
            }
            while window(&limits, 1_000, 1_000, Duration::from_millis(10)).await < 64 {}
        }
        assert!(begun.elapsed() < Duration::from_secs(10));
        assert_eq!(given(&limits), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..3 {
            window(&limits, 1_000, 1_000, Duration::from_millis(100)).await;
        }
        assert_eq!(given(&limits), 2);
        // As a subscriber sees them (when another test's thread has not left the callsite
        // cached as unwanted): never more, and with the upstream and the limits.
        let seen = warnings.messages();
        let falls: Vec<_> = seen
            .iter()
            .filter(|m| m.contains("concurrency limit fell"))
            .collect();
        assert!(falls.len() <= 2, "{seen:?}");
    }
}
