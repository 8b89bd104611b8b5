//! gRPC callers through the layer: a real tonic client, the gateway served over h2c, and a real
//! tonic server (or a port that refuses) behind it, all on 127.0.0.1.
//!
//! What a gRPC client reads is `grpc-status` and `grpc-message`: these tests check the codes and
//! messages tonic reports, the head a generated error has, the grpc-web framing, the deadline
//! from `grpc-timeout`, and the span's RPC fields.

use crate::grpc_demo;
use crate::proxy;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use gateway_errors::TimeLimits;
use gateway_errors::grpc::GrpcCode;
use gateway_errors::grpc::GrpcCodes;
use gateway_errors::retry::RetryHints;
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tower::ServiceExt;

use crate::support::{self, GatewayService, PROXY_NAME, statuses, within};
use grpc_demo::{DemoClient, Ping};

// ---------------------------------------------------------------------------------------------
// The setup: demo service, gateway over h2c, client
// ---------------------------------------------------------------------------------------------

/// A hyper-util client that speaks h2c to the upstream, as a gRPC gateway must.
fn h2_client() -> Client<HttpConnector, support::Upload> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// The gateway: `layer` in front of an h2c client to `upstream`.
fn gateway(layer: GatewayErrorLayer, upstream: SocketAddr) -> impl GatewayService {
    support::gateway(layer, h2_client(), upstream.to_string())
}

