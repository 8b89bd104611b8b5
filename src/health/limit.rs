//! Brownouts: an adaptive concurrency limit per upstream, refusing what the upstream cannot serve
//! quickly with `503 connection_limit_reached` and `Retry-After`.
//!
//! An upstream that slows down (a saturated database, a pause, an autoscaler catching up) fails
//! nothing until the timeouts: every request waits, requests in flight pile up in the gateway,
//! the backlog makes the upstream slower still, and clients get a 504 long after they could have
//! been told to come back. [`AdaptiveLimit`], given to
//! [`UpstreamHealthLayer::adaptive_limit`](super::UpstreamHealthLayer::adaptive_limit), keeps the
//! requests in flight to each upstream near the number it serves without queueing, and refuses
//! the rest at once, without a connection.
//!
//! # The controller: a gradient on a sampled baseline
//!
//! Each upstream has a limit, a number of requests in flight, and a window of latency samples
//! (100 ms by default). When a window closes, the limit moves by the gradient between the
//! upstream's unloaded latency (its *baseline*) and the window's average:
//!
//! ```text
//! gradient  = clamp(baseline × tolerance / average, 0.5, 2)
//! new limit = clamp(limit × gradient + headroom, 1, max)    headroom = √limit if gradient ≥ 1, else 0
//! ```
//!
//! While the upstream answers in its usual time, the gradient is at least 1 and the limit rises
//! (by at least √limit per window: a recovering upstream gets its load back within a second or
//! two), as long as the window's traffic came to at least half of it: a limit that light traffic
//! never tested is not raised, so that the first burst after a quiet time meets a limit learnt
//! under load, not one grown unchecked to the cap. When requests queue inside the upstream, latency grows in proportion to the excess, and
//! the limit falls in the same proportion (at most by half per window), to where the upstream's
//! queue stays short: between `tolerance × capacity` and that plus its square root, for an
//! upstream that serves `capacity` requests at a time.
//!
//! The baseline is the lowest window average seen. A minimum only falls, so every
//! [`baseline_interval`](AdaptiveLimit::baseline_interval) (60 s) it is measured again: the limit
//! is held at 1 for one window, to let the requests in flight drain, then one more window
//! measures the upstream unloaded, and that average is the new baseline; the limit returns to
//! where it was. An upstream whose usual latency has grown for good (a new release, a bigger
//! page) is then judged against its new self, not pinned at a limit of 1 forever.
//!
//! Why this controller: it is the one Envoy's adaptive concurrency filter uses (a gradient on a
//! sampled minimum latency), with Netflix's Gradient2 headroom of √limit. Netflix's Vegas
//! estimates the queue from the same two latencies but moves the limit by a fixed step per
//! window, slow to recover a large limit after a brownout; AIMD needs a drop or a timeout to
//! back off, which is exactly what a brownout gives only after the clients have waited; and
//! Gradient2's long-term average as the baseline drifts upward during a long overload, so that
//! the limit creeps back up while the upstream is still slow. A periodic measurement at a limit
//! of 1 costs one or two windows of refusals a minute and keeps the baseline honest.
//!
//! # What is measured
//!
//! Only the upstream's own time: from the call to the inner service to the response head, for
//! requests without a body (no `Content-Length` above 0, no `Transfer-Encoding`, and a method
//! that carries none: `GET`, `HEAD`, `OPTIONS`, `DELETE`, `TRACE`). A request with a body still
//! counts in flight, but its time includes the client's upload, which a client controls, and is
//! not sampled. A request that fails, times out or is dropped before its head is not sampled
//! either (a quick refused connection is not a fast upstream, and a client that goes away says
//! nothing about it). A request stops counting in flight at its response head: the pace at which
//! a client reads the body must not use up the limit of every other client.
//!
//! # The refusal
//!
//! A request above the limit is refused at once: a [`ProxyError`](crate::ProxyError) of kind
//! `connection_limit_reached` (503, not sent, retryable for every method), with
//! [`retry_after`](AdaptiveLimit::retry_after) (1 s) as its `Retry-After` and [`LimitReached`]
//! as its source. `GatewayErrorLayer` renders it as any other:
//!
//! ```text
//! HTTP/1.1 503 Service Unavailable
//! retry-after: 1
//! proxy-status: edge-1; error=connection_limit_reached
//! ```
//!
//! A gRPC caller gets `UNAVAILABLE` (14) with `grpc-retry-pushback-ms: 1000`. A refusal is the
//! gateway's own decision about an overloaded upstream: it never counts as a failure for the
//! breaker, and the request never reaches the breaker.
//!
//! # Observing it
//!
//! - A refused request's span gets `gateway.concurrency_limit`: the limit that refused it.
//! - When a window halves the limit (from 4 or more), a `WARN` event (target `gateway_errors`,
//!   at most one per upstream every 10 s): "upstream concurrency limit fell", with
//!   `gateway.upstream`, `gateway.concurrency_limit` and `from`.
//! - With the `metrics` feature and [`metrics`](super::UpstreamHealthLayer::metrics): the limit
//!   and the requests in flight per upstream at each window, and a counter of refusals (see
//!   [`metrics`](crate::metrics)). The table bounds the number of upstreams, and so of series.
//!
//! # Memory and cost
//!
//! A table of [`max_upstreams`](AdaptiveLimit::max_upstreams) slots (256) of about 120 bytes,
//! made with the layer; an upstream takes a slot at its first request and gives it up after a
//! minute without requests. When every slot of its group is busy, an upstream is not limited.
//! Without an adaptive limit, nothing of this is made and a request costs nothing more. With
//! one, an admitted request costs a few atomic operations, no lock and no allocation; the lock of
//! an upstream's controller is tried (never waited for) once per window.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, header};
use tokio::time::Instant;
use tracing::Level;

