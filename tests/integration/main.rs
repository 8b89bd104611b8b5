//! The integration tests: real upstreams on loopback that refuse, stall, reset and lie, a real
//! gateway in front of them, and the checks a client makes. One test binary, a module per concern,
//! so that the suite links once.
//!
//! Every test bounds its own time (see `support::STEP`); none contacts anything but loopback.

mod support;

// The example gateway's own code, so that the tests check what a user copies.
// The example starts the demo upstream that `support` has too: its own copy, as a user gets it.
#[path = "../../examples/custom_templates.rs"]
#[allow(dead_code, clippy::duplicate_mod)]
mod custom_templates;
#[path = "../../examples/support/grpc_demo.rs"]
mod grpc_demo;
#[path = "../../examples/support/proxy.rs"]
mod proxy;

mod adaptive;
mod after_the_head;
mod axum_router;
mod bodies;
mod client_faults;
mod full_stack;
mod fuzz;
mod gateway_hardening;
mod grpc;
mod health;
mod hop_by_hop;
mod http2;
mod injection;
mod leaks;
mod loops;
mod metrics;
mod origin_passthrough;
mod reqwest_client;
mod retry;
mod soak;
mod spans;
mod stale;
#[cfg(feature = "rustls")]
mod tls;
mod upstream_faults;
mod websocket;
