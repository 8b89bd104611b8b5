//! A copy held in the store: how old it is and how long it stays fresh (RFC 9111 §4.2), and
//! whether it may still answer (§4.2.4, RFC 5861 §4).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderMap;
use tokio::time::Instant;

use super::request::{Key, VaryValues};

/// The request headers a copy was chosen by (its `Vary`), with the values the request that
/// brought it sent.
#[derive(Debug)]
pub(crate) struct Variant {
    /// Bit `i`: the policy's `vary_headers[i]` is named.
    pub(crate) names: u8,
    /// The request's values of the named headers.
    pub(crate) values: VaryValues,
}

impl Variant {
    /// Whether a request with these values may be answered with this copy: every named header
    /// the same, or absent from both.
    pub(crate) fn matches(&self, request: &VaryValues) -> bool {
        request.select(self.names) == Some(self.values)
    }

    /// Whether two variants are chosen by the same headers and values: the newer replaces the
    /// older.
    pub(crate) fn same_as(&self, other: &Variant) -> bool {
        self.names == other.names && self.values == other.values
    }
}

/// A duration in whole seconds, rounded up: an age of 0.2 s is sent as 1, so that a copy is
/// never shown as newer than it is. Saturates (`Duration::MAX` is a valid window).
pub(crate) fn whole_seconds(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// A window in whole seconds, rounded up, as a signed count that saturates.
pub(crate) fn signed_seconds(window: Duration) -> i64 {
    i64::try_from(whole_seconds(window)).unwrap_or(i64::MAX)
}

/// How many seconds past its freshness a copy of this age is; negative while it is fresh.
pub(crate) fn staleness_secs(age_secs: u64, lifetime: Duration) -> i64 {
    i64::try_from(age_secs).unwrap_or(i64::MAX) - i64::try_from(lifetime.as_secs()).unwrap_or(0)
}

/// A stored copy: the origin's status, head and body, and what its age is worked out from.
#[derive(Debug)]
pub(crate) struct StoredCopy {
    pub(crate) key: Key,
    pub(crate) variant: Variant,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) received_at: Instant,
    /// Its `Date` (no later than when it arrived), else when it arrived.
    pub(crate) dated: SystemTime,
    pub(crate) initial_age: Duration,
    pub(crate) lifetime: Duration,
    /// The longest it may be served stale: the origin's `stale-if-error`, else the operator's.
    pub(crate) window: Duration,
    /// Whether the origin gave `window` (`stale-if-error`): the origin then asked for a copy in
    /// place of its own errors too (RFC 5861 §4).
    pub(crate) origin_window: bool,
    /// The write generation of its key when its request arrived: a write since then outdates it.
    pub(crate) epoch: u32,
    /// What it counts for in the store's budget.
    pub(crate) size: usize,
}

/// Whether a copy may answer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It may: `Age` and the `ttl` of `Cache-Status`, in whole seconds.
    Answers { age: u64, ttl: i64 },
    /// Not this request: it asked for a shorter window (`stale-if-error` of its own).
    TooStaleForRequest,
    /// Past its own window: it never will again.
    Expired,
}

