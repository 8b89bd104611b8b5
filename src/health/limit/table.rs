//! The limits of every upstream one layer limits: a fixed table of slots where a request takes
//! a place under its upstream's limit (a [`Permit`]) or is refused, and where the samples of
//! the upstream's time gather until a window closes.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, header};
use tokio::time::Instant;

use crate::health::clock::{Clock, nanos};

use super::controller::Controller;
use super::refusal::Refusal;
use super::settings::AdaptiveLimit;

/// Slots per group: an upstream's hash picks a group, and it takes any free slot of it.
const GROUP: usize = 8;
/// A slot unused this long is given to another upstream.
const IDLE: Duration = Duration::from_secs(60);
/// The least time between two warnings about one upstream's falling limit.
/// The most samples a window waits for before it may close (fewer while the limit is lower).
const WINDOW_SAMPLES: u32 = 4;

pub(super) struct Slot {
    /// The hash of the upstream's key; 0 for a free slot.
    fingerprint: AtomicU64,
    limit: AtomicU32,
    in_flight: AtomicU32,
    /// The most requests in flight during the open window.
    peak: AtomicU32,
    /// When the slot last admitted a request (nanoseconds since the table was made).
    used: AtomicU64,
    /// The open window: when it began, the sum of its samples (nanoseconds) and their count.
    window_start: AtomicU64,
    sum: AtomicU64,
    count: AtomicU32,
    controller: Mutex<Controller>,
}

/// The limits of every upstream one layer limits.
pub(crate) struct Limits {
    settings: AdaptiveLimit,
    clock: Clock,
    slots: Box<[Slot]>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::HealthMetrics>,
}

