//! Half-open: when the open time is over, one request at a time goes through as the probe, and
//! every way it can end resolves it (an answer closes, a failure or no answer within the probe
//! timeout opens for longer, anything else lets the next request probe).

use std::fmt;
use std::sync::atomic::Ordering;

use tracing::Level;

use crate::health::clock::nanos;
use crate::trace::TARGET;

use super::events::transition_event;
use super::outcome::{Admission, Outcome, Trip};
use super::table::Table;
use super::word::{Phase, Word};

impl Table {
    /// The open time is over (or the probe in flight was given up, or went away): this request
    /// becomes the probe, unless another request got there first.
    pub(super) fn start_probe(
        &self,
        index: usize,
        fingerprint: u64,
        now: u64,
        name: &dyn fmt::Display,
    ) -> Admission {
        let Some(mut guarded) = self.lock_own(index, fingerprint, name) else {
            return Admission::Untracked;
        };
        let slot = &self.slots[index];
        let word = Word(slot.word.load(Ordering::Acquire));
        let until = slot.until.load(Ordering::Acquire);
        match word.phase() {
            Phase::Closed => Admission::Closed {
                slot: index as u32,
                epoch: word.epoch(),
            },
            Phase::Open if now < until => self.unavailable(index, word, until - now),
            Phase::HalfOpen if word.probing() && now < until => {
                self.unavailable(index, word, until - now)
            }
            Phase::HalfOpen if word.probing() => {
                // The probe in flight never answered: it counts as a failed probe.
                let timeout = self.settings.probe_timeout;
                let word = self.open(
                    index,
                    &mut guarded,
                    word,
                    now,
                    &Trip::ProbeUnanswered(timeout),
                );
                let left = slot.until.load(Ordering::Acquire).saturating_sub(now);
                self.unavailable(index, word, left)
            }
            Phase::Open | Phase::HalfOpen => {
                let epoch = word.next_epoch();
                let deadline = now.saturating_add(nanos(self.settings.probe_timeout));
                slot.until.store(deadline, Ordering::Release);
                slot.word.store(
                    Word::new(Phase::HalfOpen, true, epoch, 0).0,
                    Ordering::Release,
                );
                if word.phase() == Phase::Open {
                    let reason = "the open time is over: one request goes through as a probe";
                    transition_event(&guarded.name, Phase::HalfOpen, &reason, None);
                    self.count_transition(Phase::HalfOpen, 0);
                } else {
                    tracing::event!(
                        target: TARGET,
                        Level::DEBUG,
                        gateway.upstream = guarded.name.as_str(),
                        "the last probe went away unanswered: another request goes through as the probe",
                    );
                }
                Admission::Probe {
                    slot: index as u32,
                    epoch,
                }
            }
        }
    }

