//! Tower middleware that makes every failure of an upstream a correct, consistent, observable HTTP
//! response.
//!
//! Wrap any proxying service (a hyper-util `Client`, a reqwest client, an axum reverse-proxy
//! handler) with [`GatewayErrorLayer`]:
//!
//! - an upstream failure becomes the status RFC 9209 recommends for it (502, 503 or 504), named in a
//!   `Proxy-Status` header by its error type (`connection_refused`, `http_response_timeout`, ...);
//! - an error status the origin sent itself (500, 503, 404, an upstream proxy's 502) passes through
//!   unchanged: status, headers and body bytes;
//! - a generated error has one body in the form the client asked for: RFC 9457 problem+json, an
//!   HTML page or plain text, from templates you can replace;
//! - every generated error says whether a retry is safe and, where configured, when;
//! - with [`UpstreamHealthLayer`](health::UpstreamHealthLayer) next to the client, an upstream that
//!   keeps failing is marked unavailable: its requests get a 503 `destination_unavailable` with
//!   `Retry-After` at once, without a connection, until one probe finds it back ([`health`]);
//! - every request gets a span with OpenTelemetry field names; the error's internals go to the
//!   span, never to the client;
//! - the clock does not stop at the head: an origin whose body stalls is cut at the
//!   [read timeout](TimeLimits::read_timeout), and the client sees a broken
//!   transfer, never a hang or a body that looks complete;
//! - a gateway that reaches itself, or a loop of gateways, is told so: the layer appends its name
//!   to `CDN-Loop` (RFC 8586) and answers a request that comes back with `502
//!   proxy_loop_detected` ([`loop_detection`](GatewayErrorLayer::loop_detection)).
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use axum::body::Body;
//! use axum::http::Request;
//! use gateway_errors::body::UploadBody;
//! use gateway_errors::{GatewayErrorLayer, ProxyName, TimeLimits};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let client = Client::builder(TokioExecutor::new()).build_http::<UploadBody<Body>>(); // the body the layer watches
//!     let gateway = ServiceBuilder::new()
//!         .layer(
//!             GatewayErrorLayer::new()
//!                 .proxy_name(ProxyName::from_static("edge-1"))
//!                 .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(30))),
//!         )
//!         .map_request(|mut request: Request<UploadBody<Body>>| {
//!             // Point the request at the upstream (a real proxy also strips hop-by-hop
//!             // headers: see examples/gateway.rs).
//!             let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
//!             *request.uri_mut() = format!("http://127.0.0.1:3000{path}").parse().unwrap();
//!             request
//!         })
//!         .service(client);
//!     let app = axum::Router::new().fallback_service(gateway);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await
//! }
//! ```
//!
//! A refused connection then reaches the client as:
//!
//! ```text
//! HTTP/1.1 502 Bad Gateway
//! content-type: application/problem+json
//! proxy-status: edge-1; error=connection_refused
//! cache-control: no-store
//! vary: accept
//!
//! {"type":"about:blank","title":"Bad Gateway","status":502,
//!  "detail":"The upstream server refused the connection.",
//!  "error_type":"connection_refused","retryable":true}
//! ```
//!
//! The same, checked: any tower service that fails as a refused connect does, wrapped in the
//! layer, answers the client so.
//!
//! ```
//! use std::io;
//!
//! use bytes::Bytes;
//! use gateway_errors::body::UploadBody;
//! use gateway_errors::headers::PROXY_STATUS;
//! use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, ProxyName};
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let refusing = service_fn(|_request: Request<UploadBody<Full<Bytes>>>| async {
//!     Err::<Response<Full<Bytes>>, _>(io::Error::from(io::ErrorKind::ConnectionRefused))
//! });
//! let gateway = ServiceBuilder::new()
//!     .layer(GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-1")))
//!     .service(refusing);
//!
//! let request = Request::post("/orders").body(Full::new(Bytes::new())).unwrap();
//! let response = gateway.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
//! assert_eq!(response.headers()[&PROXY_STATUS], "edge-1; error=connection_refused");
//! // For whoever is outside: what failed, and that a retry is safe (it was never sent).
//! let error = response.extensions().get::<ProxyError>().unwrap();
//! assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionRefused));
//! assert!(error.is_retryable());
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(problem["error_type"], "connection_refused");
//! assert_eq!(problem["retryable"], true);
//! # }
//! ```
//!
//! # How a request flows
//!
//! 1. [`GatewayErrorService::call`](tower_service::Service::call) reads what the response may need, once and
//!    without allocating: the body format from `Accept`, whether the method is idempotent, whether
//!    an `Idempotency-Key` is present, the request id. It opens the request's span.
//! 2. The inner service runs, raced against the [upstream timeout](TimeLimits::upstream_timeout)
//!    (and the [response deadline](TimeLimits::response_deadline), if set).
//! 3. One decision point:
//!    - a response from the origin is forwarded unchanged; its body is observed and timed, so
//!      that a failure or a stall mid-stream breaks the client's connection (never a short body
//!      that looks complete) and lands on the span;
//!    - an interim status handed over as final, or a `101` the request did not ask for, is an
//!      error (`http_protocol_error`, `http_upgrade_failed`); a `101` that answers the request's
//!      `Upgrade` passes;
//!    - an error is [classified](classify::Classify) into a [`ProxyErrorKind`], whose status is final; the
//!      body, `Proxy-Status`, `Retry-After`, the [`ProxyError`] extension and the span all read it.
//!
//! # Errors from axum handlers
//!
//! A handler that proxies by hand returns [`ProxyError`]; the layer around the router renders it
//! exactly as it renders an inner service's error.
//!
//! # gRPC callers
//!
//! A gRPC client reads `grpc-status` and `grpc-message`; a 502 page is an opaque protocol error to
//! it. A request whose `Content-Type` is `application/grpc`, `application/grpc-web` or
//! `application/grpc-web-text` (with any `+proto`, `+json`, ... and parameters) is a gRPC call,
//! and its generated errors are answered in gRPC's terms:
//!
//! - HTTP 200 (gRPC requires it), `Content-Type` the caller's gRPC type, `grpc-status` the
//!   [`GrpcCode`](grpc::GrpcCode) of the error's kind ([`GrpcCode::for_kind`](grpc::GrpcCode::for_kind), changed per kind with
//!   [`GrpcCodes::code_for_kind`](grpc::GrpcCodes::code_for_kind)) and `grpc-message` the kind's client-safe
//!   sentence, percent-encoded; no body (a trailers-only response);
//! - gRPC-Web callers get the same fields in a trailer frame as the body (base64 for
//!   `grpc-web-text`);
//! - `Proxy-Status`, `Retry-After` and the [`ProxyError`] extension as for any generated error,
//!   plus `grpc-retry-pushback-ms` where a retry delay is configured;
//! - the upstream timeout is the sooner of [`upstream_timeout`](TimeLimits::upstream_timeout)
//!   and the caller's `grpc-timeout`; when it passes, the caller gets `DEADLINE_EXCEEDED`.
//!
//! The origin's own gRPC answers pass through untouched, trailers included, and are never
//! [intercepted](GatewayErrorLayer::failure_statuses). An origin's plain HTTP error (an
//! HTML 503 page) passes through too unless its status is intercepted; it then becomes the code
//! of [`GrpcCode::from_http_status`](grpc::GrpcCode::from_http_status). The span gets `rpc.system`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code`, and records `http.response.status_code` as the 200 that was sent.
//!
//! ```text
//! HTTP/2 200
//! content-type: application/grpc
//! grpc-status: 14
//! grpc-message: The upstream server refused the connection.
//! proxy-status: edge-1; error=connection_refused
//! cache-control: no-store
//! ```
//!
//! # While the origin is down
//!
//! With a [`StaleIfError`](stale::StaleIfError) store ([`GatewayErrorLayer::serve_stale`]),
//! the layer keeps the last good copy of the GET responses a shared cache may store, and where it
//! would answer a GET or HEAD with a 500, 502, 503 or 504, a copy within its `stale-if-error`
//! window (RFC 5861; the origin's, else the operator's) answers instead: the stored page byte for
//! byte, with `Age`, `Cache-Status: <name>; fwd=stale; ...` and a `Proxy-Status` naming the
//! failure it hides. The span, a `WARN` event and the `gateway.stale.served` counter keep the
//! outage visible. See [`stale`].
//!
//! ```text
//! HTTP/1.1 200 OK
//! content-type: text/plain
//! cache-control: max-age=60
//! age: 4
//! cache-status: edge-1; fwd=stale; fwd-status=502; ttl=56
//! proxy-status: edge-1; error=connection_refused
//! ```
//!
//! # Modules
//!
//! The root holds what every user types: the layer and its service, [`ProxyError`] and its
//! [`ProxyErrorKind`] and [`RequestSent`], and the builder's values that belong to no module:
//! [`ProxyName`], [`TimeLimits`], [`LoopDetection`], [`Telemetry`]. The rest is grouped by
//! concern, as the request meets it:
//!
//! | module | what it holds |
//! |---|---|
//! | [`classify`] | the [`Classify`](classify::Classify) trait and the [`DefaultClassifier`](classify::DefaultClassifier) |
//! | [`render`] | the body: [`Bodies`](render::Bodies) (the builder's value), [`Format`](render::Format), [`Template`](render::Template), [`ErrorView`](render::ErrorView), renderers, the built-in templates, [`negotiate`](fn@render::negotiate) |
//! | [`headers`] | `Proxy-Status`, [`ProxyName`]'s error |
//! | [`retry`] | [`RetryHints`](retry::RetryHints) (the builder's value), the retry hint's facts, [`RetryAfter`](retry::RetryAfter), [`RetryPolicy`](retry::RetryPolicy) |
//! | [`grpc`] | [`GrpcCode`](grpc::GrpcCode), [`GrpcCodes`](grpc::GrpcCodes) (the builder's value) |
//! | [`stale`] | [`StaleIfError`](stale::StaleIfError): the last good copy answers while the origin is down |
//! | [`health`] | [`UpstreamHealthLayer`](health::UpstreamHealthLayer): remember a failing upstream, 503 `destination_unavailable` while it is down, one probe at a time |
//! | [`future`], [`body`] | the service's future and response body |
//! | [`error`] | the crate's other error types |
//! | `metrics` | the OpenTelemetry instruments (feature `metrics`) |
//!
//! # Features
//!
//! - `axum` (default): `impl IntoResponse for ProxyError`, and `axum::body::Body` as a
//!   [`ReplayBody`](retry::ReplayBody).
//! - `hyper`, `hyper-util`, `tower` (default): the default classifier recognises the errors of
//!   hyper, of hyper-util's legacy client, and of tower's timeout, load-shed and buffer; `tower`
//!   also brings [`RetryPolicy`](retry::RetryPolicy).
//! - `tower-http` (default): the request id comes from tower-http's `RequestId` extension when it
//!   is there.
//! - `reqwest`: the default classifier recognises `reqwest::Error`.
//! - `http2`: the default classifier recognises `h2::Error`: a stream the upstream refused
//!   (`REFUSED_STREAM`) or left unprocessed by a GOAWAY is `destination_unavailable`, not sent, and
//!   so safe to retry for every method.
//! - `rustls`: the default classifier recognises `rustls::Error` of rustls 0.23 (hyper-rustls,
//!   tokio-rustls, reqwest with rustls): a certificate the gateway did not accept is
//!   `tls_certificate_error`, an alert from the upstream `tls_alert_received` with its `alert-id`
//!   and `alert-message`, any other TLS failure `tls_protocol_error`. It brings rustls's error
//!   types only, no crypto provider. See
//!   [`DefaultClassifier`](classify::DefaultClassifier#tls-feature-rustls).
//! - `metrics`: `Telemetry::metrics` records OpenTelemetry's `http.server.request.duration`
//!   and a counter of generated errors by type and retry hint, through the `opentelemetry` metrics
//!   API (see the `metrics` module, present with the feature).
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

// Every Rust snippet of the README compiles (and runs, where it can) with the doctests: with every
// feature the README shows on, as `cargo test --all-features` has them.
#[cfg(all(doctest, feature = "metrics", feature = "axum", feature = "tower"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
