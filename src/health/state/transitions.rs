//! The breaker's transitions between closed and open: what a request may do, and what its end
//! does to its upstream's state (a run of failures or a failure ratio opens it; an answer to a
//! request forwarded anyway closes it).

use std::fmt;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::Level;

use crate::health::clock::nanos;
use crate::trace::TARGET;

use super::events::{Bounded, transition_event};
use super::outcome::{Admission, Cause, Outcome, Refusal, Trip, whole_seconds};
use super::table::{Guarded, Table, fingerprint};
use super::word::{Phase, Word};

impl Table {
    /// Decides what a request to the upstream of `hash` may do. `name` is the key as events show
    /// it (formatted only if an event is emitted).
    pub(crate) fn admit(&self, hash: u64, name: &dyn fmt::Display) -> Admission {
        let fingerprint = fingerprint(hash);
        let Some(index) = self.find(fingerprint) else {
            return Admission::Untracked;
        };
        let slot = &self.slots[index];
        loop {
            let word = Word(slot.word.load(Ordering::Acquire));
            if word.phase() == Phase::Closed {
                // The slot may have gone to another key between the search and the read: then
                // this key has no slot.
                if self.fingerprints[index].load(Ordering::Acquire) != fingerprint {
                    return Admission::Untracked;
                }
                return Admission::Closed {
                    slot: index as u32,
                    epoch: word.epoch(),
                };
            }
            let until = slot.until.load(Ordering::Acquire);
            if slot.word.load(Ordering::Acquire) != word.0 {
                // Changed while `until` was read: read both again.
                continue;
            }
            if self.fingerprints[index].load(Ordering::Acquire) != fingerprint {
                return Admission::Untracked;
            }
            let now = self.now();
            let waiting = match word.phase() {
                Phase::Open => now < until,
                _ => word.probing() && now < until,
            };
            if waiting {
                return self.unavailable(index, word, until - now);
            }
            return self.start_probe(index, fingerprint, now, name);
        }
    }

    /// The admission of a request while the upstream is unavailable: refused (or forwarded
    /// anyway), with the time until a probe may go.
    pub(super) fn unavailable(&self, index: usize, word: Word, left: u64) -> Admission {
        let phase = word.phase();
        if self.settings.forward {
            return Admission::Bystander {
                slot: index as u32,
                epoch: word.epoch(),
                phase,
            };
        }
        // While a probe is in flight, its answer is due soon: come back in a second.
        let left = match phase {
            Phase::HalfOpen => Duration::from_secs(1),
            _ => Duration::from_nanos(left),
        };
        Admission::Refused(Refusal {
            retry_after: whole_seconds(left),
            phase,
        })
    }

    /// Records how a request admitted as `admission` ended. Returns what its response body is
    /// to be recorded against, if anything.
    pub(crate) fn record(
        &self,
        admission: Admission,
        hash: u64,
        outcome: Outcome,
        name: &dyn fmt::Display,
    ) -> Option<Admission> {
        let fingerprint = fingerprint(hash);
        match (admission, outcome) {
            (Admission::Refused(_), _) => None,
            (Admission::Untracked, Outcome::Success) => Some(Admission::Untracked),
            (Admission::Untracked | Admission::Bystander { .. }, Outcome::Neutral) => None,
            (Admission::Untracked, Outcome::Failure(cause)) => {
                self.claim_and_fail(fingerprint, cause, name);
                None
            }
            (Admission::Closed { slot, epoch }, Outcome::Success) => {
                self.succeeded(slot as usize, fingerprint, epoch);
                Some(admission)
            }
            (Admission::Closed { .. }, Outcome::Neutral) => None,
            (Admission::Closed { slot, epoch }, Outcome::Failure(cause)) => {
                self.failed(slot as usize, fingerprint, epoch, cause, name);
                None
            }
            (Admission::Probe { slot, epoch }, outcome) => {
                self.probe_ended(slot as usize, fingerprint, epoch, outcome, name)
            }
            (Admission::Bystander { slot, .. }, Outcome::Success) => {
                self.bystander_succeeded(slot as usize, fingerprint, name)
            }
            // Already unavailable: a failure changes nothing.
            (Admission::Bystander { .. }, Outcome::Failure(_)) => None,
        }
    }