/// A loopback address where nothing listens: bound, then released, so a connect is refused.
async fn refusing_addr() -> SocketAddr {
    let listener = within("binding a port", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// A gateway served on loopback with HTTP/1.1 and h2c (prior knowledge) on one port.
struct ServedGateway {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServedGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S, B>(service: S) -> ServedGateway
where
    S: tower::Service<
            Request<Body>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = within("binding the gateway", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            connections.spawn(async move {
                let hyper_service =
                    hyper::service::service_fn(move |request: Request<Incoming>| {
                        service.clone().oneshot(request.map(Body::new))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .await;
            });
        }
    });
    ServedGateway { addr, task }
}

async fn client(gateway: &ServedGateway) -> DemoClient<tonic::transport::Channel> {
    within(
        "connecting to the gateway",
        DemoClient::connect(gateway.addr),
    )
    .await
    .expect("the gateway accepts h2c")
}

/// A gRPC client's error message must be the client-safe sentence, never internals.
fn assert_client_safe(status: &tonic::Status, expected: &str) {
    assert_eq!(status.message(), expected, "{status:?}");
    let message = status.message().to_ascii_lowercase();
    for internal in [
        "hyper",
        "os error",
        "connection refused (",
        "127.0.0.1",
        "client error",
    ] {
        assert!(
            !message.contains(internal),
            "{internal:?} leaked: {status:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// tonic client → gateway → tonic server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_healthy_call_succeeds_through_the_gateway() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let served = serve(gateway(support::layer(), demo.addr)).await;
    let mut client = client(&served).await;
    let response = within("Ok", client.unary(grpc_demo::OK, "hi", None))
        .await
        .expect("a healthy call succeeds");
    assert_eq!(response.into_inner().text, "pong: hi");
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable_with_the_client_safe_message() {
    let served = serve(gateway(support::layer(), refusing_addr().await)).await;
    let mut client = client(&served).await;
    let status = within("Ok", client.unary(grpc_demo::OK, "hi", None))
        .await
        .expect_err("nothing listens upstream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_client_safe(&status, ProxyErrorKind::ConnectionRefused.detail());
    // Trailers-only: the other fields of the head reach the client as metadata.
    assert_eq!(
        status.metadata().get("proxy-status").unwrap(),
        "edge-1; error=connection_refused"
    );
}

#[tokio::test]
async fn a_stalled_upstream_is_deadline_exceeded_at_the_gateways_timeout() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let layer = support::layer()
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300)));
    let served = serve(gateway(layer, demo.addr)).await;
    let mut client = client(&served).await;
    let started = Instant::now();
    // The caller's own deadline is later: the gateway's timeout is the sooner and wins.
    let status = within(
        "Stall",
        client.unary(grpc_demo::STALL, "x", Some(Duration::from_secs(20))),
    )
    .await
    .expect_err("the upstream never answers");
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_client_safe(&status, ProxyErrorKind::HttpResponseTimeout.detail());
    assert!(
        elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn the_callers_grpc_timeout_ends_a_stalled_call_when_it_is_sooner() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    // Without a configured timeout, and with one far later than the caller's deadline.
    for layer in [
        support::layer(),
        support::layer().time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(20))),
    ] {
        let served = serve(gateway(layer, demo.addr)).await;
        // tonic's own channel would end the call itself at the same moment (as `Cancelled`,
        // "Timeout expired"): this transport leaves the deadline to the server side.
        let mut client = DemoClient::over_hyper(served.addr);
        let started = Instant::now();
        let status = within(
            "Stall",
            client.unary(grpc_demo::STALL, "x", Some(Duration::from_millis(300))),
        )
        .await
        .expect_err("the upstream never answers");
        let elapsed = started.elapsed();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(
            status.metadata().get("proxy-status").unwrap(),
            "edge-1; error=http_response_timeout",
            "the gateway answered, not the client's own timer"
        );
        assert!(
            elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
    }
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_ignored_not_taken_as_a_deadline() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let service = gateway(support::layer(), demo.addr);
    // No unit: read as "1 nanosecond" it would end the call at once. It must not end it at all.
    let request = grpc_request(
        grpc_demo::STALL,
        "application/grpc",
        &[("grpc-timeout", "1")],
    );
    let outcome = tokio::time::timeout(Duration::from_millis(400), service.oneshot(request)).await;
    assert!(
        outcome.is_err(),
        "a malformed grpc-timeout cut the call short"
    );
}

#[tokio::test]
async fn the_origins_own_status_arrives_unchanged() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    // Even with interception on for every error status: a gRPC answer is not an HTTP error.
    let layer = support::layer().failure_statuses(statuses(400..=599));
    let served = serve(gateway(layer, demo.addr)).await;
    let mut client = client(&served).await;
    let status = within("NotFound", client.unary(grpc_demo::NOT_FOUND, "x", None))
        .await
        .expect_err("the origin says NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), grpc_demo::NOT_FOUND_MESSAGE);
    assert!(
        status.metadata().get("proxy-status").is_none(),
        "{status:?}"
    );
}

#[tokio::test]
async fn an_error_in_the_origins_trailers_arrives_after_its_messages() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let served = serve(gateway(support::layer(), demo.addr)).await;
    let mut client = client(&served).await;
    let (messages, end) = within(
        "FailAfterOne",
        client.server_stream(grpc_demo::FAIL_AFTER_ONE),
    )
    .await;
    assert_eq!(
        messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["first"]
    );
    let status = end.expect_err("the stream ends with the origin's error");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), grpc_demo::FAIL_AFTER_ONE_MESSAGE);
}

#[tokio::test]
async fn an_intercepted_http_error_page_becomes_the_mapped_grpc_status() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let layer = support::layer().failure_statuses([StatusCode::from_u16(503).unwrap()]);
    let served = serve(gateway(layer, demo.addr)).await;
    let mut client = client(&served).await;
    let status = within("Html503", client.unary(grpc_demo::HTML_503, "x", None))
        .await
        .expect_err("the origin failed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_client_safe(&status, "The upstream server failed to handle the request.");
    assert_eq!(
        status.metadata().get("proxy-status").unwrap(),
        "edge-1; received-status=503"
    );
}

#[tokio::test]
async fn an_http_error_page_passes_through_when_not_intercepted() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let served = serve(gateway(support::layer(), demo.addr)).await;
    let mut client = client(&served).await;
    let status = within("Html503", client.unary(grpc_demo::HTML_503, "x", None))
        .await
        .expect_err("the origin failed");
    // The origin's head arrives as it was; tonic then reads the HTML as gRPC frames and reports
    // a protocol error. This is what interception is for.
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("503"), "{status:?}");
    assert_eq!(status.metadata().get("content-type").unwrap(), "text/html");
    assert!(
        status.metadata().get("proxy-status").is_none(),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_grpc_status_on_an_http_error_is_the_origins_answer_and_not_intercepted() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let layer = support::layer().failure_statuses([StatusCode::from_u16(503).unwrap()]);
    let served = serve(gateway(layer, demo.addr)).await;
    let mut client = client(&served).await;
    let status = within("Grpc503", client.unary(grpc_demo::GRPC_503, "x", None))
        .await
        .expect_err("the origin is draining");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), grpc_demo::GRPC_503_MESSAGE);
}

