//! The sliding windows of the failure ratio: per slot, ten buckets of requests and failures.
//!
//! A bucket is one atomic word: its tick (16 bits), requests (24) and failures (24). A request
//! counts in the bucket of its tick; a bucket whose tick is not one of the last ten counts as
//! empty, so nothing has to sweep old buckets.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::health::clock::nanos;

use super::outcome::{Cause, Trip};
use super::settings::RatioRule;

/// Buckets of the sliding window of the failure ratio.
const BUCKETS: u64 = 10;

/// The windows of every slot; empty without a ratio rule.
pub(super) struct Windows {
    buckets: Box<[AtomicU64]>,
}

impl Windows {
    /// Windows for `slots` slots, or none when there is no ratio rule.
    pub(super) fn new(slots: usize, ratio: Option<RatioRule>) -> Self {
        let buckets = if ratio.is_some() {
            slots * BUCKETS as usize
        } else {
            0
        };
        Windows {
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn of(&self, index: usize) -> &[AtomicU64] {
        let buckets = BUCKETS as usize;
        self.buckets
            .get(index * buckets..(index + 1) * buckets)
            .unwrap_or(&[])
    }

    /// Forgets what the window of slot `index` counted.
    pub(super) fn clear(&self, index: usize) {
        for bucket in self.of(index) {
            bucket.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request (and whether it failed) in the window of slot `index`.
    pub(super) fn count(&self, ratio: RatioRule, index: usize, now: u64, failed: bool) {
        let width = (nanos(ratio.window) / BUCKETS).max(1);
        let tick = now / width;
        let bucket = &self.of(index)[(tick % BUCKETS) as usize];
        let tag = tick & 0xFFFF;
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let (requests, failures) = if current >> 48 == tag {
                ((current >> 24) & 0xFF_FFFF, current & 0xFF_FFFF)
            } else {
                (0, 0)
            };
            let requests = (requests + 1).min(0xFF_FFFF);
            let failures = (failures + u64::from(failed)).min(0xFF_FFFF);
            let next = (tag << 48) | (requests << 24) | failures;
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The trip the failure ratio calls for, if any: enough requests in the window of slot
    /// `index`, and a share of failures at or above the ratio.
    pub(super) fn trip(
        &self,
        ratio: RatioRule,
        index: usize,
        now: u64,
        last: Cause,
    ) -> Option<Trip> {
        let width = (nanos(ratio.window) / BUCKETS).max(1);
        let tick = now / width;
        let (mut requests, mut failures) = (0u64, 0u64);
        for bucket in self.of(index) {
            let value = bucket.load(Ordering::Relaxed);
            let tag = value >> 48;
            // A bucket counts while its tick is one of the last `BUCKETS`.
            let age = (tick & 0xFFFF).wrapping_sub(tag) & 0xFFFF;
            if age < BUCKETS {
                requests += (value >> 24) & 0xFF_FFFF;
                failures += value & 0xFF_FFFF;
            }
        }
        let enough = requests >= u64::from(ratio.min_requests.max(1));
        (enough && failures as f64 >= ratio.ratio * requests as f64).then_some(Trip::Ratio {
            failures: failures as u32,
            requests: requests as u32,
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::state::fixture::*;
    use crate::health::state::outcome::Outcome;
    use crate::health::state::word::Phase;

    #[tokio::test(start_paused = true)]
    async fn a_failure_ratio_opens_it_once_enough_requests_were_seen() {
        let table = table(|s| {
            s.consecutive_failures = 1000;
            s.ratio = Some(RatioRule {
                ratio: 0.5,
                window: Duration::from_secs(10),
                min_requests: 10,
            });
        });
        // The first failure gives the key a slot; from then on every request counts.
        request(&table, KEY, refused());
        for _ in 0..3 {
            request(&table, KEY, Outcome::Success);
            request(&table, KEY, refused());
        }
        // 4 failures of 7: over half, but too few requests.
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
        request(&table, KEY, Outcome::Success);
        request(&table, KEY, Outcome::Success);
        // 4 of 9, then 5 of 10.
        request(&table, KEY, refused());
        assert_eq!(phase(&table, KEY), Some(Phase::Open));

        // Requests older than the window no longer count: four failures, then, after the
        // window, three successes and a failure (5 of 8 with the old ones, 1 of 4 without).
        let table = self::table(|s| {
            s.consecutive_failures = 1000;
            s.ratio = Some(RatioRule {
                ratio: 0.6,
                window: Duration::from_secs(10),
                min_requests: 5,
            });
        });
        for _ in 0..4 {
            request(&table, KEY, refused());
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..3 {
            request(&table, KEY, Outcome::Success);
        }
        request(&table, KEY, refused());
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
        // Within the window, the same five failures open it.
        for _ in 0..4 {
            request(&table, KEY, refused());
        }
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
    }
}
