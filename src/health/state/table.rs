//! The table of upstreams every clone of one layer shares: a fixed array of slots in groups of
//! eight, where a key finds its slot, claims one at its first failure, and gives it up once idle.

use std::fmt::{self, Write as _};
use std::hash::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::Level;

use crate::health::clock::{Clock, nanos};
use crate::health::limit::Limits;
use crate::trace::TARGET;

use super::events::Bounded;
use super::settings::Settings;
use super::window::Windows;
use super::word::{Phase, Word};

/// Slots per group: eight fingerprints fill one cache line.
const GROUP: usize = 8;

/// One upstream's state.
pub(super) struct Slot {
    pub(super) word: AtomicU64,
    /// Open: when a probe may go. Half-open: when the probe in flight is given up. In nanoseconds
    /// since the table was made.
    pub(super) until: AtomicU64,
    guarded: Mutex<Guarded>,
}

/// What only failures and transitions touch.
#[derive(Default)]
pub(super) struct Guarded {
    /// The key, as events show it.
    pub(super) name: String,
    /// How many times in a row the upstream was marked unavailable without a successful probe.
    pub(super) trips: u32,
    /// When the last failure was counted (nanoseconds since the table was made).
    pub(super) last_failure: u64,
}

impl Guarded {
    /// Keeps the key's name for events, once, and at most
    /// [`MAX_NAME`](super::events::MAX_NAME) bytes of it.
    pub(super) fn keep_name(&mut self, name: &dyn fmt::Display) {
        if self.name.is_empty() {
            let _ = write!(self.name, "{}", Bounded(name));
        }
    }
}

/// The table of upstreams every clone of one layer shares.
pub(crate) struct Table {
    pub(super) settings: Settings,
    hasher: RandomState,
    clock: Clock,
    /// Whether the warning that the layer is placed outside `GatewayErrorLayer` has been given.
    warned_misplaced: AtomicBool,
    /// A key's 64-bit hash per slot; 0 for a slot never used. Slots of a group fill in order and
    /// are never emptied (only given to another key), so a search stops at the first 0.
    pub(super) fingerprints: Box<[AtomicU64]>,
    pub(super) slots: Box<[Slot]>,
    /// The sliding windows of the failure ratio; empty without a ratio rule.
    pub(super) windows: Windows,
    /// The adaptive concurrency limits, when set: nothing is made without them.
    limits: Option<Arc<Limits>>,
}

