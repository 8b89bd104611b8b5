//! The example gateway is safe to copy: these tests drive the very proxy and server loop of
//! `examples/gateway.rs` (they live in `examples/support/proxy.rs`) with hostile clients over raw
//! TCP, in front of an upstream that records everything that reaches it.
//!
//! - slowloris: a head sent slowly, or half a head and silence, is cut off by the header-read
//!   timeout, and so is half an HTTP/2 preface; a real h2c client is served on the same port;
//! - a head over the limit is answered 431 by hyper and not forwarded;
//! - a body over the limit, declared or chunked, is answered 413 problem+json and never reaches
//!   the upstream whole;
//! - hop-by-hop headers, and those named in `Connection`, are stripped both ways;
//! - no open proxy: an absolute-form target, a `Host` or a `CONNECT` naming another server only
//!   ever reach the configured upstream;
//! - request smuggling: conflicting framing is answered 400 and not forwarded; `Content-Length`
//!   with `Transfer-Encoding: chunked` is read as chunked, and the connection is closed after the
//!   response, so the bytes after it are never read as a second request.

use crate::proxy;
use crate::support::raw;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::{GatewayErrorLayer, ProxyName};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use proxy::{Proxy, ServeOptions};
use raw::Ending;

/// The request body limit of the gateways under test.
const MAX_BODY: u64 = 1024;
/// The header-read timeout of the gateways under test.
const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

/// Aborts a spawned task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// An upstream that records every request

#[derive(Debug)]
struct Recorded {
    method: String,
    /// The request target as the upstream read it.
    target: String,
    headers: HeaderMap,
    /// The whole body, or why it could not be read.
    body: Result<Bytes, String>,
}

#[derive(Default)]
struct Seen {
    /// Request heads that reached the upstream.
    heads: AtomicUsize,
    /// Requests whose body was read to its end or failed.
    requests: Mutex<Vec<Recorded>>,
}

impl Seen {
    fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }

    /// The recorded requests, once every head that arrived has its body settled (bounded).
    async fn settled(&self) -> Vec<(String, String, HeaderMap, Result<Bytes, String>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            {
                let requests = self.requests.lock().unwrap();
                if requests.len() == self.heads() || Instant::now() > deadline {
                    return requests
                        .iter()
                        .map(|r| {
                            (
                                r.method.clone(),
                                r.target.clone(),
                                r.headers.clone(),
                                r.body.clone(),
                            )
                        })
                        .collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    _task: Task,
}

/// What the recording upstream answers: `/hop` with hop-by-hop headers of its own, anything else
/// with a small body.
fn upstream_response(path: &str) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(200);
    if path == "/hop" {
        builder = builder
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("upgrade", "h2c")
            .header("x-end-to-end", "kept");
    }
    builder
        .body(Full::new(Bytes::from_static(b"upstream ok")))
        .expect("a valid response")
}

async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let seen = Arc::new(Seen::default());
    let recorder = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = recorder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.heads.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = request.into_parts();
                        let body = tokio::time::timeout(Duration::from_secs(5), body.collect())
                            .await
                            .map_err(|_| "body timed out".to_owned())
                            .and_then(|r| r.map(|c| c.to_bytes()).map_err(|e| e.to_string()));
                        seen.requests.lock().unwrap().push(Recorded {
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, Infallible>(upstream_response(parts.uri.path()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        _task: Task(task),
    }
}

/// A listener that only counts the connections made to it: the server a hostile client would
/// like the gateway to reach.
async fn start_bystander() -> (SocketAddr, Arc<AtomicUsize>, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, connections, Task(task))
}

// ---------------------------------------------------------------------------------------------
// The gateway of examples/gateway.rs

struct Gateway {
    addr: SocketAddr,
    upstream: Upstream,
    _task: Task,
}

/// The example's gateway, configured as its `main` does, with a short header-read timeout and a
/// small body limit, in front of a recording upstream.
async fn start_gateway() -> Gateway {
    let upstream = start_upstream().await;
    let uri = format!("http://{}", upstream.addr).parse().expect("a URI");
    let proxy = Proxy::new(&uri, "edge-1", MAX_BODY).expect("a proxy");
    let layer = GatewayErrorLayer::new()
        .proxy_name(ProxyName::from_static("edge-1"))
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(5)));
    let service = ServiceBuilder::new().layer(layer).service(proxy);
    let options = ServeOptions {
        header_read_timeout: HEADER_TIMEOUT,
        ..ServeOptions::default()
    };
    serve_before(upstream, service, options).await
}

