//! A cheap random number for jitter: the backoff of retries, and how long an unavailable upstream
//! stays open. Not for secrets.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A number in `[0, 1)`, different on every call; good enough to spread retries and probes, not
/// for secrets.
pub(crate) fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded randomly per process; hashing a counter gives a fresh value per call.
    static SEED: OnceLock<RandomState> = OnceLock::new();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = SEED.get_or_init(RandomState::new).hash_one(n) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_the_unit_interval_and_vary() {
        let values: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let low = values.iter().filter(|v| **v < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below 0.5");
    }
}