#[tokio::test]
async fn the_example_proxy_carries_grpc_over_h2c() {
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let upstream: http::Uri = format!("http://{}", demo.addr).parse().unwrap();
    let example = proxy::Proxy::new(&upstream, PROXY_NAME, 1 << 20)
        .unwrap()
        .http2_only();
    let service = tower::ServiceBuilder::new()
        .layer(
            support::layer()
                .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300))),
        )
        .service(example);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let mut client = within("connecting", DemoClient::connect(addr))
        .await
        .unwrap();
    let ok = within("Ok", client.unary(grpc_demo::OK, "via", None)).await;
    assert_eq!(ok.expect("a healthy call").into_inner().text, "pong: via");
    let not_found = within("NotFound", client.unary(grpc_demo::NOT_FOUND, "x", None)).await;
    assert_eq!(not_found.unwrap_err().code(), Code::NotFound);
    let stall = within("Stall", client.unary(grpc_demo::STALL, "x", None)).await;
    assert_eq!(stall.unwrap_err().code(), Code::DeadlineExceeded);
    serving.abort();
}

// ---------------------------------------------------------------------------------------------
// The head of a generated gRPC error, as the tower service returns it
// ---------------------------------------------------------------------------------------------

/// A gRPC request head with a real message, as a gRPC client frames it.
fn grpc_request(path: &str, content_type: &str, extra: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::post(path)
        .header("content-type", content_type)
        .header("te", "trailers");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Body::from(grpc_frame(&Ping { text: "x".into() })))
        .expect("a valid request")
}

/// One length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, the bytes.
fn grpc_frame(message: &Ping) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    frame.freeze()
}

#[tokio::test]
async fn a_generated_grpc_error_is_a_trailers_only_200_that_keeps_proxy_status_and_retry_hints() {
    let layer = support::layer().retry_hints(
        RetryHints::new()
            .retry_after_for_kind(ProxyErrorKind::ConnectionRefused, Duration::from_secs(3)),
    );
    let service = gateway(layer, refusing_addr().await);
    // The answers after the first come from the layer's cache, with the caller's own type.
    let content_types = [
        ("application/grpc+proto", "application/grpc+proto"),
        ("application/grpc", "application/grpc"),
        (
            "application/grpc+json; charset=utf-8",
            "application/grpc+json",
        ),
        ("application/grpc+proto", "application/grpc+proto"),
    ];
    for (sent, answered) in content_types {
        let response = support::call(service.clone(), grpc_request(grpc_demo::OK, sent, &[])).await;
        let (parts, body) = response.into_parts();
        assert_eq!(parts.status, StatusCode::OK, "{sent}");
        let header = |name: &str| parts.headers.get(name).map(|v| v.to_str().unwrap());
        assert_eq!(header("content-type"), Some(answered));
        assert_eq!(header("grpc-status"), Some("14"));
        assert_eq!(
            header("grpc-message"),
            Some(ProxyErrorKind::ConnectionRefused.detail())
        );
        assert_eq!(
            header("proxy-status"),
            Some("edge-1; error=connection_refused")
        );
        assert_eq!(header("retry-after"), Some("3"));
        assert_eq!(header("grpc-retry-pushback-ms"), Some("3000"));
        assert_eq!(header("cache-control"), Some("no-store"));
        // The answer does not follow Accept, and has no body to measure.
        assert_eq!(header("vary"), None);
        assert_eq!(header("content-length"), None);
        let error = parts.extensions.get::<ProxyError>().expect("the extension");
        assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionRefused));
        assert_eq!(error.status(), StatusCode::BAD_GATEWAY);
        assert!(support::read_body(body).await.is_empty());
    }
}

