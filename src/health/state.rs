//! The shared table of upstreams, and the state of each: closed, open, half-open.
//!
//! A request that succeeds touches atomics only: it hashes its key, finds its slot (or none), and
//! reads one word; it writes only to reset a count of failures that a success ends. Failures and
//! transitions take the slot's lock.
//!
//! The table is a fixed array of slots, made when the layer is built, in groups of eight. A key
//! lives in the group its hash names, in the first free slot, and is found by its 64-bit hash
//! (keyed per table with a random key, so a client cannot pick two keys that collide). A key gets a slot at its
//! first failure; a slot is given to another key only once it is idle. So the table never grows:
//! when the group of a new key is full of live keys, that key is not tracked and its requests are
//! forwarded.
//!
//! Every change of state bumps the slot's epoch. An outcome is recorded against the epoch its
//! request was admitted under: a request admitted before the upstream was marked unavailable,
//! which fails afterwards, does not extend the open time, and a probe that has been given up
//! cannot close a state that moved on.

use std::fmt::{self, Write as _};
use std::hash::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tracing::Level;

use crate::classify::Classify;
use crate::config::StatusSet;
use crate::kind::ProxyErrorKind;
use crate::random::random_unit;
use crate::trace::TARGET;

use super::attempt::Attempt;
use super::limit::{AdaptiveLimit, Limits};

/// The most bytes of a key's name that events show.
const MAX_NAME: usize = 200;

/// Slots per group: eight fingerprints fill one cache line.
const GROUP: usize = 8;

/// Buckets of the sliding window of the failure ratio.
const BUCKETS: u64 = 10;

/// The rule that decides which attempts are failures.
pub(crate) type FailureRule = Arc<dyn Fn(&Attempt<'_>) -> bool + Send + Sync>;

/// A failure ratio over a sliding window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RatioRule {
    pub(crate) ratio: f64,
    pub(crate) window: Duration,
    pub(crate) min_requests: u32,
}

/// What the builder sets.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) consecutive_failures: u32,
    pub(crate) ratio: Option<RatioRule>,
    pub(crate) open_time: Duration,
    pub(crate) max_open_time: Duration,
    pub(crate) jitter: f64,
    pub(crate) probe_timeout: Duration,
    pub(crate) forget_after: Duration,
    pub(crate) max_upstreams: usize,
    pub(crate) failure_statuses: StatusSet,
    pub(crate) rule: Option<FailureRule>,
    /// Asked before the default classifier for the kind of an error the rule reads.
    pub(crate) classifiers: Vec<Arc<dyn Classify>>,
    pub(crate) forward: bool,
    /// The adaptive concurrency limit, if one is set.
    pub(crate) limit: Option<AdaptiveLimit>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::HealthMetrics>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consecutive_failures: 5,
            ratio: None,
            open_time: Duration::from_secs(10),
            max_open_time: Duration::from_secs(300),
            jitter: 0.1,
            probe_timeout: Duration::from_secs(30),
            forget_after: Duration::from_secs(60),
            max_upstreams: 1024,
            failure_statuses: StatusSet::default(),
            rule: None,
            classifiers: Vec::new(),
            forward: false,
            limit: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

impl Settings {
    /// Whether `attempt` counts as a failure of the upstream.
    pub(crate) fn is_failure(&self, attempt: &Attempt<'_>) -> bool {
        if let Some(status) = attempt.status {
            if self.failure_statuses.contains(status) {
                return true;
            }
        }
        match &self.rule {
            Some(rule) => rule(attempt),
            None => attempt.counts_by_default(),
        }
    }

    /// How long the upstream stays open after its `trips`-th trip in a row: the open time times
    /// `trips`, at most the maximum, less a random share of up to `jitter` of it.
    ///
    /// Counted in whole nanoseconds, as the table keeps times: any setting, `Duration::MAX`
    /// included, gives a time (at most `u64::MAX` nanoseconds, some 584 years) and never a panic
    /// (`Duration::mul_f64` would panic on a product past `Duration::MAX`).
    fn open_for(&self, trips: u32) -> Duration {
        let full = nanos(
            self.open_time
                .saturating_mul(trips.max(1))
                .min(self.max_open_time),
        );
        // A float-to-integer `as` saturates (and takes NaN to 0); the cut is at most `full`.
        let cut = (full as f64 * (self.jitter * random_unit()).clamp(0.0, 1.0)) as u64;
        Duration::from_nanos(full - cut.min(full))
    }