impl Table {
    pub(crate) fn new(settings: Settings) -> Self {
        let slots = settings
            .max_upstreams
            .max(GROUP)
            .checked_next_power_of_two()
            .unwrap_or(1 << 20)
            .min(1 << 20);
        Table {
            warned_misplaced: AtomicBool::new(false),
            hasher: RandomState::new(),
            clock: Clock::new(),
            fingerprints: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            slots: (0..slots)
                .map(|_| Slot {
                    word: AtomicU64::new(0),
                    until: AtomicU64::new(0),
                    guarded: Mutex::new(Guarded::default()),
                })
                .collect(),
            windows: Windows::new(slots, settings.ratio),
            limits: settings.limit.clone().map(|limit| {
                Arc::new(Limits::new(
                    limit,
                    #[cfg(feature = "metrics")]
                    settings.metrics.clone(),
                ))
            }),
            settings,
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The adaptive concurrency limits, when set.
    pub(crate) fn limits(&self) -> Option<&Arc<Limits>> {
        self.limits.as_ref()
    }

    /// The hasher keys are hashed with: keyed per table, so hashes cannot be predicted.
    pub(crate) fn hasher(&self) -> &RandomState {
        &self.hasher
    }

    /// How many upstreams the table can track.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// A response `GatewayErrorLayer` generated came through: that layer is inside this one.
    /// Said once per table, at the first such response, with the fix.
    pub(crate) fn misplaced(&self) {
        // A load first: once warned, a misplaced layer's answers cost a read, not a write.
        if self.warned_misplaced() || self.warned_misplaced.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::event!(
            target: TARGET,
            Level::WARN,
            "UpstreamHealthLayer is placed outside GatewayErrorLayer: it sees only the answers \
             GatewayErrorLayer makes of failures and timeouts, never the failures themselves, so \
             it never marks an upstream unavailable. Place it inside GatewayErrorLayer, next to \
             the client (after the code that points the request at its upstream)",
        );
    }

    /// Whether the warning that the layer is placed outside `GatewayErrorLayer` has been given.
    pub(crate) fn warned_misplaced(&self) -> bool {
        self.warned_misplaced.load(Ordering::Relaxed)
    }

    pub(super) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The slots of the group `fingerprint` belongs to.
    fn group(&self, fingerprint: u64) -> std::ops::Range<usize> {
        let groups = self.slots.len() / GROUP;
        let first = (fingerprint as usize & (groups - 1)) * GROUP;
        first..first + GROUP
    }

    /// The slot of `fingerprint`, if it has one.
    pub(super) fn find(&self, fingerprint: u64) -> Option<usize> {
        for index in self.group(fingerprint) {
            match self.fingerprints[index].load(Ordering::Acquire) {
                0 => return None,
                found if found == fingerprint => return Some(index),
                _ => {}
            }
        }
        None
    }

    pub(super) fn lock(&self, index: usize) -> MutexGuard<'_, Guarded> {
        self.slots[index]
            .guarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot `index`, locked, if it still belongs to `fingerprint` (it may have been given to
    /// another key since the request found it); the key's name is kept for events.
    pub(super) fn lock_own(
        &self,
        index: usize,
        fingerprint: u64,
        name: &dyn fmt::Display,
    ) -> Option<MutexGuard<'_, Guarded>> {
        let mut guarded = self.lock(index);
        if self.fingerprints[index].load(Ordering::Acquire) != fingerprint {
            return None;
        }
        guarded.keep_name(name);
        Some(guarded)
    }

    /// The slot for `fingerprint`, locked: its own, a free one, or an idle one given over to it.
    pub(super) fn claim(
        &self,
        fingerprint: u64,
        now: u64,
        name: &dyn fmt::Display,
    ) -> Option<(usize, MutexGuard<'_, Guarded>)> {
        for index in self.group(fingerprint) {
            let entry = &self.fingerprints[index];
            match entry.load(Ordering::Acquire) {
                0 => {
                    // Locked before it is taken, so that no other key sees it free of failures
                    // (idle) before this one is counted.
                    let guarded = self.lock(index);
                    match entry.compare_exchange(
                        0,
                        fingerprint,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Some((index, guarded)),
                        Err(actual) if actual == fingerprint => return Some((index, guarded)),
                        Err(_) => {}
                    }
                }
                found if found == fingerprint => {
                    let guarded = self.lock(index);
                    return (entry.load(Ordering::Acquire) == fingerprint)
                        .then_some((index, guarded));
                }
                _ => {}
            }
        }
        for index in self.group(fingerprint) {
            let mut guarded = self.lock(index);
            let slot = &self.slots[index];
            if self.fingerprints[index].load(Ordering::Acquire) == fingerprint {
                return Some((index, guarded));
            }
            let word = Word(slot.word.load(Ordering::Acquire));
            if !self.is_idle(index, &guarded, word, now) {
                continue;
            }
            if word.phase() != Phase::Closed {
                // Given up while unavailable, with no request for it since: one fewer.
                self.count_given_up();
            }
            // The word first: a request of the old key that still finds the slot sees the new
            // epoch, then the new fingerprint, and takes its key as untracked.
            slot.word.store(
                Word::new(Phase::Closed, false, word.next_epoch(), 0).0,
                Ordering::Release,
            );
            self.windows.clear(index);
            self.fingerprints[index].store(fingerprint, Ordering::Release);
            guarded.name.clear();
            guarded.keep_name(name);
            guarded.trips = 0;
            guarded.last_failure = 0;
            return Some((index, guarded));
        }
        None
    }

    /// Whether a slot holds nothing worth keeping: closed without failures to remember, or quiet
    /// for longer than failures are remembered.
    fn is_idle(&self, index: usize, guarded: &Guarded, word: Word, now: u64) -> bool {
        let memory = nanos(self.settings.memory());
        match word.phase() {
            Phase::Closed => {
                let quiet = guarded.last_failure.saturating_add(memory) <= now;
                // Without a ratio rule, a closed slot without failures holds nothing. With one,
                // its window holds failures until they are older than the window.
                let nothing_held = word.failures() == 0
                    && self.settings.ratio.is_none_or(|ratio| {
                        guarded.last_failure.saturating_add(nanos(ratio.window)) <= now
                    });
                quiet || nothing_held
            }
            Phase::Open | Phase::HalfOpen => {
                let until = self.slots[index].until.load(Ordering::Acquire);
                until.saturating_add(memory) <= now
            }
        }
    }

    /// Counts a transition to `to` in the metrics; `unavailable` is the change in the number of
    /// upstreams marked unavailable.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn count_transition(&self, to: Phase, unavailable: i64) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.settings.metrics {
            metrics.transition(to.as_str(), unavailable);
        }
    }