use crate::trace::TARGET;

/// Slots per group: an upstream's hash picks a group, and it takes any free slot of it.
const GROUP: usize = 8;
/// A slot unused this long is given to another upstream.
const IDLE: Duration = Duration::from_secs(60);
/// The least time between two warnings about one upstream's falling limit.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The most samples a window waits for before it may close (fewer while the limit is lower).
const WINDOW_SAMPLES: u32 = 4;

/// The settings of the adaptive concurrency limit: see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::health::{AdaptiveLimit, UpstreamHealthLayer};
///
/// // The defaults, spelled out.
/// let limit = AdaptiveLimit::new()
///     .initial(20)
///     .max(1_000)
///     .window(Duration::from_millis(100))
///     .tolerance(1.1)
///     .baseline_interval(Duration::from_secs(60))
///     .retry_after(Duration::from_secs(1));
/// let layer = UpstreamHealthLayer::new().adaptive_limit(limit);
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    initial: u32,
    max: u32,
    window: Duration,
    tolerance: f64,
    baseline_interval: Duration,
    retry_after: Duration,
    max_upstreams: usize,
}

impl Default for AdaptiveLimit {
    fn default() -> Self {
        AdaptiveLimit::new()
    }
}

impl AdaptiveLimit {
    /// The defaults: a limit of 20 to begin with, at most 1,000, windows of 100 ms, a tolerance
    /// of 1.1, the baseline measured again every 60 s, `Retry-After: 1`, 256 upstreams.
    pub fn new() -> Self {
        AdaptiveLimit {
            initial: 20,
            max: 1_000,
            window: Duration::from_millis(100),
            tolerance: 1.1,
            baseline_interval: Duration::from_secs(60),
            retry_after: Duration::from_secs(1),
            max_upstreams: 256,
        }
    }

    /// The limit an upstream starts with (default 20; at least 1, at most [`max`](Self::max)).
    pub fn initial(mut self, limit: u32) -> Self {
        self.initial = limit.max(1);
        self
    }

    /// The highest the limit may rise (default 1,000; at least 1). A cap for an upstream that
    /// stays fast under any load, whose limit would otherwise grow without end.
    pub fn max(mut self, limit: u32) -> Self {
        self.max = limit.max(1);
        self
    }

    /// How long a window of samples lasts (default 100 ms, at least 1 ms): the limit moves once
    /// per window. A window closes only once it holds 4 samples (fewer while the limit is
    /// lower), so an upstream with little traffic is judged on enough of it.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }

    /// How much slower than its baseline the upstream may answer before the limit falls
    /// (default 1.1, at least 1.0): the share of queueing accepted in exchange for keeping the
    /// upstream busy.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = if tolerance.is_nan() {
            1.1
        } else {
            tolerance.clamp(1.0, 100.0)
        };
        self
    }

    /// How often the upstream's baseline latency is measured again (default 60 s), holding the
    /// limit at 1 for two windows. `Duration::MAX` never measures it again.
    pub fn baseline_interval(mut self, interval: Duration) -> Self {
        self.baseline_interval = interval;
        self
    }

    /// The `Retry-After` of a refusal (default 1 s), rounded up to whole seconds when rendered.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// How many upstreams are limited at most (default 256, rounded up to a power of two, at
    /// least 8). An upstream whose group of 8 slots is full is not limited.
    pub fn max_upstreams(mut self, upstreams: usize) -> Self {
        self.max_upstreams = upstreams;
        self
    }
}