    /// A success while closed ends a run of consecutive failures. Atomics only.
    fn succeeded(&self, index: usize, fingerprint: u64, epoch: u32) {
        let slot = &self.slots[index];
        if let Some(ratio) = self.settings.ratio {
            self.windows.count(ratio, index, self.now(), false);
        }
        let mut word = Word(slot.word.load(Ordering::Acquire));
        while word.phase() == Phase::Closed && word.epoch() == epoch && word.failures() > 0 {
            if self.fingerprints[index].load(Ordering::Acquire) != fingerprint {
                return;
            }
            let reset = Word::new(Phase::Closed, false, epoch, 0);
            match slot.word.compare_exchange_weak(
                word.0,
                reset.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => word = Word(actual),
            }
        }
    }

    /// A failure of a key without a slot: it gets one (or stays untracked when its group is full
    /// of live keys), and the failure is counted there.
    fn claim_and_fail(&self, fingerprint: u64, cause: Cause, name: &dyn fmt::Display) {
        let now = self.now();
        let Some((index, mut guarded)) = self.claim(fingerprint, now, name) else {
            tracing::event!(
                target: TARGET,
                Level::DEBUG,
                gateway.upstream = %Bounded(name),
                "upstream failure not tracked: every slot of its group holds a live upstream",
            );
            return;
        };
        guarded.keep_name(name);
        self.count_failure(index, guarded, None, cause, now);
    }

    /// Counts a failure of a request admitted while closed under `epoch`.
    fn failed(
        &self,
        index: usize,
        fingerprint: u64,
        epoch: u32,
        cause: Cause,
        name: &dyn fmt::Display,
    ) {
        let now = self.now();
        let Some(guarded) = self.lock_own(index, fingerprint, name) else {
            // The slot went to another key meanwhile: this key starts afresh.
            self.claim_and_fail(fingerprint, cause, name);
            return;
        };
        self.count_failure(index, guarded, Some(epoch), cause, now);
    }

    /// Counts a failure in the locked slot `index`, and marks the upstream unavailable when a
    /// rule says so. `epoch` is the one the request was admitted under (`None`: it had no slot,
    /// so any epoch while closed).
    fn count_failure(
        &self,
        index: usize,
        mut guarded: MutexGuard<'_, Guarded>,
        epoch: Option<u32>,
        cause: Cause,
        now: u64,
    ) {
        let slot = &self.slots[index];
        let forgotten = guarded
            .last_failure
            .saturating_add(nanos(self.settings.forget_after))
            <= now;
        let mut word = Word(slot.word.load(Ordering::Acquire));
        if word.phase() != Phase::Closed || epoch.is_some_and(|epoch| epoch != word.epoch()) {
            // Admitted before the state changed: already unavailable, or recovered since.
            return;
        }
        guarded.last_failure = now;
        if let Some(ratio) = self.settings.ratio {
            self.windows.count(ratio, index, now, true);
        }
        loop {
            let before = if forgotten { 0 } else { word.failures() };
            let failures = before.saturating_add(1);
            let trip = if failures >= self.settings.consecutive_failures {
                Some(Trip::Consecutive {
                    failures,
                    last: cause,
                })
            } else {
                (self.settings.ratio).and_then(|ratio| self.windows.trip(ratio, index, now, cause))
            };
            if let Some(trip) = trip {
                self.open(index, &mut guarded, word, now, &trip);
                return;
            }
            let counted = Word::new(Phase::Closed, false, word.epoch(), failures);
            match slot.word.compare_exchange_weak(
                word.0,
                counted.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                // Only a success resets the count without the lock: count from there.
                Err(actual) => word = Word(actual),
            }
            if word.phase() != Phase::Closed {
                return;
            }
        }
    }

