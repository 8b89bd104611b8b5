//! Time as the tables of upstreams count it: whole nanoseconds since the table was made, kept in
//! one atomic word.

use std::time::Duration;

use tokio::time::Instant;

/// The moment a table was made, and the time since then.
pub(crate) struct Clock {
    started: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            started: Instant::now(),
        }
    }

    /// Nanoseconds since the table was made.
    pub(crate) fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.started))
    }
}

/// `duration` in whole nanoseconds, at most `u64::MAX` (some 584 years): any setting,
/// `Duration::MAX` included, is a time the tables can count, never an overflow.
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