impl Limits {
    pub(crate) fn new(
        settings: AdaptiveLimit,
        #[cfg(feature = "metrics")] metrics: Option<crate::metrics::HealthMetrics>,
    ) -> Self {
        let slots = settings
            .max_upstreams
            .max(GROUP)
            .checked_next_power_of_two()
            .unwrap_or(1 << 16)
            .min(1 << 16);
        let initial = settings.initial.min(settings.max);
        Limits {
            clock: Clock::new(),
            slots: (0..slots)
                .map(|_| Slot {
                    fingerprint: AtomicU64::new(0),
                    limit: AtomicU32::new(initial),
                    in_flight: AtomicU32::new(0),
                    peak: AtomicU32::new(0),
                    used: AtomicU64::new(0),
                    window_start: AtomicU64::new(0),
                    sum: AtomicU64::new(0),
                    count: AtomicU32::new(0),
                    controller: Mutex::new(Controller::new(initial, Arc::from(""), 0)),
                })
                .collect(),
            settings,
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Admits a request to the upstream hashed `hash` (named by `name`, formatted only when the
    /// upstream takes a slot), or refuses it. `Ok(None)`: the upstream has no slot, and is not
    /// limited.
    pub(crate) fn acquire<B>(
        self: &Arc<Self>,
        hash: u64,
        name: &dyn fmt::Display,
        request: &Request<B>,
    ) -> Result<Option<Permit>, Refusal> {
        // 0 marks a free slot.
        let fingerprint = hash.max(1);
        let now = self.now();
        let Some(index) = self.slot_of(fingerprint, name, now) else {
            return Ok(None);
        };
        let slot = &self.slots[index];
        slot.used.store(now, Ordering::Relaxed);
        let mut in_flight = slot.in_flight.load(Ordering::Relaxed);
        loop {
            let limit = slot.limit.load(Ordering::Relaxed);
            if in_flight >= limit {
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.metrics {
                    if let Ok(controller) = slot.controller.lock() {
                        metrics.limit_refused(controller.name());
                    }
                }
                return Err(Refusal {
                    limit,
                    retry_after: self.settings.retry_after,
                });
            }
            match slot.in_flight.compare_exchange_weak(
                in_flight,
                in_flight + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    slot.peak.fetch_max(in_flight + 1, Ordering::Relaxed);
                    break;
                }
                Err(actual) => in_flight = actual,
            }
        }
        Ok(Some(Permit {
            limits: self.clone(),
            index,
            sent: Instant::now(),
            sampled: without_body(request),
            released: false,
        }))
    }

    /// The slot of `fingerprint`: its own, a free one, or one idle for long enough.
    fn slot_of(&self, fingerprint: u64, name: &dyn fmt::Display, now: u64) -> Option<usize> {
        let groups = self.slots.len() / GROUP;
        let first = (fingerprint as usize & (groups - 1)) * GROUP;
        let group = first..first + GROUP;
        if let Some(index) = group
            .clone()
            .find(|&i| self.slots[i].fingerprint.load(Ordering::Acquire) == fingerprint)
        {
            return Some(index);
        }
        for index in group {
            let slot = &self.slots[index];
            let held = slot.fingerprint.load(Ordering::Acquire);
            let idle = held == 0
                || (slot.in_flight.load(Ordering::Relaxed) == 0
                    && now.saturating_sub(slot.used.load(Ordering::Relaxed)) >= nanos(IDLE));
            if idle
                && slot
                    .fingerprint
                    .compare_exchange(held, fingerprint, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.reset(slot, name, now);
                return Some(index);
            }
        }
        None
    }

    /// A slot taken by a new upstream: the initial limit, no baseline, the upstream's name.
    fn reset(&self, slot: &Slot, name: &dyn fmt::Display, now: u64) {
        let initial = self.settings.initial.min(self.settings.max);
        let mut controller = slot.controller.lock().unwrap_or_else(|e| e.into_inner());
        slot.limit.store(initial, Ordering::Relaxed);
        slot.window_start.store(now, Ordering::Relaxed);
        slot.sum.store(0, Ordering::Relaxed);
        slot.count.store(0, Ordering::Relaxed);
        slot.peak.store(0, Ordering::Relaxed);
        slot.used.store(now, Ordering::Relaxed);
        *controller = Controller::new(initial, Arc::from(name.to_string()), now);
    }

    /// A sample of `rtt` for the slot `index`; closes the window when it is over.
    fn sample(&self, index: usize, rtt: Duration) {
        let slot = &self.slots[index];
        slot.sum.fetch_add(nanos(rtt).max(1), Ordering::Relaxed);
        let count = slot.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now();
        let started = slot.window_start.load(Ordering::Relaxed);
        let enough = WINDOW_SAMPLES.min(slot.limit.load(Ordering::Relaxed));
        if now.saturating_sub(started) < nanos(self.settings.window) || count < enough {
            return;
        }
        // One closer per window; the others go on.
        let Ok(mut controller) = slot.controller.try_lock() else {
            return;
        };
        if slot.window_start.load(Ordering::Relaxed) != started {
            return;
        }
        let count = slot.count.swap(0, Ordering::Relaxed);
        let sum = slot.sum.swap(0, Ordering::Relaxed);
        slot.window_start.store(now, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        let average = (sum / u64::from(count)).max(1);
        // The next window's peak starts from what is in flight now.
        let peak = slot
            .peak
            .swap(slot.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        let from = slot.limit.load(Ordering::Relaxed);
        let limit = controller.close_window(&self.settings, average, peak, now);
        slot.limit.store(limit, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.limit_window(
                controller.name(),
                limit,
                slot.in_flight.load(Ordering::Relaxed),
            );
        }
        controller.warn_if_fell(from, limit, average, now);
    }
}

/// Whether a request carries no body the client still has to upload: only those are sampled.
pub(super) fn without_body<B>(request: &Request<B>) -> bool {
    let method = request.method();
    let bodiless = method == Method::GET
        || method == Method::HEAD
        || method == Method::OPTIONS
        || method == Method::DELETE
        || method == Method::TRACE;
    let headers = request.headers();
    bodiless
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|length| length.as_bytes() == b"0")
}

/// A request admitted under an upstream's limit: counted in flight until its response head (or
/// its end before one), when it is dropped.
pub(crate) struct Permit {
    limits: Arc<Limits>,
    index: usize,
    sent: Instant,
    sampled: bool,
    /// Whether its place has been given back.
    released: bool,
}

impl Permit {
    /// The response head arrived: the place is given back, then a sample of the upstream's
    /// time is taken, if the request had no body (so that a window closed by it counts the
    /// requests still in flight, not this one).
    pub(crate) fn answered(mut self) {
        self.release();
        if self.sampled {
            self.limits.sample(self.index, self.sent.elapsed());
        }
    }

    fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.limits.slots[self.index]
                .in_flight
                .fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
impl Limits {
    pub(super) fn settings(&self) -> &AdaptiveLimit {
        &self.settings
    }

    /// The limit and requests in flight of the upstream hashed `hash`, if it has a slot.
    pub(super) fn of(&self, hash: u64) -> Option<(u32, u32)> {
        let fingerprint = hash.max(1);
        self.slots
            .iter()
            .find(|slot| slot.fingerprint.load(Ordering::Acquire) == fingerprint)
            .map(|slot| {
                (
                    slot.limit.load(Ordering::Relaxed),
                    slot.in_flight.load(Ordering::Relaxed),
                )
            })
    }

    /// How many warnings about a falling limit the upstream hashed `hash` was given.
    pub(super) fn warnings(&self, hash: u64) -> u32 {
        let fingerprint = hash.max(1);
        self.slots
            .iter()
            .find(|slot| slot.fingerprint.load(Ordering::Relaxed) == fingerprint)
            .map_or(0, |slot| slot.controller.lock().unwrap().warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::limit::fixture::{UPSTREAM, get, limits};

    #[tokio::test(start_paused = true)]
    async fn requests_above_the_limit_are_refused_and_a_permit_frees_its_place() {
        let limits = limits(AdaptiveLimit::new().initial(2));
        let first = limits.acquire(UPSTREAM, &"u", &get()).unwrap().unwrap();
        let second = limits.acquire(UPSTREAM, &"u", &get()).unwrap().unwrap();
        let refusal = limits.acquire(UPSTREAM, &"u", &get()).err().unwrap();
        assert_eq!(refusal.limit, 2);
        assert_eq!(limits.of(UPSTREAM), Some((2, 2)));
        drop(first);
        second.answered();
        assert_eq!(limits.of(UPSTREAM), Some((2, 0)));
        assert!(limits.acquire(UPSTREAM, &"u", &get()).unwrap().is_some());
        // Another upstream has its own limit.
        assert!(limits.acquire(7, &"other", &get()).unwrap().is_some());
    }

    #[test]
    fn only_requests_without_a_body_are_sampled() {
        assert!(without_body(&get()));
        let post = Request::post("/").body(()).unwrap();
        assert!(!without_body(&post));
        let get_with_body = Request::get("/")
            .header("content-length", "5")
            .body(())
            .unwrap();
        assert!(!without_body(&get_with_body));
        let chunked = Request::delete("/")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        assert!(!without_body(&chunked));
    }
}
