//! A gRPC service on loopback whose methods each answer one way, for `examples/grpc.rs` and
//! `tests/integration/grpc.rs`.
//!
//! tonic without code generation (no protoc, no build script): the messages are hand-written
//! prost structs, the server routes by path to `tonic::server::Grpc` with the prost codec, and it
//! speaks HTTP/2 with prior knowledge (h2c), as gRPC servers behind a gateway usually do.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::Status;
use tonic::codegen::tokio_stream;
use tonic_prost::ProstCodec;

/// The request of every demo method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    /// Echoed back by `Ok`.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The response of every demo method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {
    /// `pong: ` and the request's text.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// Answers `pong: <text>`.
pub const OK: &str = "/demo.Demo/Ok";
/// The origin's own `NOT_FOUND`, which the gateway passes through unchanged.
pub const NOT_FOUND: &str = "/demo.Demo/NotFound";
/// The message of [`NOT_FOUND`].
pub const NOT_FOUND_MESSAGE: &str = "no order 42 here";
/// Never answers: the gateway's deadline (or the caller's) ends the call.
pub const STALL: &str = "/demo.Demo/Stall";
/// A server stream: one message, then `RESOURCE_EXHAUSTED` in the trailers.
pub const FAIL_AFTER_ONE: &str = "/demo.Demo/FailAfterOne";
/// The message of [`FAIL_AFTER_ONE`]'s status.
pub const FAIL_AFTER_ONE_MESSAGE: &str = "quota used up after one";
/// An HTTP 503 page, not gRPC: what a misconfigured upstream or a plain HTTP proxy sends.
pub const HTML_503: &str = "/demo.Demo/Html503";
/// HTTP 503 that still carries `grpc-status: 14`: a gRPC answer whatever its HTTP status.
pub const GRPC_503: &str = "/demo.Demo/Grpc503";
/// The message of [`GRPC_503`].
pub const GRPC_503_MESSAGE: &str = "origin draining";

/// Each method and what it shows, for the example's banner.
pub const METHODS: &[(&str, &str)] = &[
    (OK, "a healthy call"),
    (NOT_FOUND, "the origin's own NOT_FOUND, passed through"),
    (STALL, "never answers: DEADLINE_EXCEEDED from the gateway"),
    (FAIL_AFTER_ONE, "one message, then an error in the trailers"),
    (HTML_503, "an HTTP 503 page instead of gRPC"),
];

/// The demo service, listening until dropped.
pub struct DemoGrpc {
    /// Where it listens (127.0.0.1, an ephemeral port).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DemoGrpc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the demo service on an ephemeral loopback port.
pub async fn spawn() -> io::Result<DemoGrpc> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            connections.spawn(async move {
                let service = hyper::service::service_fn(route);
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(DemoGrpc { addr, task })
}

fn codec() -> ProstCodec<Pong, Ping> {
    ProstCodec::default()
}

async fn route(request: Request<Incoming>) -> Result<Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(codec());
    let response = match request.uri().path() {
        OK => {
            let ok = tower::service_fn(|request: tonic::Request<Ping>| async move {
                let text = format!("pong: {}", request.into_inner().text);
                Ok::<_, Status>(tonic::Response::new(Pong { text }))
            });
            grpc.unary(ok, request).await
        }
        NOT_FOUND => {
            let not_found = tower::service_fn(|_: tonic::Request<Ping>| async {
                Err::<tonic::Response<Pong>, _>(Status::not_found(NOT_FOUND_MESSAGE))
            });
            grpc.unary(not_found, request).await
        }
        STALL => {
            let stall = tower::service_fn(|_: tonic::Request<Ping>| async {
                std::future::pending::<()>().await;
                Err::<tonic::Response<Pong>, _>(Status::internal("unreachable"))
            });
            grpc.unary(stall, request).await
        }
        FAIL_AFTER_ONE => {
            let stream = tower::service_fn(|_: tonic::Request<Ping>| async {
                let messages = tokio_stream::iter([
                    Ok(Pong {
                        text: "first".into(),
                    }),
                    Err(Status::resource_exhausted(FAIL_AFTER_ONE_MESSAGE)),
                ]);
                Ok::<_, Status>(tonic::Response::new(messages))
            });
            grpc.server_streaming(stream, request).await
        }
        HTML_503 => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &[("content-type", "text/html")],
            "<h1>503 Service Unavailable</h1><p>backend pool-a/node-7 is down</p>",
        ),
        GRPC_503 => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &[
                ("content-type", "application/grpc"),
                ("grpc-status", "14"),
                ("grpc-message", GRPC_503_MESSAGE),
            ],
            "",
        ),
        _ => {
            let unimplemented = tower::service_fn(|_: tonic::Request<Ping>| async {
                Err::<tonic::Response<Pong>, _>(Status::unimplemented("no such method"))
            });
            grpc.unary(unimplemented, request).await
        }
    };
    Ok(response)
}

fn plain(
    status: StatusCode,
    headers: &[(&str, &'static str)],
    body: &'static str,
) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
            http::HeaderValue::from_static(value),
        );
    }
    response
}

/// A client for the demo methods: tonic's generic client with the prost codec, over any
/// transport.
pub struct DemoClient<T> {
    grpc: tonic::client::Grpc<T>,
}

impl DemoClient<tonic::transport::Channel> {
    /// Connects over h2c to `addr` (a gateway or the demo service itself) with tonic's own
    /// channel. Note that the channel enforces a request's deadline itself, at the same moment a
    /// gateway would.
    pub async fn connect(addr: SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(DemoClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }
}

/// A hyper-util client speaking h2c, as tonic's transport.
pub type HyperTransport = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

impl DemoClient<HyperTransport> {
    /// A client to `addr` over h2c through hyper-util: it sends a request's deadline as
    /// `grpc-timeout` and leaves enforcing it to the server side, so what arrives is the
    /// gateway's answer.
    pub fn over_hyper(addr: SocketAddr) -> Self {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let origin = format!("http://{addr}").parse().expect("a valid origin");
        DemoClient {
            grpc: tonic::client::Grpc::with_origin(client, origin),
        }
    }
}

impl<T> DemoClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    /// Calls the unary method at `path` with `text`; `deadline` sets `grpc-timeout`.
    pub async fn unary(
        &mut self,
        path: &'static str,
        text: &str,
        deadline: Option<Duration>,
    ) -> Result<tonic::Response<Pong>, Status> {
        let mut request = tonic::Request::new(Ping { text: text.into() });
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.into().to_string()))?;
        let path = http::uri::PathAndQuery::from_static(path);
        self.grpc
            .unary(request, path, ProstCodec::<Ping, Pong>::default())
            .await
    }

    /// Calls the server-streaming method at `path` and reads it to its end: the messages, then
    /// the final status (`Ok(())` for a clean end).
    pub async fn server_stream(&mut self, path: &'static str) -> (Vec<Pong>, Result<(), Status>) {
        let request = tonic::Request::new(Ping { text: "s".into() });
        if let Err(e) = self.grpc.ready().await {
            return (Vec::new(), Err(Status::unavailable(e.into().to_string())));
        }
        let path = http::uri::PathAndQuery::from_static(path);
        let codec = ProstCodec::<Ping, Pong>::default();
        let mut stream = match self.grpc.server_streaming(request, path, codec).await {
            Ok(response) => response.into_inner(),
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut messages = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => return (messages, Ok(())),
                Err(status) => return (messages, Err(status)),
            }
        }
    }
}
