//! Helpers shared by the integration tests: the demo upstream, a gateway in front of it (as a tower
//! service and served on a real socket), a raw HTTP/1.1 client, and the checks a client makes on a
//! generated error.
//!
//! Everything listens and connects on 127.0.0.1 only, and every wait is bounded by [`STEP`], so a
//! hang fails the test instead of blocking CI.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

pub mod capture;
#[path = "../../../examples/support/demo_upstream.rs"]
pub mod demo_upstream;
pub mod raw;

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::body::GatewayBody;
use gateway_errors::headers::PROXY_STATUS;
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, ProxyName};
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceBuilder, ServiceExt};

/// The longest any single step of a test (a request, reading a body, a bind) may take.
pub const STEP: Duration = Duration::from_secs(5);

/// The proxy name every test gateway uses, so `Proxy-Status` values are predictable.
pub const PROXY_NAME: &str = "edge-1";

/// Awaits `future`, failing the test with `what` if it takes longer than [`STEP`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: still waiting after {STEP:?}"),
    }
}

/// Starts the demo upstream on an ephemeral loopback port.
pub async fn start_upstream() -> demo_upstream::DemoUpstream {
    within("starting the demo upstream", demo_upstream::spawn())
        .await
        .expect("the demo upstream binds a loopback port")
}

/// The layer with the test proxy name; tests add what they need.
pub fn layer() -> GatewayErrorLayer {
    GatewayErrorLayer::new().proxy_name(ProxyName::from_static(PROXY_NAME))
}

/// The statuses of `range` (e.g. `500..=599`), for `failure_statuses`.
pub fn statuses(range: std::ops::RangeInclusive<u16>) -> impl Iterator<Item = StatusCode> {
    range.filter_map(|code| StatusCode::from_u16(code).ok())
}

/// The request body a client behind the layer sends: the client's own, as the layer watches it.
pub type Upload = gateway_errors::body::UploadBody<Body>;

/// A plain HTTP/1 hyper-util client, as a client of the gateway would use.
pub fn http_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A plain HTTP/1 hyper-util client behind the layer, as a real gateway would use: it sends the
/// body the layer watches.
pub fn upstream_client() -> Client<HttpConnector, Upload> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A hyper-util client over a custom connector (a stalling connector, a failing resolver).
pub fn client_with<C: Connect + Clone>(connector: C) -> Client<C, Upload> {
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What a gateway built by [`gateway`] is: a tower service that never fails and whose responses
/// carry the layer's body.
pub trait GatewayService:
    Service<
        Request<Body>,
        Response = Response<GatewayBody<Incoming>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GatewayService for S where
    S: Service<
            Request<Body>,
            Response = Response<GatewayBody<Incoming>>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The shape of a real gateway: `layer` around a hyper-util client, with the request pointed at
/// `authority` (a `host:port`, or a made-up name for a client with a custom resolver).
pub fn gateway<C>(
    layer: GatewayErrorLayer,
    client: Client<C, Upload>,
    authority: impl Into<String>,
) -> impl GatewayService
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let authority = authority.into();
    ServiceBuilder::new()
        .layer(layer)
        .map_request(move |request| to_upstream(&authority, request))
        .service(client)
}

/// [`gateway`] with a plain client, in front of a loopback upstream.
pub fn gateway_to(layer: GatewayErrorLayer, upstream: SocketAddr) -> impl GatewayService {
    gateway(layer, upstream_client(), upstream.to_string())
}

/// Rewrites the request's target to `http://<authority><path?query>`.
pub fn to_upstream<B>(authority: &str, mut request: Request<B>) -> Request<B> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = format!("http://{authority}{path}")
        .parse()
        .expect("upstream URI is valid");
    request
}

/// A request to `path` with an optional `Accept`.
pub fn request(method: &str, path: &str, accept: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(accept) = accept {
        builder = builder.header(header::ACCEPT, accept);
    }
    let body = if method == "POST" {
        Body::from("order=42")
    } else {
        Body::empty()
    };
    builder.body(body).expect("valid test request")
}

/// Sends one request through a tower service, bounded.
pub async fn call<S, B>(service: S, request: Request<B>) -> S::Response
where
    S: Service<Request<B>, Error = Infallible>,
{
    let what = format!("{} {}", request.method(), request.uri());
    match within(&what, service.oneshot(request)).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Reads a whole body, bounded.
pub async fn read_body<B>(body: B) -> Bytes
where
    B: http_body::Body,
    B::Error: Debug,
{
    within("reading the body", body.collect())
        .await
        .expect("the body ends without an error")
        .to_bytes()
}

/// A server on 127.0.0.1 that stops accepting when dropped.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `service` with hyper's HTTP/1 server on an ephemeral loopback port.
pub async fn serve<S, B>(service: S) -> RunningServer
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = within("binding the gateway", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let hyper_service =
                    hyper::service::service_fn(move |request: Request<Incoming>| {
                        service.clone().oneshot(request.map(Body::new))
                    });
                // A connection error (a client gone, a body failing mid-stream) ends only this
                // connection; the tests look at what the client saw.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .await;
            });
        }
    });
    RunningServer { addr, task }
}