impl StoredCopy {
    /// Its current age (RFC 9111 §4.2.3): the age it arrived with, plus the time since.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.received_at))
    }

    /// Whether it is a more recent response than `other` (RFC 9111 §4): by `Date`, then by
    /// when it arrived. Of two equal, neither is newer.
    pub(crate) fn newer_than(&self, other: &StoredCopy) -> bool {
        (self.dated, self.received_at) > (other.dated, other.received_at)
    }

    /// Whether it may answer at `now` a request that accepts `request_window` seconds of
    /// staleness, if it said so. A copy still fresh always may.
    pub(crate) fn verdict(&self, now: Instant, request_window: Option<u32>) -> Verdict {
        let age = whole_seconds(self.age(now)).max(1);
        let staleness = staleness_secs(age, self.lifetime);
        let ttl = -staleness;
        if staleness > signed_seconds(self.window) {
            return Verdict::Expired;
        }
        if let Some(request_window) = request_window {
            if staleness > i64::from(request_window) {
                return Verdict::TooStaleForRequest;
            }
        }
        Verdict::Answers { age, ttl }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stale::admission::Refused;
    use crate::stale::policy::Policy;
    use crate::stale::testing::{decide, request, windowed};

    #[tokio::test(start_paused = true)]
    async fn the_window_runs_from_the_end_of_freshness() {
        let policy = windowed();
        let get = request("GET", &[]);
        let copy = decide(
            &policy,
            &get,
            200,
            &[("cache-control", "max-age=10, stale-if-error=20")],
        )
        .unwrap()
        .complete(Bytes::new())
        .unwrap();
        let at = |secs: u64| copy.received_at + Duration::from_secs(secs);
        // Fresh: the age is never 0.
        assert_eq!(
            copy.verdict(at(0), None),
            Verdict::Answers { age: 1, ttl: 9 }
        );
        assert_eq!(
            copy.verdict(at(10), None),
            Verdict::Answers { age: 10, ttl: 0 }
        );
        assert_eq!(
            copy.verdict(at(30), None),
            Verdict::Answers { age: 30, ttl: -20 }
        );
        assert_eq!(copy.verdict(at(31), None), Verdict::Expired);
        // A request's own window shortens it, and never lengthens it.
        assert_eq!(
            copy.verdict(at(15), Some(5)),
            Verdict::Answers { age: 15, ttl: -5 }
        );
        assert_eq!(copy.verdict(at(16), Some(5)), Verdict::TooStaleForRequest);
        assert_eq!(copy.verdict(at(31), Some(100)), Verdict::Expired);
        // A fresh copy needs no permission to be stale.
        assert_eq!(
            copy.verdict(at(3), Some(0)),
            Verdict::Answers { age: 3, ttl: 7 }
        );
        // Part of a second counts as a whole one.
        let later = copy.received_at + Duration::from_millis(30_200);
        assert_eq!(copy.verdict(later, None), Verdict::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_an_origin_sends_counts_and_the_origins_window_beats_the_operators() {
        let policy = windowed(); // 60 s
        let get = request("GET", &[]);
        let copy = |fields: &[(&str, &str)]| {
            decide(&policy, &get, 200, fields).map(|a| a.complete(Bytes::new()).unwrap())
        };
        // 100 s old with a 60 s lifetime: 40 s stale, inside the operator's 60 s.
        let aged = copy(&[("age", "100"), ("cache-control", "max-age=60")]).unwrap();
        assert_eq!(
            aged.verdict(aged.received_at, None),
            Verdict::Answers { age: 100, ttl: -40 }
        );
        // The origin allows 30 s only: refused at the door.
        assert_eq!(
            copy(&[
                ("age", "100"),
                ("cache-control", "max-age=60, stale-if-error=30")
            ])
            .err(),
            Some(Refused::TooStale)
        );
        // Expires minus Date is the lifetime when there is no max-age; a bad date is expired.
        let date = httpdate::fmt_http_date(SystemTime::now());
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let dated = copy(&[("date", &date), ("expires", &expires)]).unwrap();
        assert!(matches!(
            dated.verdict(dated.received_at, None),
            Verdict::Answers { ttl: 117..=120, .. }
        ));
        let bad = copy(&[("expires", "0")]).unwrap();
        assert_eq!(
            bad.verdict(bad.received_at, None),
            Verdict::Answers { age: 1, ttl: -1 }
        );
        // A Date an hour ago: an hour old already, past the operator's minute.
        let old = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
        assert_eq!(copy(&[("date", &old)]).err(), Some(Refused::TooStale));
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_windows_and_ages_saturate_rather_than_overflow() {
        assert_eq!(whole_seconds(Duration::MAX), u64::MAX);
        assert_eq!(signed_seconds(Duration::MAX), i64::MAX);
        let policy = Policy {
            default_window: Some(Duration::MAX),
            ..Policy::default()
        };
        let get = request("GET", &[]);
        let copy = decide(&policy, &get, 200, &[("cache-control", "max-age=10")])
            .unwrap()
            .complete(Bytes::new())
            .unwrap();
        // A century on, still within the operator's window.
        let century = copy.received_at + Duration::from_secs(100 * 365 * 24 * 3600);
        assert!(matches!(
            copy.verdict(century, None),
            Verdict::Answers { ttl, .. } if ttl < -3_000_000_000
        ));
        // The oldest Date and the largest Age there are: admitted, and answering.
        let ancient = decide(
            &policy,
            &get,
            200,
            &[
                ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("age", "99999999999999999999999"),
                ("cache-control", "stale-if-error=99999999999999999999999"),
            ],
        );
        assert!(ancient.is_ok(), "2^31 seconds old, within 2^31 seconds");
        let ancient = decide(
            &policy,
            &get,
            200,
            &[
                ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("age", "99999999999999999999999"),
            ],
        )
        .unwrap()
        .complete(Bytes::new())
        .unwrap();
        assert!(matches!(
            ancient.verdict(century, None),
            Verdict::Answers { .. }
        ));
    }
}