    /// A request forwarded although the upstream was marked unavailable got an answer: the
    /// upstream is back.
    fn bystander_succeeded(
        &self,
        index: usize,
        fingerprint: u64,
        name: &dyn fmt::Display,
    ) -> Option<Admission> {
        let mut guarded = self.lock_own(index, fingerprint, name)?;
        let slot = &self.slots[index];
        let word = Word(slot.word.load(Ordering::Acquire));
        let word = match word.phase() {
            Phase::Closed => word,
            Phase::Open | Phase::HalfOpen => self.close(
                index,
                &mut guarded,
                word,
                "a request forwarded while it was marked unavailable succeeded",
            ),
        };
        Some(Admission::Closed {
            slot: index as u32,
            epoch: word.epoch(),
        })
    }

    /// Marks the upstream unavailable (again): the open time grows with each trip in a row.
    pub(super) fn open(
        &self,
        index: usize,
        guarded: &mut Guarded,
        word: Word,
        now: u64,
        trip: &Trip,
    ) -> Word {
        let slot = &self.slots[index];
        guarded.trips = guarded.trips.saturating_add(1);
        let open_for = self.settings.open_for(guarded.trips);
        slot.until
            .store(now.saturating_add(nanos(open_for)), Ordering::Release);
        let opened = Word::new(Phase::Open, false, word.next_epoch(), 0);
        slot.word.store(opened.0, Ordering::Release);
        self.windows.clear(index);
        transition_event(&guarded.name, Phase::Open, trip, Some(open_for));
        let newly = i64::from(word.phase() == Phase::Closed);
        self.count_transition(Phase::Open, newly);
        opened
    }