/// Why [`UpstreamHealth`](super::UpstreamHealth) refused a request: as many requests as the
/// upstream's adaptive concurrency limit allows were already in flight, and the request was not
/// sent.
///
/// The refusal is a [`ProxyError`](crate::ProxyError) of kind `connection_limit_reached` (503,
/// not sent) with this as its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReached {
    // Zero-sized: boxing it as an error's source allocates nothing.
    _private: (),
}

impl LimitReached {
    pub(crate) const fn new() -> Self {
        LimitReached { _private: () }
    }
}

impl fmt::Display for LimitReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream's concurrency limit is reached; the request was not sent to it")
    }
}

impl StdError for LimitReached {}

/// What only the window's closer touches, under the slot's lock.
struct Controller {
    /// The limit, unrounded.
    limit: f64,
    /// The upstream's unloaded latency, in nanoseconds; 0 until the first window.
    baseline: u64,
    /// When the baseline was last measured (nanoseconds since the table was made).
    measured: u64,
    /// While the baseline is measured again: the limit to return to, and whether the draining
    /// window is over.
    probe: Option<(f64, bool)>,
    /// When the last warning about a falling limit was given.
    warned: Option<u64>,
    /// How many were given: what the tests read, whichever subscriber another test's thread
    /// has left the event's callsite to.
    #[cfg(test)]
    warnings: u32,
    /// The upstream's key, as events and metrics show it (shared: a metric's attribute takes a
    /// reference, not a copy).
    name: Arc<str>,
}

struct Slot {
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
    started: Instant,
    slots: Box<[Slot]>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::HealthMetrics>,
}

/// A refusal: the limit that refused.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) limit: u32,
    pub(crate) retry_after: Duration,
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
            started: Instant::now(),
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
                    controller: Mutex::new(Controller {
                        limit: f64::from(initial),
                        baseline: 0,
                        measured: 0,
                        probe: None,
                        warned: None,
                        #[cfg(test)]
                        warnings: 0,
                        name: Arc::from(""),
                    }),
                })
                .collect(),
            settings,
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    #[cfg(test)]
    fn settings(&self) -> &AdaptiveLimit {
        &self.settings
    }

    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.started))
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
                        metrics.limit_refused(&controller.name);
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
        *controller = Controller {
            limit: f64::from(initial),
            baseline: 0,
            measured: now,
            probe: None,
            warned: None,
            #[cfg(test)]
            warnings: 0,
            name: Arc::from(name.to_string()),
        };
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
        let limit = self.close_window(&mut controller, average, peak, now);
        slot.limit.store(limit, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(metrics) = &self.metrics {
            metrics.limit_window(
                &controller.name,
                limit,
                slot.in_flight.load(Ordering::Relaxed),
            );
        }
        if from >= 4 && limit <= from / 2 && controller.probe.is_none() {
            let quiet = controller
                .warned
                .is_none_or(|at| now.saturating_sub(at) >= nanos(WARN_EVERY));
            if quiet {
                controller.warned = Some(now);
                #[cfg(test)]
                {
                    controller.warnings += 1;
                }
                tracing::event!(
                    target: TARGET,
                    Level::WARN,
                    gateway.upstream = %controller.name,
                    gateway.concurrency_limit = limit,
                    from,
                    baseline_ms = controller.baseline as f64 / 1e6,
                    average_ms = average as f64 / 1e6,
                    "upstream concurrency limit fell: it answers slower than its baseline",
                );
            }
        }
    }

    /// The controller's step at the end of a window whose samples averaged `average`
    /// nanoseconds, with at most `peak` requests in flight: the new limit.
    fn close_window(&self, controller: &mut Controller, average: u64, peak: u32, now: u64) -> u32 {
        let settings = &self.settings;
        let max = f64::from(settings.max);
        match controller.probe {
            Some((saved, false)) => {
                // The draining window is over: the next one measures the upstream unloaded.
                controller.probe = Some((saved, true));
                return 1;
            }
            Some((saved, true)) => {
                controller.probe = None;
                controller.baseline = average;
                controller.measured = now;
                controller.limit = saved;
                return saved.round() as u32;
            }
            None => {}
        }
        if controller.baseline == 0 || average < controller.baseline {
            controller.baseline = average;
        }
        if controller.measured == 0 {
            controller.measured = now;
        }
        let gradient =
            (controller.baseline as f64 * settings.tolerance / average as f64).clamp(0.5, 2.0);
        let limit = controller.limit;
        // A limit the traffic did not come near says nothing about what the upstream can take:
        // raising it would only let the next burst in unjudged. Falls are always taken.
        let unused = f64::from(peak) * 2.0 < limit;
        if gradient < 1.0 || !unused {
            // Headroom only while the upstream keeps up: a slow one loses limit in proportion.
            let headroom = if gradient >= 1.0 { limit.sqrt() } else { 0.0 };
            controller.limit = (limit * gradient + headroom).clamp(1.0, max);
        }
        if now.saturating_sub(controller.measured) >= nanos(settings.baseline_interval) {
            controller.probe = Some((controller.limit, false));
            return 1;
        }
        controller.limit.round().clamp(1.0, max) as u32
    }

    /// The limit and requests in flight of the upstream hashed `hash`, if it has a slot.
    #[cfg(test)]
    fn of(&self, hash: u64) -> Option<(u32, u32)> {
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
}

