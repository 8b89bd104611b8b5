//! What the unit tests of the adaptive limit share: a table with windows shorter than any
//! latency, and an upstream whose latency grows with its queue.

use std::sync::Arc;
use std::time::Duration;

use http::Request;

use super::settings::AdaptiveLimit;
use super::table::Limits;

/// A table with windows of 1 ms.
pub(super) fn limits(settings: AdaptiveLimit) -> Arc<Limits> {
    Arc::new(Limits::new(
        // Windows shorter than any latency here: one closes per round.
        settings.window(Duration::from_millis(1)),
        #[cfg(feature = "metrics")]
        None,
    ))
}

/// A request without a body: sampled.
pub(super) fn get() -> Request<()> {
    Request::get("http://127.0.0.1:3000/").body(()).unwrap()
}

/// The upstream the tests limit.
pub(super) const UPSTREAM: u64 = 42;

/// One window of traffic against an upstream that serves `capacity` requests at a time in
/// `service` each and queues the rest: as many requests as the limit admits (at most
/// `offered`), each answered after the time the queue makes it wait. Returns the limit
/// after the window.
pub(super) async fn window(
    limits: &Arc<Limits>,
    offered: u32,
    capacity: u32,
    service: Duration,
) -> u32 {
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
