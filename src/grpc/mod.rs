//! gRPC callers: how a call is recognised, which [`GrpcCode`] a failure becomes, the caller's
//! `grpc-timeout`, and the trailers-only answer.
//!
//! A gRPC client reads `grpc-status` and `grpc-message`, never an HTML page or problem+json: a
//! generated 502 without them surfaces as an opaque protocol error. So a request whose
//! `Content-Type` is `application/grpc` (or gRPC-Web's `application/grpc-web` and
//! `application/grpc-web-text`, each with an optional `+proto`, `+json`, ... and parameters) gets
//! its generated errors in gRPC's own terms; every other request is negotiated as usual.
//! Recognising a call reads the `Content-Type` once and allocates nothing.
//!
//! # The answer
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
//! - HTTP 200, as gRPC requires; the [`ProxyError`](crate::ProxyError) extension still holds the
//!   kind and the status an HTTP client would have got.
//! - `grpc-message` is the kind's client-safe sentence, the one the other forms show,
//!   percent-encoded per the gRPC HTTP/2 protocol. Internals stay on the span.
//! - `Content-Type` is the caller's gRPC type (`+proto` and `+json` echoed). No body, so no
//!   `Content-Length`, and no `Vary: accept`: the answer follows `Content-Type`, not `Accept`.
//! - `Proxy-Status` and `Retry-After` as for any generated error; where a delay is known,
//!   `grpc-retry-pushback-ms` states it too, for gRPC's own retry policy.
//! - gRPC-Web callers get the same fields as one trailer frame (flag `0x80`, a 4-byte length,
//!   `name:value\r\n` lines) as the whole body, with its `Content-Length`; for `grpc-web-text` the
//!   frame is base64-encoded. A browser reads the body whatever CORS lets it see of the headers.
//!
//! # Which code
//!
//! | RFC 9209 kind | gRPC code |
//! |---|---|
//! | `connection_refused`, `connection_terminated`, `connection_timeout`, `connection_limit_reached`, `destination_unavailable`, `destination_ip_prohibited`, `destination_ip_unroutable`, `dns_error`, `dns_timeout`, `tls_*`, `http_response_incomplete`, `http_upgrade_failed` | 14 `UNAVAILABLE` |
//! | `http_response_timeout`, `connection_read_timeout`, `connection_write_timeout` | 4 `DEADLINE_EXCEEDED` |
//! | `http_request_error` | 3 `INVALID_ARGUMENT` |
//! | `http_request_denied` | 7 `PERMISSION_DENIED` |
//! | `destination_not_found` | 12 `UNIMPLEMENTED` |
//! | `http_response_header_section_size`, `http_response_header_size`, `http_response_body_size`, `http_response_trailer_section_size`, `http_response_trailer_size` | 8 `RESOURCE_EXHAUSTED` |
//! | `http_response_transfer_coding`, `http_response_content_coding`, `http_protocol_error`, `proxy_internal_error`, `proxy_configuration_error`, `proxy_loop_detected` | 13 `INTERNAL` |
//! | `proxy_internal_response` | 2 `UNKNOWN` |
//! | an unrecognised error (502) | 14 `UNAVAILABLE` |
//!
//! A failure to reach or hear from the upstream is `UNAVAILABLE`: gRPC's HTTP-to-gRPC mapping gives
//! it for 502, 503 and 504, and it is the code gRPC retry policies usually list as retryable. Where
//! gRPC has a code that names the failure better, the table uses it. A connect or DNS timeout stays
//! `UNAVAILABLE`: the request never left the gateway and the caller's deadline has not passed.
//! [`GrpcCodes`] changes any row:
//!
//! ```
//! use gateway_errors::grpc::{GrpcCode, GrpcCodes};
//! use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
//!
//! let codes = GrpcCodes::new()
//!     .code_for_kind(ProxyErrorKind::ConnectionLimitReached, GrpcCode::ResourceExhausted);
//! let layer = GatewayErrorLayer::new().grpc_codes(codes);
//! ```
//!
//! # The origin's answers
//!
//! The origin's own gRPC answers pass through untouched, trailers included: a response that
//! carries `grpc-status` is never replaced, whatever its HTTP status. An origin's plain HTTP error
//! (an HTML 503 from a misconfigured backend) passes through as for any other client (tonic then
//! reports `INTERNAL`, "protocol error"); with its status among the layer's
//! [`failure_statuses`](crate::GatewayErrorLayer::failure_statuses), the caller gets the code of
//! gRPC's HTTP mapping instead ([`GrpcCode::from_http_status`]: 400 → `INTERNAL`, 401 →
//! `UNAUTHENTICATED`, 403 → `PERMISSION_DENIED`, 404 → `UNIMPLEMENTED`, 429, 502, 503, 504 →
//! `UNAVAILABLE`, any other → `UNKNOWN`) with the client-safe sentence. So `failure_statuses` over
//! 500..=599 is safe in front of gRPC services.
//!
//! # Deadlines
//!
//! The upstream timeout of a gRPC call is the sooner of the layer's upstream timeout and the
//! caller's `grpc-timeout` (1 to 8 digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`; a malformed
//! one is ignored). When it passes, the caller gets `DEADLINE_EXCEEDED` (`http_response_timeout`)
//! and the upstream stream is dropped. The caller's own deadline is its own limit: running out of
//! it is the caller's fault and never counts against the upstream. A client that enforces the
//! deadline itself (tonic's `Channel` does) ends the call at the same moment; tonic reports its own
//! as `CANCELLED`, "Timeout expired".
//!
//! # Spans
//!
//! A call's span also has the OpenTelemetry RPC fields: `rpc.system` (`grpc`), `rpc.service` and
//! `rpc.method` from the path `/package.Service/Method` (absent for a path of another shape or with
//! a part over 256 bytes), and `rpc.grpc.status_code`: the code of a generated error, or the
//! origin's `grpc-status` when it comes in the response headers (a status in the trailers is not
//! read). For a generated error `http.response.status_code` is the 200 that was sent, and
//! `otel.status_code` is `ERROR` when the error's HTTP status would have been a 5xx.
//!
//! # Trying it
//!
//! `cargo run --example grpc -- --check` puts the example gateway (h2c to the upstream) in front of
//! an embedded tonic service whose methods each fail one way, and calls each with a tonic client;
//! `cargo run --example gateway -- --http2 --upstream http://127.0.0.1:50051` puts the same
//! gateway in front of your own gRPC server.

pub(crate) mod answer;
pub(crate) mod call;
mod code;

pub use code::{GrpcCode, GrpcCodes};