/// Whether a request carries no body the client still has to upload: only those are sampled.
fn without_body<B>(request: &Request<B>) -> bool {
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

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    //! The controller on paused time: an upstream whose latency the test sets, and requests
    //! admitted and answered in rounds.

    use super::*;

    fn limits(settings: AdaptiveLimit) -> Arc<Limits> {
        Arc::new(Limits::new(
            // Windows shorter than any latency here: one closes per round.
            settings.window(Duration::from_millis(1)),
            #[cfg(feature = "metrics")]
            None,
        ))
    }

    fn get() -> Request<()> {
        Request::get("http://127.0.0.1:3000/").body(()).unwrap()
    }

    const UPSTREAM: u64 = 42;

    /// One window of traffic against an upstream that serves `capacity` requests at a time in
    /// `service` each and queues the rest: as many requests as the limit admits (at most
    /// `offered`), each answered after the time the queue makes it wait. Returns the limit
    /// after the window.
    async fn window(limits: &Arc<Limits>, offered: u32, capacity: u32, service: Duration) -> u32 {
        let mut permits = Vec::new();
        while permits.len() < offered as usize {
            match limits.acquire(UPSTREAM, &"upstream", &get()) {
                Ok(Some(permit)) => permits.push(permit),
                Ok(None) => panic!("not tracked"),
                Err(_) => break,
            }
        }
        let in_flight = permits.len() as u32;
        // All in flight at once: each waits for its turn, so the average grows with the queue.
        let latency = service.mul_f64((f64::from(in_flight) / f64::from(capacity)).max(1.0));
        tokio::time::advance(latency.max(limits.settings().window)).await;
        for permit in permits {
            permit.answered();
        }
        limits.of(UPSTREAM).unwrap().0
    }

    #[tokio::test(start_paused = true)]
    async fn it_rises_while_the_upstream_keeps_up_and_never_above_its_cap() {
        let limits = limits(AdaptiveLimit::new().initial(5).max(64));
        let mut last = 5;
        let mut seen = Vec::new();
        for _ in 0..20 {
            let limit = window(&limits, 1_000, 1_000, Duration::from_millis(10)).await;
            assert!(limit >= last, "a fast upstream never loses limit: {seen:?}");
            assert!(limit <= 64, "never above its cap: {limit}");
            seen.push(limit);
            last = limit;
        }
        assert_eq!(last, 64, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn it_falls_to_what_a_slow_upstream_serves_and_never_below_one() {
        let limits = limits(AdaptiveLimit::new().initial(100).max(1_000));
        // The baseline: the upstream unloaded.
        window(&limits, 4, 10, Duration::from_millis(10)).await;
        let mut seen = Vec::new();
        for _ in 0..30 {
            seen.push(window(&limits, 1_000, 10, Duration::from_millis(10)).await);
        }
        // Around tolerance × capacity (11) to that plus its square root (14): the upstream kept
        // busy, its queue short.
        let settled = &seen[10..];
        assert!(
            settled.iter().all(|limit| (5..=20).contains(limit)),
            "{seen:?}"
        );
        let mean = settled.iter().sum::<u32>() as f64 / settled.len() as f64;
        assert!((9.0..=15.0).contains(&mean), "{seen:?}");
        // A brownout: the upstream serves one at a time, ten times slower.
        let mut seen = Vec::new();
        for _ in 0..30 {
            let limit = window(&limits, 1_000, 1, Duration::from_millis(100)).await;
            assert!(limit >= 1, "never below 1");
            seen.push(limit);
        }
        assert_eq!(*seen.last().unwrap(), 1, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovering_upstream_gets_its_load_back_within_a_second() {
        let limits = limits(AdaptiveLimit::new().initial(50).max(200));
        window(&limits, 4, 100, Duration::from_millis(10)).await;
        for _ in 0..30 {
            window(&limits, 1_000, 1, Duration::from_millis(200)).await;
        }
        assert_eq!(limits.of(UPSTREAM).unwrap().0, 1);
        // It recovers: each request at the low limit finds it fast again.
        let recovered = Instant::now();
        while window(&limits, 1_000, 100, Duration::from_millis(10)).await < 100 {
            assert!(recovered.elapsed() < Duration::from_secs(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn light_traffic_does_not_raise_the_limit() {
        let limits = limits(AdaptiveLimit::new().initial(20).max(1_000));
        for _ in 0..50 {
            window(&limits, 4, 1_000, Duration::from_millis(10)).await;
        }
        assert_eq!(limits.of(UPSTREAM).unwrap().0, 20, "never tested above 4");
        // Traffic that uses it: it rises.
        for _ in 0..5 {
            window(&limits, 1_000, 1_000, Duration::from_millis(10)).await;
        }
        assert!(limits.of(UPSTREAM).unwrap().0 > 40);
    }

    #[tokio::test(start_paused = true)]
    async fn the_baseline_is_measured_again_at_a_limit_of_one() {
        let limits = limits(
            AdaptiveLimit::new()
                .initial(20)
                .max(100)
                .baseline_interval(Duration::from_secs(10)),
        );
        window(&limits, 4, 100, Duration::from_millis(10)).await;
        // The upstream's usual latency grows for good, five times, with no queue.
        let slower = Duration::from_millis(50);
        let mut seen = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(9) {
            seen.push(window(&limits, 1_000, 1_000, slower).await);
        }
        assert_eq!(
            *seen.last().unwrap(),
            1,
            "judged slow against the old baseline: {seen:?}"
        );
        // The interval is over: measured again (unloaded, at a limit of 1), the upstream is
        // judged against its new self, and its limit rises to the cap.
        let mut after = Vec::new();
        while start.elapsed() < Duration::from_secs(12) {
            after.push(window(&limits, 1_000, 1_000, slower).await);
        }
        assert_eq!(*after.last().unwrap(), 100, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_baseline_probe_holds_the_limit_at_one_for_two_windows_then_gives_it_back() {
        let limits = limits(
            AdaptiveLimit::new()
                .initial(50)
                .max(50)
                .baseline_interval(Duration::from_secs(1)),
        );
        let mut seen = Vec::new();
        while seen.len() < 150 {
            seen.push(window(&limits, 1_000, 1_000, Duration::from_millis(10)).await);
        }
        // Every second: the drain and the measurement at 1, then straight back to the cap.
        let probes = seen.windows(3).filter(|w| w == &[1, 1, 50]).count();
        assert!((1..=2).contains(&probes), "{seen:?}");
        assert!(
            seen.iter().all(|&limit| limit == 1 || limit == 50),
            "{seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sharp_fall_is_a_warning_at_most_once_in_ten_seconds() {
        let warnings = crate::testing::Warnings::default();
        let _guard = warnings.install();
        let limits = limits(AdaptiveLimit::new().initial(64).max(64));
        let begun = Instant::now();
        window(&limits, 4, 1_000, Duration::from_millis(10)).await;
        let given = |limits: &Limits| {
            let slot = limits
                .slots
                .iter()
                .find(|slot| slot.fingerprint.load(Ordering::Relaxed) == UPSTREAM)
                .unwrap();
            slot.controller.lock().unwrap().warnings
        };
        // Brownouts one after another (ten times slower), each halving the limit at least once.
        for _ in 0..5 {
            for _ in 0..3 {
                window(&limits, 1_000, 1_000, Duration::from_millis(100)).await;
            }
            while window(&limits, 1_000, 1_000, Duration::from_millis(10)).await < 64 {}
        }
        assert!(begun.elapsed() < Duration::from_secs(10));
        assert_eq!(given(&limits), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..3 {
            window(&limits, 1_000, 1_000, Duration::from_millis(100)).await;
        }
        assert_eq!(given(&limits), 2);
        // As a subscriber sees them (when another test's thread has not left the callsite
        // cached as unwanted): never more, and with the upstream and the limits.
        let seen = warnings.messages();
        let falls: Vec<_> = seen
            .iter()
            .filter(|m| m.contains("concurrency limit fell"))
            .collect();
        assert!(falls.len() <= 2, "{seen:?}");
    }

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