    /// The upstream is available again.
    pub(super) fn close(
        &self,
        index: usize,
        guarded: &mut Guarded,
        word: Word,
        reason: &str,
    ) -> Word {
        let slot = &self.slots[index];
        guarded.trips = 0;
        guarded.last_failure = 0;
        let closed = Word::new(Phase::Closed, false, word.next_epoch(), 0);
        slot.word.store(closed.0, Ordering::Release);
        transition_event(&guarded.name, Phase::Closed, &reason, None);
        self.count_transition(Phase::Closed, -1);
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::state::fixture::*;
    use crate::health::state::settings::{RatioRule, Settings};

    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_open_it_and_a_success_ends_a_run() {
        let table = table(|_| {});
        assert_eq!(table.admit(KEY, &"upstream"), Admission::Untracked);
        for _ in 0..4 {
            request(&table, KEY, refused());
        }
        // A success ends the run of four.
        request(&table, KEY, Outcome::Success);
        for _ in 0..4 {
            let admission = request(&table, KEY, refused());
            assert!(
                matches!(admission, Admission::Closed { .. }),
                "{admission:?}"
            );
        }
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
        request(&table, KEY, refused());
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
        // Refused for the whole open time, with the seconds left, rounded up.
        assert_eq!(
            retry_after(table.admit(KEY, &"upstream")),
            Some(10 * SECOND)
        );
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(retry_after(table.admit(KEY, &"upstream")), Some(8 * SECOND));
        tokio::time::advance(Duration::from_millis(7499)).await;
        assert_eq!(retry_after(table.admit(KEY, &"upstream")), Some(SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn neutral_outcomes_and_other_keys_change_nothing() {
        let table = table(|_| {});
        for _ in 0..4 {
            request(&table, KEY, refused());
        }
        for _ in 0..10 {
            request(&table, KEY, Outcome::Neutral);
            request(&table, KEY + 1, refused());
        }
        assert_eq!(
            phase(&table, KEY),
            Some(Phase::Closed),
            "neutral does not end a run"
        );
        request(&table, KEY, refused());
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
        assert_eq!(phase(&table, KEY + 1), Some(Phase::Open));
        assert_eq!(table.admit(KEY + 2, &"other"), Admission::Untracked);
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_of_requests_admitted_before_a_transition_are_ignored() {
        let table = table(|_| {});
        request(&table, KEY, refused());
        // Twenty requests on their way while it is closed.
        let in_flight: Vec<Admission> = (0..20).map(|_| table.admit(KEY, &"upstream")).collect();
        for _ in 0..4 {
            request(&table, KEY, refused());
        }
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
        let before = retry_after(table.admit(KEY, &"upstream"));
        // Their failures do not open it for longer, and a late success does not close it.
        for admission in &in_flight[..19] {
            table.record(*admission, KEY, refused(), &"upstream");
        }
        table.record(in_flight[19], KEY, Outcome::Success, &"upstream");
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
        assert_eq!(retry_after(table.admit(KEY, &"upstream")), before);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_further_apart_than_forget_after_make_no_run() {
        let table = table(|s| s.forget_after = Duration::from_secs(60));
        for _ in 0..20 {
            request(&table, KEY, refused());
            request(&table, KEY, refused());
            tokio::time::advance(Duration::from_secs(61)).await;
        }
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn forwarding_anyway_keeps_the_state_and_a_success_closes_it() {
        let table = table(|s| s.forward = true);
        for _ in 0..5 {
            request(&table, KEY, refused());
        }
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
        let bystander = table.admit(KEY, &"upstream");
        assert!(
            matches!(
                bystander,
                Admission::Bystander {
                    phase: Phase::Open,
                    ..
                }
            ),
            "{bystander:?}"
        );
        // Its failure changes nothing; its success marks the upstream available again.
        table.record(bystander, KEY, refused(), &"upstream");
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
        let bystander = table.admit(KEY, &"upstream");
        let body = table.record(bystander, KEY, Outcome::Success, &"upstream");
        assert!(matches!(body, Some(Admission::Closed { .. })));
        assert_eq!(phase(&table, KEY), Some(Phase::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn durations_as_long_as_duration_max_never_overflow() {
        let longest = |s: &mut Settings| {
            s.open_time = Duration::MAX;
            s.max_open_time = Duration::MAX;
            s.probe_timeout = Duration::MAX;
            s.forget_after = Duration::MAX;
            s.ratio = Some(RatioRule {
                ratio: 0.9,
                window: Duration::MAX,
                min_requests: 1000,
            });
        };
        for jitter in [0.0, 0.1, 1.0] {
            let table = table(|s| {
                longest(s);
                s.jitter = jitter;
            });
            for _ in 0..5 {
                request(&table, KEY, refused());
            }
            assert_eq!(phase(&table, KEY), Some(Phase::Open), "{jitter}");
            let after = retry_after(table.admit(KEY, &"upstream")).unwrap();
            assert!(after >= SECOND, "{after:?}");
            if jitter == 0.0 {
                // As long as the table can count: some 584 years.
                assert_eq!(after, whole_seconds(Duration::from_nanos(u64::MAX)));
            }
            for trips in [1, 2, u32::MAX] {
                let settings = Settings {
                    jitter,
                    ..table.settings.clone()
                };
                assert!(settings.open_for(trips) <= Duration::from_nanos(u64::MAX));
            }
        }

        // A probe given all the time there is, and a failure after it.
        let table = table(|s| {
            longest(s);
            s.open_time = Duration::from_secs(10);
        });
        trip_and_wait(&table).await;
        let probe = table.admit(KEY, &"upstream");
        assert!(matches!(probe, Admission::Probe { .. }), "{probe:?}");
        assert_eq!(retry_after(table.admit(KEY, &"upstream")), Some(SECOND));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(retry_after(table.admit(KEY, &"upstream")), Some(SECOND));
        table.record(probe, KEY, refused(), &"upstream");
        assert_eq!(
            retry_after(table.admit(KEY, &"upstream")),
            Some(20 * SECOND)
        );
        assert_eq!(whole_seconds(Duration::MAX), Duration::from_secs(u64::MAX));
    }
}