    /// How long a key's failures are remembered without a new one.
    fn memory(&self) -> Duration {
        let window = self.ratio.map_or(Duration::ZERO, |ratio| ratio.window);
        self.forget_after.max(window)
    }
}

/// The state of one upstream, as spans and events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Requests go through; failures are counted.
    Closed,
    /// Marked unavailable: requests are refused until the open time is over.
    Open,
    /// The open time is over: one request at a time goes through as a probe.
    HalfOpen,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// The word a request reads: phase, whether a probe is in flight, epoch, consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

const PHASE_SHIFT: u32 = 62;
const PROBING: u64 = 1 << 61;
const EPOCH_SHIFT: u32 = 32;
const EPOCH_MASK: u64 = (1 << 29) - 1;
const FAILURES_MASK: u64 = u32::MAX as u64;

impl Word {
    fn new(phase: Phase, probing: bool, epoch: u32, failures: u32) -> Self {
        let phase = match phase {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        };
        Word(
            (phase << PHASE_SHIFT)
                | if probing { PROBING } else { 0 }
                | ((u64::from(epoch) & EPOCH_MASK) << EPOCH_SHIFT)
                | u64::from(failures),
        )
    }

    fn phase(self) -> Phase {
        match self.0 >> PHASE_SHIFT {
            0 => Phase::Closed,
            1 => Phase::Open,
            _ => Phase::HalfOpen,
        }
    }

    fn probing(self) -> bool {
        self.0 & PROBING != 0
    }

    fn epoch(self) -> u32 {
        ((self.0 >> EPOCH_SHIFT) & EPOCH_MASK) as u32
    }

    fn next_epoch(self) -> u32 {
        (self.epoch() + 1) & EPOCH_MASK as u32
    }

    fn failures(self) -> u32 {
        (self.0 & FAILURES_MASK) as u32
    }
}

/// What a request is allowed to do, and what its outcome will be recorded against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Forwarded; the key has no slot (it has not failed lately).
    Untracked,
    /// Forwarded while closed, under `epoch`.
    Closed { slot: u32, epoch: u32 },
    /// Forwarded as the one probe of a half-open upstream.
    Probe { slot: u32, epoch: u32 },
    /// Forwarded although the upstream is marked unavailable (the layer forwards anyway).
    Bystander { slot: u32, epoch: u32, phase: Phase },
    /// Not forwarded: the upstream is marked unavailable.
    Refused(Refusal),
}

/// A request refused because its upstream is marked unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The whole seconds until a probe may go, at least one.
    pub(crate) retry_after: Duration,
    pub(crate) phase: Phase,
}

/// Why a request counted as a failure, as events state it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Kind(ProxyErrorKind),
    Status(StatusCode),
    /// The failure rule counted an error the classifier does not recognise.
    Unrecognized,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Kind(kind) => f.write_str(kind.token()),
            Cause::Status(status) => write!(f, "origin status {}", status.as_u16()),
            Cause::Unrecognized => f.write_str("an unrecognised error"),
        }
    }
}

/// How one request to an upstream ended, as the table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream answered (a response head that is not counted as a failure).
    Success,
    /// A failure of the upstream.
    Failure(Cause),
    /// Says nothing about the upstream: the client went away, or the error was not the
    /// upstream's. Releases a probe.
    Neutral,
}

/// Why an upstream was marked unavailable, or stays so.
enum Trip {
    Consecutive {
        failures: u32,
        last: Cause,
    },
    Ratio {
        failures: u32,
        requests: u32,
        last: Cause,
    },
    ProbeFailed(Cause),
    ProbeUnanswered(Duration),
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trip::Consecutive { failures, last } => {
                write!(f, "{failures} consecutive failures, the last {last}")
            }
            Trip::Ratio {
                failures,
                requests,
                last,
            } => write!(
                f,
                "{failures} failures in the last {requests} requests, the last {last}"
            ),
            Trip::ProbeFailed(cause) => write!(f, "the probe failed: {cause}"),
            Trip::ProbeUnanswered(after) => {
                write!(f, "the probe got no answer within {after:?}")
            }
        }
    }
}