/// `service` served by the example's server loop on a loopback port, in front of `upstream`.
async fn serve_before<S, B>(upstream: Upstream, service: S, options: ServeOptions) -> Gateway
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<proxy::BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        options,
        std::future::pending(),
    ));
    Gateway {
        addr,
        upstream,
        _task: Task(task),
    }
}

/// Sends one well-formed request and returns its response: the control that shows a gateway
/// works, and that everything the upstream recorded before it has arrived.
async fn control_request(gateway: &Gateway) -> raw::Response {
    let (responses, _) = raw::exchange(
        gateway.addr,
        b"GET /control HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(responses[0].status, 200, "the control request goes through");
    responses.into_iter().next().unwrap()
}

/// The targets the upstream has seen, once settled.
async fn targets(gateway: &Gateway) -> Vec<String> {
    gateway
        .upstream
        .seen
        .settled()
        .await
        .into_iter()
        .map(|(method, target, ..)| format!("{method} {target}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Slowloris

/// Waits until the gateway closes `stream`, writing `drip` every 50 ms meanwhile (nothing if
/// empty); returns how long that took, or `None` if it stayed open for 3 s.
async fn time_until_closed(stream: &mut tokio::net::TcpStream, drip: &[u8]) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(3) {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                // hyper may say something before it closes; keep reading.
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if !drip.is_empty() {
                    use tokio::io::AsyncWriteExt;
                    if stream.write_all(drip).await.is_err() {
                        return Some(started.elapsed());
                    }
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn a_head_dripped_byte_by_byte_is_cut_off_by_the_header_read_timeout() {
    let gateway = start_gateway().await;
    let mut stream = raw::connect(gateway.addr).await;
    raw::send(&mut stream, b"GET /ok HTTP/1.1\r\nhost: gateway\r\n").await;

    // A new header line every 50 ms: each read makes progress, the head never ends.
    let closed = time_until_closed(&mut stream, b"x-drip: a\r\n").await;

    let closed = closed.expect("the gateway must close a head that never ends");
    assert!(
        closed >= HEADER_TIMEOUT - Duration::from_millis(50),
        "closed after {closed:?}, before the timeout"
    );
    assert!(
        closed < HEADER_TIMEOUT + Duration::from_secs(1),
        "closed only after {closed:?}"
    );
    assert_eq!(gateway.upstream.seen.heads(), 0, "nothing was forwarded");
}

/// Half an HTTP/1.1 head, or the first bytes of the h2c preface (the server cannot even tell which
/// protocol it is yet), then silence: both are cut off by the header read timeout.
#[tokio::test]
async fn half_a_head_and_silence_is_cut_off_by_the_header_read_timeout() {
    let gateway = start_gateway().await;
    for opening in [
        &b"POST /orders HTTP/1.1\r\nhost: gate"[..],
        &b"PRI * HTTP/2.0\r\n"[..],
    ] {
        let mut stream = raw::connect(gateway.addr).await;
        raw::send(&mut stream, opening).await;

        let closed = time_until_closed(&mut stream, b"").await;

        let opening = String::from_utf8_lossy(opening);
        let closed = closed.unwrap_or_else(|| panic!("{opening:?} and silence: still open"));
        assert!(
            closed < HEADER_TIMEOUT + Duration::from_secs(1),
            "{opening:?}: closed only after {closed:?}"
        );
    }
    assert_eq!(gateway.upstream.seen.heads(), 0);
    // The gateway still serves everyone else.
    control_request(&gateway).await;
}

/// The same port serves h2c with prior knowledge (a gRPC client's way), through the same proxy.
#[tokio::test]
async fn an_h2c_client_is_served_on_the_same_port() {
    let gateway = start_gateway().await;
    let stream = raw::connect(gateway.addr).await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("an h2c handshake");
    tokio::spawn(connection);
    let request = Request::get(format!("http://{}/h2c-check", gateway.addr))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let targets = targets(&gateway).await;
    assert!(
        targets.iter().any(|t| t == "GET /h2c-check"),
        "forwarded to the upstream as HTTP/1.1: {targets:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits

fn head_with_header_of(len: usize) -> Vec<u8> {
    let mut head = b"GET /big HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\nx-big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', len));
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[tokio::test]
async fn a_head_over_64_kib_is_431_and_not_forwarded() {
    let gateway = start_gateway().await;

    let (responses, _) = raw::exchange(gateway.addr, &head_with_header_of(70 * 1024)).await;

    assert_eq!(responses.len(), 1, "one answer: {responses:?}");
    assert_eq!(responses[0].status, 431);
    // Below the limit, the same request goes through: the limit is where it says.
    let (responses, _) = raw::exchange(gateway.addr, &head_with_header_of(32 * 1024)).await;
    assert_eq!(responses[0].status, 200);
    assert_eq!(targets(&gateway).await, ["GET /big"], "only the small one");
}

fn assert_payload_too_large(response: &raw::Response) {
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        response.header("proxy-status"),
        Some("edge-1; error=http_request_error")
    );
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("problem+json");
    assert_eq!(json["status"], 413);
    assert_eq!(json["title"], "Payload Too Large");
    assert_eq!(json["error_type"], "http_request_error");
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_and_not_forwarded() {
    let gateway = start_gateway().await;
    let body = vec![b'x'; 5000];
    let mut request =
        b"POST /upload HTTP/1.1\r\nhost: gateway\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n"
            .to_vec();
    request.extend_from_slice(&body);

    let (responses, _) = raw::exchange(gateway.addr, &request).await;

    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_payload_too_large(&responses[0]);
    control_request(&gateway).await;
    assert_eq!(targets(&gateway).await, ["GET /control"], "nothing else");
}

#[tokio::test]
async fn a_body_at_the_limit_goes_through_whole() {
    let gateway = start_gateway().await;
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nhost: gateway\r\ncontent-length: {MAX_BODY}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'y', MAX_BODY as usize));

    let (responses, _) = raw::exchange(gateway.addr, &request).await;

    assert_eq!(responses[0].status, 200);
    let seen = gateway.upstream.seen.settled().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].3.as_ref().map(Bytes::len), Ok(MAX_BODY as usize));
}

/// A chunked request whose chunks are `sizes` bytes long.
fn chunked_request(sizes: &[usize]) -> Vec<u8> {
    let mut request =
        b"POST /upload HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for &size in sizes {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'z', size));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_and_never_reaches_the_upstream_whole() {
    let gateway = start_gateway().await;

    let (responses, _) = raw::exchange(gateway.addr, &chunked_request(&[600, 600, 600])).await;

    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_payload_too_large(&responses[0]);
    // The head went ahead of the body, which was cut off at the limit: the upstream saw a
    // request that never completed, and answered nothing for it.
    for (method, target, _, body) in gateway.upstream.seen.settled().await {
        assert!(
            body.is_err(),
            "{method} {target} reached the upstream with a whole body of {:?} bytes",
            body.map(|b| b.len())
        );
    }

    // Under the limit, chunked bodies go through whole.
    let (responses, _) = raw::exchange(gateway.addr, &chunked_request(&[500, 500])).await;
    assert_eq!(responses[0].status, 200);
    let whole: Vec<usize> = gateway
        .upstream
        .seen
        .settled()
        .await
        .into_iter()
        .filter_map(|(.., body)| body.ok().map(|b| b.len()))
        .collect();
    assert_eq!(whole, [1000]);
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop headers

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
    "trailer",
    "transfer-encoding",
    "x-secret-hop",
];

#[tokio::test]
async fn hop_by_hop_request_headers_stop_at_the_gateway() {
    let gateway = start_gateway().await;
    let mut stream = raw::connect(gateway.addr).await;
    raw::send(
        &mut stream,
        b"GET /echo HTTP/1.1\r\n\
          host: gateway\r\n\
          connection: keep-alive, x-secret-hop\r\n\
          x-secret-hop: internal\r\n\
          keep-alive: timeout=5\r\n\
          te: trailers\r\n\
          proxy-connection: keep-alive\r\n\
          upgrade: websocket\r\n\
          x-end-to-end: kept\r\n\r\n",
    )
    .await;
    let response = raw::read_response(&mut stream).await;
    assert_eq!(response.status, 200);

    let seen = gateway.upstream.seen.settled().await;
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].2;
    for name in HOP_BY_HOP {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the upstream: {headers:?}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    assert_eq!(headers["via"], "1.1 edge-1");
    assert_eq!(
        headers["host"],
        gateway.upstream.addr.to_string().as_str(),
        "the upstream's own authority, not the client's"
    );
}

#[tokio::test]
async fn hop_by_hop_response_headers_stop_at_the_gateway() {
    let gateway = start_gateway().await;
    let mut stream = raw::connect(gateway.addr).await;
    raw::send(&mut stream, b"GET /hop HTTP/1.1\r\nhost: gateway\r\n\r\n").await;

    let response = raw::read_response(&mut stream).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"upstream ok");
    assert_eq!(response.header("x-end-to-end"), Some("kept"));
    for name in [
        "x-upstream-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(response.header(name).is_none(), "{name}: {response:?}");
    }
    for value in response.all("connection") {
        assert!(!value.contains("x-upstream-hop"), "{response:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// No open proxy

#[tokio::test]
async fn absolute_form_host_and_connect_reach_only_the_configured_upstream() {
    let gateway = start_gateway().await;
    let (bystander, connections, _bystander_task) = start_bystander().await;

    let attempts = [
        format!("GET http://{bystander}/steal?x=1 HTTP/1.1\r\nhost: {bystander}\r\nconnection: close\r\n\r\n"),
        "GET http://other.invalid/steal HTTP/1.1\r\nhost: other.invalid\r\nconnection: close\r\n\r\n".to_owned(),
        format!("GET /steal HTTP/1.1\r\nhost: {bystander}\r\nconnection: close\r\n\r\n"),
        format!("CONNECT {bystander} HTTP/1.1\r\nhost: {bystander}\r\n\r\n"),
    ];
    for attempt in &attempts {
        let (responses, _) = raw::exchange(gateway.addr, attempt.as_bytes()).await;
        assert_eq!(responses.len(), 1, "{attempt:?}: {responses:?}");
        if attempt.starts_with("CONNECT") {
            // No tunnel: refused by policy, never forwarded.
            assert_eq!(responses[0].status, 403, "{responses:?}");
            assert_eq!(
                responses[0].header("proxy-status"),
                Some("edge-1; error=http_request_denied")
            );
        } else {
            assert_eq!(responses[0].status, 200, "{attempt:?}");
        }
    }

    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the gateway connected to another server"
    );
    for (method, target, mut headers, _) in gateway.upstream.seen.settled().await {
        let host = headers["host"].to_str().unwrap().to_owned();
        assert_eq!(host, gateway.upstream.addr.to_string(), "{method} {target}");
        // The host the client asked for is stated as such (RFC 7239), never used as a target.
        headers.remove("forwarded");
        headers.remove("x-forwarded-host");
        let all = format!("{method} {target} {headers:?}");
        assert!(
            !all.contains("other.invalid") && !all.contains(&bystander.to_string()),
            "the upstream was told about another server: {all}"
        );
    }
    assert_eq!(
        targets(&gateway).await,
        ["GET /steal?x=1", "GET /steal", "GET /steal"],
        "each GET went to the configured upstream, in origin form; the CONNECT nowhere"
    );
}

// ---------------------------------------------------------------------------------------------
// Request smuggling

#[tokio::test]
async fn conflicting_framing_is_400_and_never_forwarded() {
    let gateway = start_gateway().await;
    let cases: [(&str, &[u8]); 9] = [
        (
            "two different Content-Lengths",
            b"POST /s1 HTTP/1.1\r\nhost: g\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
        ),
        (
            "a Content-Length list that disagrees",
            b"POST /s2 HTTP/1.1\r\nhost: g\r\ncontent-length: 4, 5\r\n\r\nabcde",
        ),
        (
            "a signed Content-Length",
            b"POST /s3 HTTP/1.1\r\nhost: g\r\ncontent-length: +4\r\n\r\nabcd",
        ),
        (
            "chunked, then identity",
            b"POST /s4 HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked in one line, identity in the next",
            b"POST /s5 HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "an unknown coding that looks like chunked",
            b"POST /s6 HTTP/1.1\r\nhost: g\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "a space before the colon",
            b"POST /s7 HTTP/1.1\r\nhost: g\r\ntransfer-encoding : chunked\r\ncontent-length: 4\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST /s8 HTTP/1.0\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "an obs-folded Transfer-Encoding",
            b"POST /s9 HTTP/1.1\r\nhost: g\r\ntransfer-encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let (responses, ending) = raw::exchange(gateway.addr, request).await;
        assert_eq!(responses.len(), 1, "{what}: {responses:?}");
        assert_eq!(responses[0].status, 400, "{what}");
        assert_ne!(
            ending,
            Ending::StillOpen,
            "{what}: the connection is closed"
        );
    }
    control_request(&gateway).await;
    assert_eq!(
        targets(&gateway).await,
        ["GET /control"],
        "none of them reached the upstream"
    );
}

#[tokio::test]
async fn content_length_with_chunked_is_read_as_chunked_and_smuggles_nothing() {
    let gateway = start_gateway().await;
    // The classic CL.TE attempt, both header orders: read by Content-Length, the body would be
    // `0\r\n\r\nGET /smuggled...`; read as chunked (RFC 9112 §6.1: Transfer-Encoding wins), it is
    // empty and the bytes after it would be a second request on the same connection.
    for head in [
        "POST /outer HTTP/1.1\r\nhost: g\r\ncontent-length: 48\r\ntransfer-encoding: chunked\r\n\r\n",
        "POST /outer HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\ncontent-length: 48\r\n\r\n",
    ] {
        let mut request = head.as_bytes().to_vec();
        request.extend_from_slice(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: g\r\n\r\n");

        let (responses, ending) = raw::exchange(gateway.addr, &request).await;

        assert_eq!(responses.len(), 1, "one response, not two: {responses:?}");
        assert_eq!(responses[0].status, 200);
        assert_ne!(
            ending,
            Ending::StillOpen,
            "hyper closes a connection whose framing was ambiguous"
        );
    }
    let seen = gateway.upstream.seen.settled().await;
    let targets: Vec<&str> = seen.iter().map(|(_, t, ..)| t.as_str()).collect();
    assert_eq!(targets, ["/outer", "/outer"], "no /smuggled");
    for (_, _, headers, body) in &seen {
        assert_eq!(body.as_deref(), Ok(&b""[..]), "the chunked reading: empty");
        assert!(
            headers.get("content-length").is_none_or(|v| v == "0"),
            "the client's Content-Length is not forwarded: {headers:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmarks' baselines: `--bare`, and `--floor` (the bare proxy plus the layer's fixed work)

/// The example's `--bare` gateway (`--floor` when `floor`), in front of a recording upstream.
async fn start_bare(floor: bool) -> Gateway {
    let upstream = start_upstream().await;
    let uri = format!("http://{}", upstream.addr).parse().expect("a URI");
    let proxy = Proxy::new(&uri, "edge-1", MAX_BODY).expect("a proxy");
    let service = if floor {
        proxy::Bare::floor(proxy, "edge-1").expect("a valid member")
    } else {
        proxy::Bare::new(proxy)
    };
    serve_before(upstream, service, ServeOptions::default()).await
}

/// What the upstream saw of `CDN-Loop` for one request that arrived with `cdn-loop: other`.
async fn cdn_loop_seen_through(gateway: &Gateway) -> Vec<String> {
    let (responses, _) = raw::exchange(
        gateway.addr,
        b"GET /page HTTP/1.1\r\nhost: gateway\r\ncdn-loop: other\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(responses[0].status, 200);
    let seen = gateway.upstream.seen.settled().await;
    assert_eq!(seen.len(), 1);
    seen[0]
        .2
        .get_all("cdn-loop")
        .iter()
        .map(|value| value.to_str().expect("visible ASCII").to_owned())
        .collect()
}

#[tokio::test]
async fn the_floor_appends_cdn_loop_as_the_layer_does_and_the_bare_proxy_does_not() {
    let floor = start_bare(true).await;
    assert_eq!(cdn_loop_seen_through(&floor).await, ["other", "edge-1"]);

    let bare = start_bare(false).await;
    assert_eq!(cdn_loop_seen_through(&bare).await, ["other"]);

    // The layer with the same name, for comparison: the floor does to the request what the
    // layer's loop detection does.
    let layered = start_gateway().await;
    assert_eq!(cdn_loop_seen_through(&layered).await, ["other", "edge-1"]);
}
