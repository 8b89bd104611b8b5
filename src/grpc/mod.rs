//! gRPC callers: how a call is recognised, which [`GrpcCode`] a failure becomes, the caller's
//! `grpc-timeout`, and the trailers-only answer.
//!
//! A gRPC client reads `grpc-status` and `grpc-message`, never an HTML page or problem+json: a
//! generated 502 without them surfaces as an opaque protocol error. So a request whose
//! `Content-Type` is `application/grpc` (or gRPC-Web's `application/grpc-web` and
//! `application/grpc-web-text`, each with an optional `+proto`, `+json`, ... and parameters) gets
//! its generated errors in gRPC's own terms; every other request is answered as before. See the
//! [crate docs](crate#grpc-callers) for what the caller gets.

pub(crate) mod answer;
pub(crate) mod call;
mod code;

pub use code::{GrpcCode, GrpcCodes};