#[tokio::test]
async fn the_code_per_kind_can_be_overridden() {
    let layer = support::layer().grpc_codes(GrpcCodes::new().code_for_kind(
        ProxyErrorKind::ConnectionRefused,
        GrpcCode::ResourceExhausted,
    ));
    let served = serve(gateway(layer, refusing_addr().await)).await;
    let mut client = client(&served).await;
    let status = within("Ok", client.unary(grpc_demo::OK, "hi", None))
        .await
        .expect_err("nothing listens upstream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn an_axum_handlers_proxy_error_reaches_a_grpc_caller_as_its_code() {
    async fn denied() -> Result<String, ProxyError> {
        Err(ProxyError::new(ProxyErrorKind::HttpRequestDenied))
    }
    let app = axum::Router::new()
        .route("/demo.Demo/Ok", axum::routing::post(denied))
        .layer(support::layer());
    let response = support::call(app, grpc_request(grpc_demo::OK, "application/grpc", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    assert_eq!(headers["grpc-status"], "7");
    assert_eq!(
        headers["grpc-message"],
        ProxyErrorKind::HttpRequestDenied.detail()
    );
    assert_eq!(headers["proxy-status"], "edge-1; error=http_request_denied");
}

type ExtraHeaders<'a> = &'a [(&'a str, &'a str)];

#[tokio::test]
async fn odd_content_types_paths_and_timeouts_never_break_a_response() {
    let service = gateway(support::layer(), refusing_addr().await);
    let long_path = format!("/{}/M", "s".repeat(10_000));
    // (path, content type, extra headers, the grpc-status it may get; none: not a gRPC call)
    const REFUSED: Option<&[&str]> = Some(&["14"]);
    let cases: &[(&str, &str, ExtraHeaders<'_>, Option<&[&str]>)] = &[
        ("/demo.Demo/Ok", "application/grpc;;; ;", &[], REFUSED),
        ("/demo.Demo/Ok", "APPLICATION/GRPC+Weird", &[], REFUSED),
        ("/demo.Demo/Ok", "application/grpcx", &[], None),
        ("/demo.Demo/Ok", "application/grpc-web-textual", &[], None),
        ("/demo.Demo/Ok", "application/grpc+", &[], None),
        (
            "/demo.Demo/Ok",
            "application/grpc",
            &[("grpc-timeout", "999999999H")],
            REFUSED,
        ),
        (
            "/demo.Demo/Ok",
            "application/grpc",
            &[("grpc-timeout", "-1S")],
            REFUSED,
        ),
        // A zero deadline: over before the refusal arrives, or not.
        (
            "/demo.Demo/Ok",
            "application/grpc",
            &[("grpc-timeout", "0n")],
            Some(&["4", "14"]),
        ),
        ("/a/b/c/d", "application/grpc", &[], REFUSED),
        ("/%00/%FF", "application/grpc", &[], REFUSED),
        ("/", "application/grpc", &[], REFUSED),
        (long_path.as_str(), "application/grpc", &[], REFUSED),
    ];
    for (path, content_type, extra, codes) in cases {
        let response =
            support::call(service.clone(), grpc_request(path, content_type, extra)).await;
        let what = format!("{path:.40} {content_type} {extra:?}");
        match codes {
            Some(codes) => {
                assert_eq!(response.status(), StatusCode::OK, "{what}");
                let code = response.headers()["grpc-status"].to_str().unwrap();
                assert!(codes.contains(&code), "{what}: {code}");
            }
            None => {
                assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{what}");
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json",
                    "{what}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC-Web, over HTTP/1.1 as a browser sends it
// ---------------------------------------------------------------------------------------------

/// Sends one request over a fresh HTTP/1.1 connection and returns the head and the whole body.
async fn http1_exchange(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes) {
    within("a grpc-web exchange", async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let response = sender.send_request(request).await.expect("a response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("a whole body").to_bytes();
        (parts, body)
    })
    .await
}

fn grpc_web_request(content_type: &str) -> Request<Full<Bytes>> {
    Request::post(grpc_demo::OK)
        .header("host", "gateway")
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(Full::new(grpc_frame(&Ping { text: "x".into() })))
        .expect("a valid request")
}

/// Splits a grpc-web body into its frames: (flag, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a truncated frame header: {body:?}");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(body.len() >= 5 + len, "a truncated frame: {body:?}");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// A trailer frame's payload: `name:value` lines, each ending in CRLF.
fn trailer_fields(payload: &[u8]) -> BTreeMap<String, String> {
    let text = std::str::from_utf8(payload).expect("trailers are ASCII");
    assert!(text.ends_with("\r\n"), "{text:?}");
    text.split_terminator("\r\n")
        .map(|line| {
            let (name, value) = line.split_once(':').expect("name:value");
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn grpc_web_gets_its_status_in_a_trailer_frame_in_the_body() {
    let served = serve(gateway(support::layer(), refusing_addr().await)).await;
    let (head, body) =
        http1_exchange(served.addr, grpc_web_request("application/grpc-web+proto")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-type"], "application/grpc-web+proto");
    assert_eq!(
        head.headers["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(
        head.headers["proxy-status"],
        "edge-1; error=connection_refused"
    );
    let frames = frames(&body);
    assert_eq!(frames.len(), 1, "one trailer frame and nothing else");
    let (flag, payload) = &frames[0];
    assert_eq!(*flag, 0x80, "the trailer flag, uncompressed");
    let fields = trailer_fields(payload);
    assert_eq!(fields["grpc-status"], "14");
    assert_eq!(
        fields["grpc-message"],
        ProxyErrorKind::ConnectionRefused.detail()
    );
}

#[tokio::test]
async fn grpc_web_text_gets_the_same_frame_in_base64() {
    let served = serve(gateway(support::layer(), refusing_addr().await)).await;
    let (head, body) =
        http1_exchange(served.addr, grpc_web_request("application/grpc-web-text")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-type"], "application/grpc-web-text");
    let decoded = decode_base64(&body);
    let frames = frames(&decoded);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, 0x80);
    assert_eq!(trailer_fields(&frames[0].1)["grpc-status"], "14");
}

/// Standard base64 with padding, decoded (enough for a test; rejects anything else).
fn decode_base64(text: &[u8]) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", char::from(c)),
        }
    };
    assert_eq!(text.len() % 4, 0, "padded base64");
    let mut out = Vec::new();
    for quad in text.chunks(4) {
        let data: Vec<u8> = quad.iter().copied().filter(|&c| c != b'=').collect();
        let n = data
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | value(c) << (18 - 6 * i));
        for i in 0..data.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Spans
// ---------------------------------------------------------------------------------------------

/// Captures the fields of every `gateway.request` span, including those recorded later.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct SpanIndex(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != "gateway.request" {
            return;
        }
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push(fields);
        let index = spans.len() - 1;
        drop(spans);
        ctx.span(id)
            .expect("a new span")
            .extensions_mut()
            .insert(SpanIndex(index));
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(index) = ctx
            .span(id)
            .and_then(|span| span.extensions().get::<SpanIndex>().map(|i| i.0))
        else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[index]));
    }
}

impl Spans {
    fn last(&self) -> BTreeMap<String, String> {
        self.0.lock().unwrap().last().cloned().expect("a span")
    }
}

#[tokio::test]
async fn spans_carry_the_rpc_fields_with_the_status_the_client_got() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    // Callsites first met on another thread while no subscriber was set may have cached
    // "never": ask again now that this one is.
    tracing::callsite::rebuild_interest_cache();
    let field = |fields: &BTreeMap<String, String>, name: &str| fields.get(name).cloned();

    // A generated error: HTTP 200 on the wire, the RFC 9209 token and the gRPC code on the span.
    let refused = gateway(support::layer(), refusing_addr().await);
    // tracing caches whether a callsite is wanted when it is first met, on whatever thread: one
    // call first, then the cache is asked again with this thread's subscriber in place.
    support::call(
        refused.clone(),
        grpc_request("/demo.Demo/Ok", "application/grpc", &[]),
    )
    .await;
    tracing::callsite::rebuild_interest_cache();
    support::call(
        refused.clone(),
        grpc_request("/demo.Demo/Ok", "application/grpc", &[]),
    )
    .await;
    let fields = spans.last();
    assert_eq!(field(&fields, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(field(&fields, "rpc.service").as_deref(), Some("demo.Demo"));
    assert_eq!(field(&fields, "rpc.method").as_deref(), Some("Ok"));
    assert_eq!(
        field(&fields, "rpc.grpc.status_code").as_deref(),
        Some("14")
    );
    assert_eq!(
        field(&fields, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        field(&fields, "error.type").as_deref(),
        Some("connection_refused")
    );
    assert_eq!(field(&fields, "otel.status_code").as_deref(), Some("ERROR"));

    // A path of another shape: the call is still gRPC, but names no service or method.
    support::call(
        refused.clone(),
        grpc_request("/a/b/c", "application/grpc", &[]),
    )
    .await;
    let fields = spans.last();
    assert_eq!(field(&fields, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(field(&fields, "rpc.service"), None);
    assert_eq!(field(&fields, "rpc.method"), None);

    // Not gRPC: no RPC fields at all.
    support::call(refused, support::request("GET", "/demo.Demo/Ok", None)).await;
    let fields = spans.last();
    assert_eq!(field(&fields, "rpc.system"), None);
    assert_eq!(
        field(&fields, "http.response.status_code").as_deref(),
        Some("502")
    );

    // Forwarded: the origin's own grpc-status, from its trailers-only answer.
    let demo = within("demo", grpc_demo::spawn()).await.unwrap();
    let response = support::call(
        gateway(support::layer(), demo.addr),
        grpc_request(grpc_demo::NOT_FOUND, "application/grpc", &[]),
    )
    .await;
    support::read_body(response.into_body()).await;
    let fields = spans.last();
    assert_eq!(field(&fields, "rpc.grpc.status_code").as_deref(), Some("5"));
    assert_eq!(
        field(&fields, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        field(&fields, "gateway.generated").as_deref(),
        Some("false")
    );
    assert_eq!(field(&fields, "rpc.method").as_deref(), Some("NotFound"));
}

// ---------------------------------------------------------------------------------------------
// A caller's own deadline and the upstream's health
// ---------------------------------------------------------------------------------------------

/// A healthy origin on loopback that answers every request (HTTP/1.1 or h2c) with `200 ok`
/// after `delay`; it stops when dropped.
struct SlowOrigin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn slow_origin(delay: Duration) -> SlowOrigin {
    let listener = within("binding the origin", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections.spawn(async move {
                let service =
                    hyper::service::service_fn(move |_request: Request<Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok\n"),
                        )))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    SlowOrigin { addr, task }
}

#[tokio::test]
async fn a_callers_own_deadline_never_marks_a_healthy_upstream_unavailable() {
    // The example gateway's settings: three failures open it for 20 s; a 1 s upstream timeout.
    let origin = slow_origin(Duration::from_millis(300)).await;
    let authority = origin.addr.to_string();
    let gateway = tower::ServiceBuilder::new()
        .layer(
            support::layer()
                .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1))),
        )
        .map_request(move |request| support::to_upstream(&authority, request))
        .layer(
            gateway_errors::health::UpstreamHealthLayer::new()
                .consecutive_failures(3)
                .open_time(Duration::from_secs(20)),
        )
        .service(h2_client());
    let served = serve(gateway).await;
    // A gRPC client over h2c to the gateway.
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let at = |path: &str| format!("http://{}{path}", served.addr);
    for _ in 0..3 {
        let mut call = grpc_request(grpc_demo::OK, "application/grpc", &[("grpc-timeout", "1m")]);
        *call.uri_mut() = at(grpc_demo::OK).parse().unwrap();
        let response = within("a call with a 1 ms deadline", client.request(call))
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers["grpc-status"], "4",
            "DEADLINE_EXCEEDED: {headers:?}"
        );
        assert_eq!(
            headers["proxy-status"],
            "edge-1; error=http_response_timeout"
        );
        support::read_body(response.into_body()).await;
    }
    // A plain request to the same upstream: forwarded, and answered by the origin.
    let get = Request::get(at("/orders")).body(Body::empty()).unwrap();
    let response = within("a plain GET", client.request(get))
        .await
        .expect("an answer");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "not 503 destination_unavailable: {:?}",
        response.headers()
    );
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(support::read_body(response.into_body()).await, "ok\n");
}
