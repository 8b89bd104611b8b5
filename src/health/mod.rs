//! Outages: remember a failing upstream, answer `503 destination_unavailable` with `Retry-After`
//! while it is down, and let one probe at a time find out when it is back.
//!
//! Without it, [`GatewayErrorLayer`](crate::GatewayErrorLayer) answers each failure on its own
//! and forgets it. During an outage that costs every request a socket and a refused connect, or,
//! against an upstream that accepts and never answers, the whole upstream timeout; clients learn
//! nothing about when to come back; and when the upstream returns, the whole backlog reaches it at
//! once.
//!
//! [`UpstreamHealthLayer`] keeps a state per upstream, shared by every clone of the layer and of
//! its services:
//!
//! | state | requests | leaves it |
//! |---|---|---|
//! | closed | forwarded; failures are counted | after 5 consecutive failures (or a [failure ratio](UpstreamHealthLayer::failure_ratio)): open |
//! | open | refused at once, without a connection: 503 with `Retry-After` | when the open time is over: half-open |
//! | half-open | exactly one forwarded as the probe, the others refused | the probe's answer: closed; its failure: open again, for longer |
//!
//! RFC 9209 names the answer: `destination_unavailable`, "the intermediary considers the next hop
//! to be unavailable; e.g., recent attempts to communicate with it may have failed", 503.
//!
//! # Where it goes
//!
//! Next to the client, inside `GatewayErrorLayer` and after the code that points the request at its
//! upstream, so that it sees the upstream the request really goes to (by default the request URI's
//! scheme and authority), and a router that picks among upstreams gets one state per upstream:
//!
//! ```text
//! GatewayErrorLayer        renders the refusal (503, Proxy-Status, Retry-After, body, gRPC)
//!   map_request            points the request at its upstream
//!     UpstreamHealthLayer  keyed by that upstream; refuses while it is unavailable
//!       client             hyper-util, reqwest, ...
//! ```
//!
//! Placed outside `GatewayErrorLayer`, it would compile and never work: it would see only the
//! answers `GatewayErrorLayer` makes of failures and timeouts (responses), never the failures
//! themselves, and never mark an upstream unavailable. It notices: every answer
//! `GatewayErrorLayer` generates carries a [`ProxyError`](crate::ProxyError) extension, and at the
//! first response with one, the layer emits a `WARN` event (target `gateway_errors`, once per
//! layer) that says it is placed outside and to move it inside, next to the client.
//!
//! A refusal is an error, a [`ProxyError`](crate::ProxyError) of kind `destination_unavailable`
//! with the delay until the next probe as its `retry_after` and [`UpstreamUnavailable`] as its
//! source, and `GatewayErrorLayer` renders it as it renders any other:
//!
//! ```text
//! HTTP/1.1 503 Service Unavailable
//! content-type: application/problem+json
//! retry-after: 7
//! proxy-status: edge-1; error=destination_unavailable
//! cache-control: no-store
//!
//! {"type":"about:blank","title":"Service Unavailable","status":503,
//!  "detail":"The upstream server is currently unavailable.",
//!  "error_type":"destination_unavailable","retryable":true,"retry_after":7}
//! ```
//!
//! - `Retry-After` is the whole seconds left until the next probe, rounded up and never 0 (1 while
//!   a probe is in flight); the body's `retry_after` says the same.
//! - `retryable` is `true` for every method: the request was never sent.
//! - A gRPC caller gets `UNAVAILABLE` (14), with `grpc-retry-pushback-ms` stating the same delay.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! use gateway_errors::body::UploadBody;
//! use gateway_errors::health::UpstreamHealthLayer;
//! use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let attempts = Arc::new(AtomicUsize::new(0));
//! let counted = attempts.clone();
//! // Stands in for a client whose upstream is down: every connect is refused.
//! let client = tower::service_fn(move |_request: Request<UploadBody<String>>| {
//!     counted.fetch_add(1, Ordering::SeqCst);
//!     async { Err::<Response<String>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) }
//! });
//! let gateway = ServiceBuilder::new()
//!     .layer(GatewayErrorLayer::new())
//!     .layer(UpstreamHealthLayer::new()) // 5 failures in a row, then 10 s unavailable
//!     .service(client);
//!
//! let request = || Request::get("http://127.0.0.1:3000/orders").body(String::new()).unwrap();
//! for _ in 0..5 {
//!     let response = gateway.clone().oneshot(request()).await.unwrap();
//!     assert_eq!(response.status(), StatusCode::BAD_GATEWAY); // connection_refused
//! }
//! // Marked unavailable: answered at once, and the client is not called.
//! let response = gateway.clone().oneshot(request()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(response.headers()["proxy-status"], "gateway; error=destination_unavailable");
//! let seconds: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
//! assert!((1..=10).contains(&seconds));
//! let error = response.extensions().get::<ProxyError>().unwrap();
//! assert_eq!(error.kind(), Some(ProxyErrorKind::DestinationUnavailable));
//! assert!(error.is_retryable());
//! assert_eq!(attempts.load(Ordering::SeqCst), 5);
//! # }
//! ```
//!
//! # Trying it
//!
//! The demo upstream on its own port, and the example gateway in front of it with
//! `--breaker-failures 5` (off without the flag; `--breaker-open` sets the first open time, 10 s by
//! default):
//!
//! ```text
//! $ cargo run --release --example upstream -- --listen 127.0.0.1:3000 &
//! $ cargo run --release --example gateway -- --upstream http://127.0.0.1:3000 --breaker-failures 5
//! listening on http://127.0.0.1:8080 (with gateway-errors; upstream http://127.0.0.1:3000/, timeout 5s, read timeout 5s, unavailable after 5 failures for 10s)
//! $ curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/ok
//! 200
//! ```
//!
//! Stop the upstream (`kill %1`). Five requests reach the closed port and get their 502; the sixth
//! is answered at once, and so is every request for the next 10 seconds:
//!
//! ```text
//! $ for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{http_code} %header{proxy-status}\n' http://127.0.0.1:8080/ok; done
//! 502 edge-1; error=connection_refused
//! 502 edge-1; error=connection_refused
//! 502 edge-1; error=connection_refused
//! 502 edge-1; error=connection_refused
//! 502 edge-1; error=connection_refused
//! $ curl -i -H 'Accept: text/plain' http://127.0.0.1:8080/ok
//! HTTP/1.1 503 Service Unavailable
//! content-type: text/plain; charset=utf-8
//! content-length: 208
//! cache-control: no-store
//! vary: accept
//! proxy-status: edge-1; error=destination_unavailable
//! retry-after: 10
//!
//! 503 Service Unavailable
//!
//! The upstream server is currently unavailable.
//! This is usually temporary: the request can safely be sent again in a moment.
//! Retry after: 10 seconds
//! Error type: destination_unavailable
//! ```
//!
//! The gateway's log (stderr) says why, once:
//!
//! ```text
//! WARN gateway_errors: upstream marked unavailable gateway.upstream="http://127.0.0.1:3000" gateway.upstream_state="open" reason=5 consecutive failures, the last connection_refused gateway.open_ms=9959
//! ```
//!
//! Start the upstream again. Until the open time is over, requests are still answered 503, with
//! the seconds left; then one request goes through as the probe, it gets its answer, and traffic
//! flows:
//!
//! ```text
//! $ cargo run --release --example upstream -- --listen 127.0.0.1:3000 &
//! $ curl -s -o /dev/null -w '%{http_code} retry-after: %header{retry-after}\n' http://127.0.0.1:8080/ok
//! 503 retry-after: 7
//! $ sleep 10; for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/ok; done
//! 200
//! 200
//! 200
//! ```
//!
//! ```text
//! WARN gateway_errors: upstream open time over: probing gateway.upstream="http://127.0.0.1:3000" gateway.upstream_state="half_open" reason=the open time is over: one request goes through as a probe
//! WARN gateway_errors: upstream available again gateway.upstream="http://127.0.0.1:3000" gateway.upstream_state="closed" reason=the probe succeeded
//! ```
//!
//! # What counts as a failure
//!
//! By default, failures of the upstream's connection and timeouts, as the
//! [`DefaultClassifier`](crate::classify::DefaultClassifier) reports them
//! ([`Attempt::counts_by_default`] lists them): a refused or timed-out connect, DNS, a connection
//! closed or reset before a response, no response head within `GatewayErrorLayer`'s
//! [upstream timeout](crate::TimeLimits::upstream_timeout), and a body that breaks off or
//! stalls past its [read timeout](crate::TimeLimits::read_timeout) after the head.
//!
//! Never, by default or by any rule: what a client controls. A memory shared by every client
//! must not be moved by one of them, so these count as nothing:
//!
//! - a client that went away;
//! - a gRPC caller's own deadline (`grpc-timeout`) that ran out before the operator's limits: the
//!   caller is answered `DEADLINE_EXCEEDED` as always, but the upstream was not slow by the
//!   operator's measure;
//! - the [response deadline](crate::TimeLimits::response_deadline) when it ran out while
//!   the gateway was waiting on its client to read the body (the client read so slowly that the
//!   deadline had passed before the gateway next had to wait on the origin). When it runs out
//!   while the gateway waits on the origin, it is the upstream's, as before.
//!
//! Never by default: the origin's own statuses (a 500, a 503, a 404 is an answer: the upstream is
//! up), a request refused before it was sent (a body over a limit, a full pool). Opt in to the
//! origin's 502, 503 and 504 with
//! [`failure_statuses`](UpstreamHealthLayer::failure_statuses), or replace the rule
//! with [`failure_rule`](UpstreamHealthLayer::failure_rule).
//!
//! The rule reads the kind of an error as the classifiers decide it: give the layer the
//! classifiers you gave `GatewayErrorLayer` with [`classifier`](UpstreamHealthLayer::classifier),
//! so that an error only your classifier recognises counts here too.
//!
//! `GatewayErrorLayer`'s timeouts fire outside this layer: they drop its future (or body) rather
//! than fail it. The layer is told why, so an operator's timeout counts as the upstream's failure
//! while a client that went away, or a client's own limit, counts as nothing. That works with
//! nothing between the two layers that moves the request to another task (a
//! `tower::buffer::Buffer`); a tower `Timeout` belongs inside this layer, where its error is seen.
//!
//! # When it opens, and for how long
//!
//! After [5 consecutive failures](UpstreamHealthLayer::consecutive_failures) (a success ends a
//! run), or optionally a [failure ratio](UpstreamHealthLayer::failure_ratio) over a sliding
//! window with a minimum number of requests. It then stays unavailable for the
//! [open time](UpstreamHealthLayer::open_time) (10 s) times the number of trips in a row, at most
//! the [maximum](UpstreamHealthLayer::max_open_time) (5 minutes), shortened by up to 10%
//! [jitter](UpstreamHealthLayer::jitter). A successful probe resets the trips. Every time may be
//! set as long as `Duration::MAX`; the arithmetic saturates.
//!
//! Outcomes are recorded against the state a request was admitted under: requests that were
//! already on their way when the upstream was marked unavailable, and fail afterwards, do not
//! make it unavailable for longer.
//!
//! # The probe
//!
//! When the open time is over, the next request goes through as the probe; until it ends, every
//! other request is refused with `Retry-After: 1`. The probe ends when the origin's response head
//! arrives (the upstream is available again: a body that then breaks counts as a failure like any
//! other), and every other way a probe can end resolves it too:
//!
//! - it fails, or `GatewayErrorLayer` times it out: unavailable again, for longer;
//! - its client goes away, or its own deadline (`grpc-timeout`) runs out first, or its future is
//!   dropped, or its error says nothing about the upstream: the next request probes, and the open
//!   time does not grow;
//! - it hangs, with no timeout anywhere: after the [probe timeout](UpstreamHealthLayer::probe_timeout)
//!   (30 s) it counts as a failed probe.
//!
//! # Brownouts: an adaptive concurrency limit
//!
//! An upstream that slows down fails nothing until the timeouts. With
//! [`adaptive_limit`](UpstreamHealthLayer::adaptive_limit), the layer also keeps the requests in
//! flight to each upstream (keyed the same way) near what it serves without queueing, and
//! refuses the rest at once with `503 connection_limit_reached` and `Retry-After`: see
//! [`limit`]. A refusal never counts as a failure of the upstream.
//!
//! # A single upstream: forward anyway
//!
//! [`forward_when_unavailable(true)`](UpstreamHealthLayer::forward_when_unavailable) keeps the
//! state and its signals but forwards every request: for a single upstream whose failures are
//! quick, where a refusal helps no one. Its documentation says when to pick which.
//!
//! # Observing it
//!
//! - The request's span (from `GatewayErrorLayer`) gets `gateway.upstream_state` where it matters:
//!   `open` or `half_open` for a refused request, `probe` for the probe.
//! - Every transition emits a `WARN` event (target `gateway_errors`): "upstream marked
//!   unavailable", "upstream open time over: probing", "upstream available again", with
//!   `gateway.upstream` (the key), `gateway.upstream_state` (the new state), `reason` ("5
//!   consecutive failures, the last connection_refused", "the probe failed:
//!   http_response_timeout", ...) and `gateway.open_ms`.
//! - Each refused request is a `DEBUG` event ("upstream request failed", `error.type`
//!   `destination_unavailable`), never a `WARN` or an `INFO`: the outage was told once, when it
//!   began, and a log at `INFO` stays quiet for as long as it lasts.
//! - With the `metrics` feature and [`metrics`](UpstreamHealthLayer::metrics), a counter of
//!   transitions and the number of upstreams marked unavailable (see [`metrics`](crate::metrics)).
//!   `GatewayErrorLayer`'s `http.server.request.duration` records a refusal with `error.type`
//!   `destination_unavailable`.
//!
//! # With `RetryLayer`
//!
//! [`RetryLayer`](crate::retry::RetryLayer) goes outside `GatewayErrorLayer`, so every attempt
//! passes this layer and is counted against the upstream it really went to: a retry that a router
//! sends elsewhere is a failure (or a success) of that other upstream. It never retries a
//! refusal: the upstream is known to be down, and a retry would only be refused again.
//!
//! # A fleet of gateways
//!
//! The state lives in one process. Each gateway of a fleet learns on its own that an upstream is
//! down, from its own failures, and probes it on its own, as Envoy's outlier detection does per
//! Envoy; jitter keeps their probes apart.
//!
//! # Memory and cost
//!
//! The table of upstreams is made with the layer and never grows: [`max_upstreams`](UpstreamHealthLayer::max_upstreams)
//! slots (1,024 by default) of about 80 bytes. An upstream gets a slot at its first failure and
//! gives it up once idle, so a stream of distinct keys, hostile or not, cannot grow memory: when
//! every slot of its group holds a live upstream, a new one is simply not tracked and its requests
//! are forwarded.
//!
//! A successful request takes no lock and allocates nothing: it hashes its key, looks for its slot
//! among eight, and, if it has one, reads one word (and resets the count of failures if there
//! were any). Failures and transitions take the slot's lock.

mod attempt;
pub mod body;
mod clock;
pub(crate) mod error;
pub mod future;
mod key;
mod layer;
pub mod limit;
mod record;
mod service;
mod state;

pub use attempt::Attempt;
pub use error::UpstreamUnavailable;
pub use key::{AuthorityKey, ByAuthority, KeyUpstream};
pub use layer::UpstreamHealthLayer;
pub use limit::{AdaptiveLimit, LimitReached};
pub use service::UpstreamHealth;

#[cfg(test)]
mod fixture;