/// One upstream's state.
struct Slot {
    word: AtomicU64,
    /// Open: when a probe may go. Half-open: when the probe in flight is given up. In nanoseconds
    /// since the table was made.
    until: AtomicU64,
    guarded: Mutex<Guarded>,
}

/// What only failures and transitions touch.
#[derive(Default)]
struct Guarded {
    /// The key, as events show it.
    name: String,
    /// How many times in a row the upstream was marked unavailable without a successful probe.
    trips: u32,
    /// When the last failure was counted (nanoseconds since the table was made).
    last_failure: u64,
}

/// The table of upstreams every clone of one layer shares.
pub(crate) struct Table {
    settings: Settings,
    hasher: RandomState,
    started: Instant,
    /// Whether the warning that the layer is placed outside `GatewayErrorLayer` has been given.
    warned_misplaced: AtomicBool,
    /// A key's 64-bit hash per slot; 0 for a slot never used. Slots of a group fill in order and
    /// are never emptied (only given to another key), so a search stops at the first 0.
    fingerprints: Box<[AtomicU64]>,
    slots: Box<[Slot]>,
    /// The sliding windows of the failure ratio, `BUCKETS` per slot; empty without a ratio rule.
    /// A bucket holds its tick (16 bits), requests (24) and failures (24).
    windows: Box<[AtomicU64]>,
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
        let windows = if settings.ratio.is_some() {
            slots * BUCKETS as usize
        } else {
            0
        };
        Table {
            warned_misplaced: AtomicBool::new(false),
            hasher: RandomState::new(),
            started: Instant::now(),
            fingerprints: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            slots: (0..slots)
                .map(|_| Slot {
                    word: AtomicU64::new(0),
                    until: AtomicU64::new(0),
                    guarded: Mutex::new(Guarded::default()),
                })
                .collect(),
            windows: (0..windows).map(|_| AtomicU64::new(0)).collect(),
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

    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.started))
    }

    /// The slots of the group `fingerprint` belongs to.
    fn group(&self, fingerprint: u64) -> std::ops::Range<usize> {
        let groups = self.slots.len() / GROUP;
        let first = (fingerprint as usize & (groups - 1)) * GROUP;
        first..first + GROUP
    }

    /// The slot of `fingerprint`, if it has one.
    fn find(&self, fingerprint: u64) -> Option<usize> {
        for index in self.group(fingerprint) {
            match self.fingerprints[index].load(Ordering::Acquire) {
                0 => return None,
                found if found == fingerprint => return Some(index),
                _ => {}
            }
        }
        None
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Guarded> {
        self.slots[index]
            .guarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot `index`, locked, if it still belongs to `fingerprint` (it may have been given to
    /// another key since the request found it); the key's name is kept for events.
    fn lock_own(
        &self,
        index: usize,
        fingerprint: u64,
        name: &dyn fmt::Display,
    ) -> Option<MutexGuard<'_, Guarded>> {
        let mut guarded = self.lock(index);
        if self.fingerprints[index].load(Ordering::Acquire) != fingerprint {
            return None;
        }
        set_name(&mut guarded, name);
        Some(guarded)
    }

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
    fn unavailable(&self, index: usize, word: Word, left: u64) -> Admission {
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

    /// The open time is over (or the probe in flight was given up, or went away): this request
    /// becomes the probe, unless another request got there first.
    fn start_probe(
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
        if self.settings.ratio.is_some() {
            self.count_in_window(index, self.now(), false);
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
        set_name(&mut guarded, name);
        self.count_failure(index, guarded, None, cause, now);
    }

    /// The slot for `fingerprint`, locked: its own, a free one, or an idle one given over to it.
    fn claim(
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
            for bucket in self.window(index) {
                bucket.store(0, Ordering::Relaxed);
            }
            self.fingerprints[index].store(fingerprint, Ordering::Release);
            guarded.name.clear();
            set_name(&mut guarded, name);
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
        if self.settings.ratio.is_some() {
            self.count_in_window(index, now, true);
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
                self.ratio_trip(index, now, cause)
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

    /// The end of a probe admitted under `epoch`: a success closes, a failure opens for longer,
    /// anything else lets another request probe.
    fn probe_ended(
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
    fn open(&self, index: usize, guarded: &mut Guarded, word: Word, now: u64, trip: &Trip) -> Word {
        let slot = &self.slots[index];
        guarded.trips = guarded.trips.saturating_add(1);
        let open_for = self.settings.open_for(guarded.trips);
        slot.until
            .store(now.saturating_add(nanos(open_for)), Ordering::Release);
        let opened = Word::new(Phase::Open, false, word.next_epoch(), 0);
        slot.word.store(opened.0, Ordering::Release);
        for bucket in self.window(index) {
            bucket.store(0, Ordering::Relaxed);
        }
        transition_event(&guarded.name, Phase::Open, trip, Some(open_for));
        let newly = i64::from(word.phase() == Phase::Closed);
        self.count_transition(Phase::Open, newly);
        opened
    }

    /// The upstream is available again.
    fn close(&self, index: usize, guarded: &mut Guarded, word: Word, reason: &str) -> Word {
        let slot = &self.slots[index];
        guarded.trips = 0;
        guarded.last_failure = 0;
        let closed = Word::new(Phase::Closed, false, word.next_epoch(), 0);
        slot.word.store(closed.0, Ordering::Release);
        transition_event(&guarded.name, Phase::Closed, &reason, None);
        self.count_transition(Phase::Closed, -1);
        closed
    }

    /// Counts a transition to `to` in the metrics; `unavailable` is the change in the number of
    /// upstreams marked unavailable.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn count_transition(&self, to: Phase, unavailable: i64) {
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

    fn window(&self, index: usize) -> &[AtomicU64] {
        let buckets = BUCKETS as usize;
        self.windows
            .get(index * buckets..(index + 1) * buckets)
            .unwrap_or(&[])
    }

    /// Counts a request (and whether it failed) in the slot's sliding window.
    fn count_in_window(&self, index: usize, now: u64, failed: bool) {
        let Some(ratio) = self.settings.ratio else {
            return;
        };
        let width = (nanos(ratio.window) / BUCKETS).max(1);
        let tick = now / width;
        let bucket = &self.window(index)[(tick % BUCKETS) as usize];
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

    /// The trip the failure ratio calls for, if any: enough requests in the window, and a share
    /// of failures at or above the ratio.
    fn ratio_trip(&self, index: usize, now: u64, last: Cause) -> Option<Trip> {
        let ratio = self.settings.ratio?;
        let width = (nanos(ratio.window) / BUCKETS).max(1);
        let tick = now / width;
        let (mut requests, mut failures) = (0u64, 0u64);
        for bucket in self.window(index) {
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

/// A key's fingerprint: its hash, never 0 (which marks a free slot).
fn fingerprint(hash: u64) -> u64 {
    hash.max(1)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// `duration` rounded up to whole seconds, and at least one: what `Retry-After` can state.
fn whole_seconds(duration: Duration) -> Duration {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    Duration::from_secs(seconds.max(1))
}

/// Keeps the key's name for events, once, and at most [`MAX_NAME`] bytes of it.
fn set_name(guarded: &mut Guarded, name: &dyn fmt::Display) {
    if guarded.name.is_empty() {
        let _ = write!(guarded.name, "{}", Bounded(name));
    }
}

/// Displays at most [`MAX_NAME`] bytes of a name, cut at a character boundary, with `...` where
/// it was cut.
struct Bounded<'a>(&'a dyn fmt::Display);

impl fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Cut<'a, 'b> {
            out: &'a mut fmt::Formatter<'b>,
            left: usize,
            cut: bool,
        }
        impl fmt::Write for Cut<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                if self.cut {
                    return Ok(());
                }
                if s.len() <= self.left {
                    self.left -= s.len();
                    return self.out.write_str(s);
                }
                let mut end = self.left;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                self.cut = true;
                self.out.write_str(&s[..end])?;
                self.out.write_str("...")
            }
        }
        let mut cut = Cut {
            out: f,
            left: MAX_NAME,
            cut: false,
        };
        write!(cut, "{}", self.0)
    }
}

/// The event every transition emits.
fn transition_event(name: &str, to: Phase, reason: &dyn fmt::Display, open_for: Option<Duration>) {
    let message = match to {
        Phase::Open => "upstream marked unavailable",
        Phase::HalfOpen => "upstream open time over: probing",
        Phase::Closed => "upstream available again",
    };
    tracing::event!(
        target: TARGET,
        Level::WARN,
        gateway.upstream = name,
        gateway.upstream_state = to.as_str(),
        reason = %reason,
        gateway.open_ms = open_for.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        "{message}",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u64 = 0x5eed_0000_0000_0001;
    const SECOND: Duration = Duration::from_secs(1);

    fn table(change: impl FnOnce(&mut Settings)) -> Table {
        let mut settings = Settings {
            jitter: 0.0,
            ..Settings::default()
        };
        change(&mut settings);
        Table::new(settings)
    }

    fn refused() -> Outcome {
        Outcome::Failure(Cause::Kind(ProxyErrorKind::ConnectionRefused))
    }

    /// Admits one request for `key` and records `outcome` for it; returns its admission.
    fn request(table: &Table, key: u64, outcome: Outcome) -> Admission {
        let admission = table.admit(key, &"upstream");
        table.record(admission, key, outcome, &"upstream");
        admission
    }

    fn retry_after(admission: Admission) -> Option<Duration> {
        match admission {
            Admission::Refused(refusal) => Some(refusal.retry_after),
            _ => None,
        }
    }

    fn phase(table: &Table, key: u64) -> Option<Phase> {
        let index = table.find(fingerprint(key))?;
        Some(Word(table.slots[index].word.load(Ordering::Acquire)).phase())
    }

    #[test]
    fn the_word_keeps_every_field_apart() {
        for phase in [Phase::Closed, Phase::Open, Phase::HalfOpen] {
            for probing in [false, true] {
                for epoch in [0, 1, EPOCH_MASK as u32] {
                    for failures in [0, 7, u32::MAX] {
                        let word = Word::new(phase, probing, epoch, failures);
                        assert_eq!(word.phase(), phase);
                        assert_eq!(word.probing(), probing);
                        assert_eq!(word.epoch(), epoch);
                        assert_eq!(word.failures(), failures);
                    }
                }
            }
        }
        assert_eq!(
            Word::new(Phase::Open, false, EPOCH_MASK as u32, 0).next_epoch(),
            0
        );
    }

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

    /// Trips `KEY` and waits out its open time.
    async fn trip_and_wait(table: &Table) {
        for _ in 0..table.settings.consecutive_failures {
            request(table, KEY, refused());
        }
        assert_eq!(phase(table, KEY), Some(Phase::Open));
        let Admission::Refused(refusal) = table.admit(KEY, &"upstream") else {
            panic!("open refuses");
        };
        tokio::time::advance(refusal.retry_after).await;
    }

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

    #[test]
    fn jitter_only_shortens_the_open_time() {
        let settings = Settings {
            jitter: 0.2,
            ..Settings::default()
        };
        let times: Vec<Duration> = (0..200).map(|_| settings.open_for(3)).collect();
        for time in &times {
            assert!(*time > Duration::from_secs(24) && *time <= Duration::from_secs(30));
        }
        assert!(times.iter().any(|t| *t != times[0]), "jitter never varied");
        let capped = Settings {
            jitter: 0.0,
            ..Settings::default()
        };
        assert_eq!(capped.open_for(1000), Duration::from_secs(300));
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

    #[test]
    fn whole_seconds_round_up_and_are_never_zero() {
        assert_eq!(whole_seconds(Duration::ZERO), SECOND);
        assert_eq!(whole_seconds(Duration::from_nanos(1)), SECOND);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2 * SECOND);
        assert_eq!(whole_seconds(10 * SECOND), 10 * SECOND);
    }

    #[test]
    fn names_are_bounded() {
        let long = "é".repeat(300);
        let shown = Bounded(&long).to_string();
        assert!(shown.len() <= MAX_NAME + 3, "{}", shown.len());
        assert!(shown.ends_with("..."));
        assert_eq!(Bounded(&"short").to_string(), "short");
    }
}