/// Serves an axum app with `axum::serve`, as a user would, on an ephemeral loopback port.
pub async fn serve_router(app: axum::Router) -> RunningServer {
    let listener = within("binding the app", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum::serve runs");
    });
    RunningServer { addr, task }
}

/// [`gateway_to`], served on a real socket.
pub async fn serve_gateway(layer: GatewayErrorLayer, upstream: SocketAddr) -> RunningServer {
    serve(gateway_to(layer, upstream)).await
}

/// A response read off the socket by [`raw_exchange`], framing and all.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code of the status line.
    pub status: u16,
    /// Header fields in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Every byte after the head until the connection ended.
    pub body: Vec<u8>,
    /// The connection ended with an error (a reset) rather than a clean close.
    pub ended_with_error: bool,
}

impl RawResponse {
    /// The single value of `name`; fails the test if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "{name} appears more than once");
        first
    }

    /// The declared `Content-Length`.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .map(|v| v.parse().expect("Content-Length is a number"))
    }
}

/// Sends `method path` with `Connection: close` and the extra header lines over a fresh
/// connection, and reads until the server closes it. Nothing interprets the framing: what the
/// client gets is exactly what came off the wire.
pub async fn raw_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> RawResponse {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in extra_headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");

    within(&format!("raw {method} {path}"), async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to gateway");
        stream
            .write_all(text.as_bytes())
            .await
            .expect("send request");
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let ended_with_error = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break false,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(_) => break true,
            }
        };
        parse_raw(bytes, ended_with_error)
    })
    .await
}

fn parse_raw(bytes: Vec<u8>, ended_with_error: bool) -> RawResponse {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete response head in {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
    let head = std::str::from_utf8(&bytes[..end]).expect("the head is ASCII");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line has a colon");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    RawResponse {
        status,
        headers,
        body: bytes[end + 4..].to_vec(),
        ended_with_error,
    }
}

/// What a client expects of one generated error.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub status: StatusCode,
    /// The whole `Proxy-Status` value.
    pub proxy_status: &'a str,
    /// `None` for an error no classifier recognised: no `error_type` member then.
    pub kind: Option<ProxyErrorKind>,
    pub retryable: bool,
}

impl<'a> Expected<'a> {
    /// The usual case: the kind's own status, named by the test proxy.
    pub fn kind(kind: ProxyErrorKind, proxy_status: &'a str, retryable: bool) -> Self {
        Expected {
            status: kind.status(),
            proxy_status,
            kind: Some(kind),
            retryable,
        }
    }
}

/// Checks the headers every generated error carries, whatever its body format.
pub fn assert_generated_headers(headers: &HeaderMap, expected: &Expected<'_>, body_len: usize) {
    let get = |name: &str| {
        let mut values = headers.get_all(name).iter();
        let value = values
            .next()
            .unwrap_or_else(|| panic!("no {name} header in {headers:?}"));
        assert!(values.next().is_none(), "{name} sent twice: {headers:?}");
        value.to_str().expect("header is visible ASCII").to_owned()
    };
    assert_eq!(get(PROXY_STATUS.as_str()), expected.proxy_status);
    assert_eq!(get("cache-control"), "no-store");
    assert_eq!(get("vary"), "accept");
    assert_eq!(
        get("content-length").parse::<usize>().expect("numeric"),
        body_len,
        "Content-Length must equal the body's length"
    );
}

/// Checks a generated problem+json response the way a client would: status, headers, the body
/// parsed as JSON, and the [`ProxyError`] the layer leaves in the extensions. Returns the body.
pub async fn assert_problem<B>(response: Response<B>, expected: &Expected<'_>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: Debug,
{
    let (parts, body) = response.into_parts();
    let body = read_body(body).await;
    assert_eq!(parts.status, expected.status, "status; body: {body:?}");
    assert_generated_headers(&parts.headers, expected, body.len());
    assert_eq!(
        parts.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );

    let json = assert_problem_body(&body, expected);

    let error = parts
        .extensions
        .get::<ProxyError>()
        .expect("a generated error carries its ProxyError in the extensions");
    assert_eq!(error.kind(), expected.kind);
    assert_eq!(error.status(), expected.status);
    assert_eq!(
        error.is_retryable(),
        expected.retryable,
        "ProxyError::is_retryable"
    );
    json
}

/// Checks a problem+json body (RFC 9457) against what the response should say.
pub fn assert_problem_body(body: &[u8], expected: &Expected<'_>) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(body)));
    assert_eq!(json["type"], "about:blank");
    assert_eq!(
        json["status"],
        expected.status.as_u16(),
        "`status` equals the real status"
    );
    assert_eq!(
        json["title"],
        expected
            .status
            .canonical_reason()
            .expect("a registered status")
    );
    match expected.kind {
        Some(kind) => {
            assert_eq!(json["error_type"], kind.token());
            assert_eq!(json["detail"], kind.detail());
        }
        None => {
            assert!(
                json.get("error_type").is_none(),
                "an unrecognised error names no type: {json}"
            );
            let detail = json["detail"].as_str().expect("`detail` is a string");
            assert!(!detail.is_empty(), "`detail` says something");
        }
    }
    assert_eq!(json["retryable"], expected.retryable, "`retryable` member");
    json
}