    /// The end of a probe admitted under `epoch`: a success closes, a failure opens for longer,
    /// anything else lets another request probe.
    pub(super) fn probe_ended(
        &self,
        index: usize,
        fingerprint: u64,
        epoch: u32,
        outcome: Outcome,
        name: &dyn fmt::Display,
    ) -> Option<Admission> {
        let now = self.now();
        let mut guarded = self.lock_own(index, fingerprint, name)?;
        let slot = &self.slots[index];
        let word = Word(slot.word.load(Ordering::Acquire));
        if word.phase() != Phase::HalfOpen || word.epoch() != epoch || !word.probing() {
            // Given up and replaced: its outcome no longer decides anything. A body that follows
            // counts as any request's when the upstream has been closed since.
            return (word.phase() == Phase::Closed).then_some(Admission::Closed {
                slot: index as u32,
                epoch: word.epoch(),
            });
        }
        match outcome {
            Outcome::Success => {
                let word = self.close(index, &mut guarded, word, "the probe succeeded");
                Some(Admission::Closed {
                    slot: index as u32,
                    epoch: word.epoch(),
                })
            }
            Outcome::Failure(cause) => {
                self.open(index, &mut guarded, word, now, &Trip::ProbeFailed(cause));
                None
            }
            Outcome::Neutral => {
                // The client went away, or its own deadline ran out, or the error was not the
                // upstream's: the next request probes. The open time is over already, so the
                // state stays half-open, and the trips (and so the next open time) stay as they
                // are.
                slot.word.store(
                    Word::new(Phase::HalfOpen, false, epoch, 0).0,
                    Ordering::Release,
                );
                tracing::event!(
                    target: TARGET,
                    Level::DEBUG,
                    gateway.upstream = guarded.name.as_str(),
                    "the probe ended with nothing to say about the upstream (its client went away, or a limit of its client's ran out); the next request probes",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::state::fixture::*;

    #[tokio::test(start_paused = true)]
    async fn after_the_open_time_exactly_one_request_probes_and_its_success_closes() {
        let table = table(|_| {});
        trip_and_wait(&table).await;
        let probe = table.admit(KEY, &"upstream");
        assert!(matches!(probe, Admission::Probe { .. }), "{probe:?}");
        for _ in 0..10 {
            let other = table.admit(KEY, &"upstream");
            assert_eq!(retry_after(other), Some(SECOND), "a probe is in flight");
        }
        let body = table.record(probe, KEY, Outcome::Success, &"upstream");
        assert!(matches!(body, Some(Admission::Closed { .. })), "{body:?}");
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
        assert!(matches!(
            table.admit(KEY, &"upstream"),
            Admission::Closed { .. }
        ));
        // The trips were reset: the next trip opens for the base time again.
        trip_and_wait(&table).await;
        let probe = table.admit(KEY, &"upstream");
        table.record(probe, KEY, refused(), &"upstream");
        assert_eq!(
            retry_after(table.admit(KEY, &"upstream")),
            Some(20 * SECOND)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_longer_up_to_the_maximum() {
        let table = table(|s| s.max_open_time = Duration::from_secs(35));
        trip_and_wait(&table).await;
        let mut opened_for = Vec::new();
        for _ in 0..4 {
            let probe = table.admit(KEY, &"upstream");
            assert!(matches!(probe, Admission::Probe { .. }), "{probe:?}");
            table.record(probe, KEY, refused(), &"upstream");
            let after = retry_after(table.admit(KEY, &"upstream")).unwrap();
            opened_for.push(after.as_secs());
            tokio::time::advance(after).await;
        }
        assert_eq!(opened_for, [20, 30, 35, 35]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_says_nothing_lets_the_next_request_probe() {
        let table = table(|_| {});
        trip_and_wait(&table).await;
        let probe = table.admit(KEY, &"upstream");
        // Its client went away (or its error was not the upstream's).
        assert_eq!(
            table.record(probe, KEY, Outcome::Neutral, &"upstream"),
            None
        );
        assert_eq!(phase(&table, KEY), Some(Phase::HalfOpen));
        let next = table.admit(KEY, &"upstream");
        assert!(matches!(next, Admission::Probe { .. }), "{next:?}");
        // The first probe's outcome, should it come after all, decides nothing.
        assert_eq!(
            table.record(probe, KEY, Outcome::Success, &"upstream"),
            None
        );
        assert_eq!(phase(&table, KEY), Some(Phase::HalfOpen));
        table.record(next, KEY, Outcome::Success, &"upstream");
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_never_answers_counts_as_failed_after_the_probe_timeout() {
        let table = table(|s| s.probe_timeout = Duration::from_secs(3));
        trip_and_wait(&table).await;
        let stuck = table.admit(KEY, &"upstream");
        assert!(matches!(stuck, Admission::Probe { .. }));
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert_eq!(retry_after(table.admit(KEY, &"upstream")), Some(SECOND));
        tokio::time::advance(Duration::from_millis(1)).await;
        // Given up: open again, for the second trip's time.
        assert_eq!(
            retry_after(table.admit(KEY, &"upstream")),
            Some(20 * SECOND)
        );
        tokio::time::advance(20 * SECOND).await;
        let probe = table.admit(KEY, &"upstream");
        assert!(matches!(probe, Admission::Probe { .. }), "{probe:?}");
        // The stuck one answering late changes nothing; the new one decides.
        table.record(stuck, KEY, Outcome::Success, &"upstream");
        assert_eq!(phase(&table, KEY), Some(Phase::HalfOpen));
        table.record(probe, KEY, Outcome::Success, &"upstream");
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
    }
}
