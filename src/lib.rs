#![doc = include_str!("../README.md")]
//!
//! # Reference
//!
//! ## How a request flows
//!
//! 1. [`GatewayErrorService::call`](tower_service::Service::call) reads what the response may need,
//!    in one pass over the request's fields and without allocating: the body form from `Accept`,
//!    whether the method is idempotent, whether an `Idempotency-Key` is present, the request id,
//!    `CDN-Loop`, gRPC. It removes hop-by-hop fields and opens the request's span (or takes the one
//!    a [`RetryLayer`](retry::RetryLayer) outside opened for an earlier attempt).
//! 2. The inner service runs, raced against the [time limits](TimeLimits), measured from the first
//!    attempt.
//! 3. One decision point:
//!    - a response from the origin is forwarded unchanged; its body is observed and timed, so
//!      that a failure or a stall mid-stream breaks the client's connection (never a short body
//!      that looks complete) and lands on the span;
//!    - an interim status handed over as final, or a `101` the request did not ask for, is an
//!      error (`http_protocol_error`, `http_upgrade_failed`); a `101` that answers the request's
//!      `Upgrade` passes;
//!    - an error is [classified](classify::Classify) into a [`ProxyErrorKind`], and decided to be
//!      the upstream's, the client's or the gateway's own ([`fault`]); its status is final, and the
//!      body, `Proxy-Status`, `Retry-After`, the [`ProxyError`] extension, the span and the
//!      metrics all read it.
//!
//! ## Every status
//!
//! The layer follows RFC 9209's error types and the status each recommends.
//!
//! | what happened upstream | error type | status |
//! |---|---|---|
//! | connection refused | `connection_refused` | 502 |
//! | closed or reset before a response | `connection_terminated` | 502 |
//! | connect timed out | `connection_timeout` | 504 |
//! | name did not resolve / resolver timed out | `dns_error` / `dns_timeout` | 502 / 504 |
//! | host or network unreachable | `destination_ip_unroutable` | 502 |
//! | not HTTP | `http_protocol_error` | 502 |
//! | response head too large | `http_response_header_section_size` | 502 |
//! | no response head within the upstream timeout (a 103 Early Hints does not count as one) | `http_response_timeout` | 504 |
//! | no response head within the response deadline | `http_response_timeout` | 504 |
//! | a 1xx handed over as the final response, or a 101 to a request that sent no `Upgrade` | `http_protocol_error` | 502 |
//! | a 101 to a protocol the request did not offer in `Upgrade` | `http_upgrade_failed` | 502 |
//! | a request hyper never wrote (its pooled connection was already closed) | `connection_terminated` (not sent) | 502 |
//! | pool full, load shed (`tower::load_shed`), the adaptive limit reached | `connection_limit_reached` | 503 |
//! | `tower::buffer` worker gone | `destination_unavailable` | 503 |
//! | an upstream the [health layer](health) marked unavailable | `destination_unavailable` (not sent) | 503 |
//! | HTTP/2 `REFUSED_STREAM`, or a stream above a GOAWAY's last id (feature `http2`) | `destination_unavailable` (not sent) | 503 |
//! | the request already came through this gateway (its name in `CDN-Loop`) | `proxy_loop_detected` (not retryable) | 502 |
//! | TLS (feature `rustls`): a certificate not accepted / an alert / any other handshake failure | `tls_certificate_error` / `tls_alert_received` / `tls_protocol_error` | 502 |
//! | an error nobody recognises | (none) | 502 |
//! | the origin's own 500, 503, 404, ... | (untouched) | the origin's |
//!
//! After the head the status cannot change any more. A body that fails, or stalls, is ended with an
//! error instead: the client's connection is broken off (HTTP/1.1: fewer bytes than
//! `Content-Length`, or no last chunk, then a close; HTTP/2: `RST_STREAM`), and the span says why:
//! `http_response_incomplete` (the body broke off), `connection_read_timeout` (no body data within
//! the read timeout), `http_response_timeout` (the body not over within the response deadline).
//!
//! Peers disagree here, which is why the crate follows the RFC: nginx maps every timeout to 504 and
//! the rest to 502; Envoy sends 503 for a refused or timed-out connect; tower-http's
//! `TimeoutLayer` answers 408 with an empty body. Use [`TimeLimits::upstream_timeout`] instead of
//! `TimeoutLayer`. The client's own faults (408, 400) are in [`fault`].
//!
//! ## After the head: read timeouts, deadlines, upgrades
//!
//! The clock does not stop at the response head. Against an origin that sends `200` with
//! `Content-Length: 1000`, 10 bytes, and then nothing, `cargo run --example gateway -- --timeout 1s`
//! cuts the transfer after one second of silence:
//!
//! ```text
//! $ time curl -sS -o /dev/null -w '%{http_code} %{size_download} bytes\n' http://127.0.0.1:8080/stall-body
//! curl: (18) transfer closed with 990 bytes remaining to read
//! 200 10 bytes
//! real    0m1.01s
//! ```
//!
//! - **Read timeout** ([`TimeLimits::read_timeout`], in the manner of nginx's
//!   `proxy_read_timeout`): the longest the origin may keep the gateway waiting for the next body
//!   frame. It defaults to the upstream timeout; `None` turns it off (long polling, server-sent
//!   events). It counts only time spent waiting on the origin: a client that reads slowly does not
//!   use it up. One timer per body, inline; nothing allocates.
//! - **Response deadline** ([`TimeLimits::response_deadline`], off by default): head and body
//!   together. Before the head it answers 504 `http_response_timeout`; after it, it cuts the body.
//! - A cut body drops the origin's connection too, and the body's error is a [`ProxyError`] of the
//!   kind above, for an outer layer to read. The span records `error.type`,
//!   `http.response.body.size` (the bytes forwarded) and `gateway.head_sent = true`.
//! - **Interim responses.** hyper reads 100 Continue and 103 Early Hints and waits on for the final
//!   response; the upstream timeout keeps running meanwhile.
//! - **Upgrades.** A 101 passes only as the answer to a request that asked for it in `Upgrade`, and
//!   only to a protocol it offered (RFC 9110 §7.8, §15.2.2). The example gateway joins WebSocket
//!   connections end to end.
//! - **Stale pooled connections.** When the origin closes a kept-alive connection as the next
//!   request goes out, hyper says whether it wrote the request. If it did not, the error is not
//!   sent and safe to retry for any method; if it did, a GET is retryable and a POST is not.
//!
//! ## Loops
//!
//! A gateway whose upstream is, by mistake, itself (or two gateways pointed at each other) would
//! forward each request round and round. The layer follows RFC 8586: it appends its proxy name to
//! `CDN-Loop` on every request it forwards (keeping the members already there), and a request that
//! arrives already carrying that name is answered at once, without calling the inner service:
//! 502 `proxy_loop_detected`, not retryable whatever the method (another attempt loops again), and
//! `INTERNAL` for a gRPC caller. [`LoopDetection`] sets how many times a request may come back, or
//! turns it off.
//!
//! - **Names must be unique per deployment.** The name is the loop's only evidence: two gateways
//!   that share one take each other's requests for loops. [`ProxyName`] admits token characters
//!   and `:`, so a host name or `host:port` works, and names compare case-insensitively.
//! - **Hostile values** are read in one pass without allocating; a member that does not parse (an
//!   unterminated quote, a broken parameter, a quoted name) is never taken for ours.
//! - Appending the header adds no allocation when the request's header map has room, which it has
//!   on every request after the first of a kept-alive hyper connection.
//!
//! ## Origin errors
//!
//! By default an error the origin sends itself (its 500, its 503 with `Retry-After`, an upstream
//! proxy's 502) passes through untouched: status, headers, body bytes. To give clients one
//! consistent error body instead, in the manner of nginx's `proxy_intercept_errors`, name the
//! statuses that count as the upstream failing:
//!
//! ```
//! use gateway_errors::GatewayErrorLayer;
//! use http::StatusCode;
//!
//! let layer = GatewayErrorLayer::new()
//!     .failure_statuses((500..600).filter_map(|code| StatusCode::from_u16(code).ok()));
//! ```
//!
//! The origin's status is kept and its body replaced by a generated one in the negotiated form. Its
//! `Retry-After`, `WWW-Authenticate`, `Proxy-Authenticate` and `Allow` are kept
//! ([`Bodies::keep_origin_header`](render::Bodies::keep_origin_header) adds more), its own
//! `Proxy-Status` members too, and ours is appended with the status it received
//! (`proxy-status: edge-1; received-status=503`). Statuses outside 400–599 are never replaced, and
//! neither is a gRPC answer. The same name, `failure_statuses`, tells the
//! [store](stale::Store::failure_statuses) which origin errors a copy may answer for, and the
//! [health layer](health::UpstreamHealthLayer::failure_statuses) which to count.
//!
//! ## Errors from axum handlers
//!
//! A gateway written as axum handlers, each proxying by hand, returns [`ProxyError`] from the
//! handler; one layer around the router answers for all of them:
//!
//! ```no_run
//! use axum::Router;
//! use axum::body::Body;
//! use axum::extract::{Request, State};
//! use axum::response::Response;
//! use axum::routing::any;
//! use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyName};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::client::legacy::connect::HttpConnector;
//! use hyper_util::rt::TokioExecutor;
//!
//! type HttpClient = Client<HttpConnector, Body>;
//!
//! /// Forwards /orders/... to the orders service.
//! async fn orders(State(client): State<HttpClient>, mut request: Request) -> Result<Response, ProxyError> {
//!     let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
//!     *request.uri_mut() = format!("http://127.0.0.1:3001{path}").parse().expect("a valid URI");
//!     // A refused connection, a reset, a timeout: classified here, rendered by the layer.
//!     let response = client.request(request).await.map_err(ProxyError::from_error)?;
//!     Ok(response.map(Body::new))
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
//!     let app = Router::new()
//!         .route("/orders/{*rest}", any(orders))
//!         .with_state(client)
//!         .layer(GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-1")));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await
//! }
//! ```
//!
//! Layers nest: an outer layer leaves what an inner one generated alone.
//!
//! ## Span fields and events
//!
//! Each client request gets one span named `gateway.request` (target `gateway_errors`, level
//! `INFO`; [`Telemetry::span_level`] changes it), however many attempts it took. It lives until the
//! response body ends, nests under tower-http's `TraceLayer` span when that layer is outside, and
//! tracing-opentelemetry exports its fields as attributes and `otel.status_code` as the span's
//! status.
//!
//! | field | value |
//! |---|---|
//! | `http.request.method`, `url.path` | the request's (the path is a field only; the span name never holds it) |
//! | `http.response.status_code` | the status the client got |
//! | `http.request.resend_count` | the attempts after the first, when a [`RetryLayer`](retry::RetryLayer) made any |
//! | `error.type` | the RFC 9209 type of a generated error; the status (`"503"`) of a forwarded 5xx; `http_response_incomplete`, `connection_read_timeout` or `http_response_timeout` for a body cut after its head |
//! | `otel.status_code` | `ERROR` for any 5xx and for a body that failed mid-stream |
//! | `gateway.fault` | `upstream`, `client`, `client_gone` or `gateway` ([`fault`]) |
//! | `gateway.generated` | whether the layer made the response |
//! | `gateway.retryable`, `gateway.phase` | the retry hint of a generated error |
//! | `gateway.upstream_ms` | time until the response head, or the failure |
//! | `gateway.cancelled` | the client went away first: recorded, and not an error |
//! | `gateway.stale`, `gateway.stale.age_s` | a [stored copy](stale) answered, and its age; `error.type` then names the failure it hid |
//! | `gateway.upstream_state` | with the [health layer](health): `open` or `half_open` for a refused request, `probe` for the request that probes |
//!
//! The events, each at its level whatever the span's level (a subscriber at `warn` still gets
//! every `WARN`):
//!
//! | event | level | fields |
//! |---|---|---|
//! | `upstream request failed` (`client request failed` for a client's fault) | `WARN` for a 5xx, `INFO` otherwise | `gateway.fault`, `error.type`, `http.response.status_code`, `gateway.retryable`, and `error`: the whole error chain, every `source()` |
//! | `origin error replaced by a generated body` | the same | as above |
//! | `upstream response body failed after the head was sent` | `WARN` | `error.type`, `http.response.body.size`, `error` |
//! | `upstream request failed; answered with a stale copy` | `WARN` | `error.type`, `http.response.status_code` (the copy's), `gateway.stale.age_s`, `error` |
//! | `upstream marked unavailable`, `upstream open time over: probing`, `upstream available again` | `WARN` | `gateway.upstream`, `gateway.upstream_state`, `reason`, `gateway.open_ms` |
//! | a request refused while its upstream is marked unavailable or at its concurrency limit | `DEBUG` | as a generated error |
//! | `retrying the upstream request`, `not retrying: ...` | `DEBUG` | `error.type`, `http.request.resend_count`, `gateway.wait_ms` |
//!
//! A failed attempt that is retried logs at `DEBUG` only; the request's last answer is the one
//! `WARN`, and the one count in the metrics (feature `metrics`), however many attempts it took.
//!
//! ## Modules
//!
//! The root holds what every user types: the layer and its service, [`ProxyError`] and its
//! [`ProxyErrorKind`], and the values the builder takes ([`TimeLimits`], [`LoopDetection`],
//! [`Telemetry`], [`ProxyName`]). The rest is grouped by concern, as the request meets it:
//!
//! | module | what it holds |
//! |---|---|
//! | [`classify`] | the [`Classify`](classify::Classify) trait, the [`DefaultClassifier`](classify::DefaultClassifier), TLS errors |
//! | [`fault`] | whose fault an outcome is |
//! | [`render`] | the body: [`Bodies`](render::Bodies), templates, renderers, content negotiation |
//! | [`headers`] | `Proxy-Status`, hop-by-hop fields |
//! | [`retry`] | the retry hint, [`RetryAfter`](retry::RetryAfter), [`RetryLayer`](retry::RetryLayer) |
//! | [`grpc`] | gRPC answers and [`GrpcCode`](grpc::GrpcCode)s |
//! | [`stale`] | the [`Store`](stale::Store) of last good copies |
//! | [`health`] | [`UpstreamHealthLayer`](health::UpstreamHealthLayer): outages and brownouts |
//! | [`future`], [`body`] | the service's future, the response body, the watched upload |
//! | [`error`] | the crate's other error types |
//! | `metrics` | the OpenTelemetry instruments (feature `metrics`) |
#![deny(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
mod cache;
pub mod classify;
mod config;
mod deadline;
pub mod error;
mod facts;
pub mod fault;
pub mod future;
pub mod grpc;
pub mod headers;
pub mod health;
mod interim;
mod kind;
mod layer;
mod loop_detection;
#[cfg(feature = "metrics")]
pub mod metrics;
mod random;
pub mod render;
mod respond;
pub mod retry;
mod service;
mod spare;
pub mod stale;
mod telemetry;
#[cfg(test)]
mod testing;
mod time_limits;
mod trace;
mod upload;

pub use error::ProxyError;
pub use headers::ProxyName;
pub use kind::{ProxyErrorKind, RequestSent};
pub use layer::GatewayErrorLayer;
pub use loop_detection::LoopDetection;
pub use service::GatewayErrorService;
pub use telemetry::Telemetry;
pub use time_limits::TimeLimits;

/// The error type the layer accepts from inner services and bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