    /// A slot given to another key while it was unavailable: no transition, one fewer
    /// unavailable upstream.
    fn count_given_up(&self) {
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.settings.metrics {
            metrics.given_up();
        }
    }
}

/// A key's fingerprint: its hash, never 0 (which marks a free slot).
pub(super) fn fingerprint(hash: u64) -> u64 {
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::state::fixture::*;
    use crate::health::state::outcome::{Admission, Outcome};

    #[tokio::test(start_paused = true)]
    async fn a_key_is_named_even_when_its_failures_all_come_from_before_it_had_a_slot() {
        // A burst: five requests admitted while the key had no slot, failing after.
        let table = table(|_| {});
        let burst: Vec<Admission> = (0..5).map(|_| table.admit(KEY, &"upstream")).collect();
        for admission in burst {
            assert_eq!(admission, Admission::Untracked);
            table.record(admission, KEY, refused(), &"upstream");
        }
        assert_eq!(phase(&table, KEY), Some(Phase::Open));
        let index = table.find(fingerprint(KEY)).unwrap();
        assert_eq!(table.lock(index).name, "upstream", "the events name it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_never_grows_and_idle_slots_go_to_new_keys() {
        let table = table(|s| s.max_upstreams = 8);
        assert_eq!(table.capacity(), 8);
        // A stream of distinct failing keys: eight get a slot, the rest are untracked.
        for key in 1..=1000u64 {
            request(&table, key << 8, refused());
        }
        let tracked = (1..=1000u64)
            .filter(|key| table.find(fingerprint(key << 8)).is_some())
            .count();
        assert_eq!(tracked, 8);
        assert_eq!(table.slots.len(), 8);
        // A new key's failures are not tracked while the others are live...
        let late = 5000u64 << 8;
        for _ in 0..10 {
            request(&table, late, refused());
        }
        assert_eq!(table.admit(late, &"late"), Admission::Untracked);
        // ...and once they have been quiet for `forget_after`, it takes a slot.
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..5 {
            request(&table, late, refused());
        }
        assert_eq!(phase(&table, late), Some(Phase::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_slot_without_failures_is_free_at_once() {
        let table = table(|s| s.max_upstreams = 8);
        for key in 1..=8u64 {
            request(&table, key << 8, refused());
            request(&table, key << 8, Outcome::Success);
        }
        // All eight hold nothing: a ninth key gets a slot at its first failure.
        request(&table, 9 << 8, refused());
        assert!(table.find(fingerprint(9 << 8)).is_some());
    }
}
