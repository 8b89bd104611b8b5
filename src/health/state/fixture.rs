//! What the unit tests of the state share: a table without jitter, and requests admitted and
//! recorded against it by hand.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::kind::ProxyErrorKind;

use super::outcome::{Admission, Cause, Outcome};
use super::settings::Settings;
use super::table::{Table, fingerprint};
use super::word::{Phase, Word};

/// The key the tests track.
pub(super) const KEY: u64 = 0x5eed_0000_0000_0001;
pub(super) const SECOND: Duration = Duration::from_secs(1);

pub(super) fn table(change: impl FnOnce(&mut Settings)) -> Table {
    let mut settings = Settings {
        jitter: 0.0,
        ..Settings::default()
    };
    change(&mut settings);
    Table::new(settings)
}

/// A refused connection: a failure by the default rule.
pub(super) fn refused() -> Outcome {
    Outcome::Failure(Cause::Kind(ProxyErrorKind::ConnectionRefused))
}

/// Admits one request for `key` and records `outcome` for it; returns its admission.
pub(super) fn request(table: &Table, key: u64, outcome: Outcome) -> Admission {
    let admission = table.admit(key, &"upstream");
    table.record(admission, key, outcome, &"upstream");
    admission
}

/// The `Retry-After` of a refusal; `None` for any other admission.
pub(super) fn retry_after(admission: Admission) -> Option<Duration> {
    match admission {
        Admission::Refused(refusal) => Some(refusal.retry_after),
        _ => None,
    }
}

/// The phase of `key`, if it has a slot.
pub(super) fn phase(table: &Table, key: u64) -> Option<Phase> {
    let index = table.find(fingerprint(key))?;
    Some(Word(table.slots[index].word.load(Ordering::Acquire)).phase())
}

/// Trips `KEY` and waits out its open time.
pub(super) async fn trip_and_wait(table: &Table) {
    for _ in 0..table.settings.consecutive_failures {
        request(table, KEY, refused());
    }
    assert_eq!(phase(table, KEY), Some(Phase::Open));
    let Admission::Refused(refusal) = table.admit(KEY, &"upstream") else {
        panic!("open refuses");
    };
    tokio::time::advance(refusal.retry_after).await;
}
