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
//! gateway's own decision about an overloaded upstream: it never counts as a failure of the
//! upstream, and the request never reaches the count of failures.
//!
//! # Observing it
//!
//! - A refused request's span gets `gateway.concurrency_limit`: the limit that refused it.
//! - Each refused request is a `DEBUG` event ("upstream request failed", `error.type`
//!   `connection_limit_reached`): the fall of the limit is the news, not every request it turns
//!   away.
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

mod controller;
mod refusal;
mod settings;
mod table;

pub use refusal::LimitReached;
pub use settings::AdaptiveLimit;

pub(crate) use table::{Limits, Permit};

#[cfg(test)]
mod fixture;
