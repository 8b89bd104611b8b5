//! The client's own faults, on real sockets: a raw client on loopback stalls its upload, breaks
//! it off, uploads slowly but steadily, spoofs fields and leaves mid-response, against the
//! example gateway (its proxy, server loop and layer order: `GatewayErrorLayer`, then
//! `UpstreamHealthLayer` keyed as the example keys it, then the proxy) in front of a healthy
//! origin that records what it gets.
//!
//! What a client and an operator check: the 408 and 400 a client gets (status, `Connection`,
//! `Proxy-Status`, problem+json, when it arrives, whether the connection is closed), the bytes the
//! origin received, whether the breaker opened, and whether the stored copies are still the
//! pages the origin served to honest requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gateway_errors::TimeLimits;
use gateway_errors::fault::Fault;
use gateway_errors::health::UpstreamHealthLayer;
use gateway_errors::stale::Store;
use gateway_errors::{GatewayErrorLayer, ProxyError};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

use crate::proxy::{self, ClientBody, Proxy, ServeOptions};
use crate::support::raw::{self, Ending};
use crate::support::{self, within};

/// How long the gateways here let a client's upload stay silent.
const CLIENT_BODY_TIMEOUT: Duration = Duration::from_millis(400);
/// How long they give the origin (the example's `--timeout`).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);
/// What an upload declares, and what a stalled or cut one sends of it.
const DECLARED: usize = 100;
const SENT: usize = 10;

// ---------------------------------------------------------------------------------------------
// A healthy origin that records what it received
// ---------------------------------------------------------------------------------------------

/// Aborts a spawned task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The size of `/big`, which the origin sends in 16 pieces, 10 ms apart.
const BIG: usize = 128 * 1024;

type OriginBody = BoxBody<Bytes, Infallible>;

/// A healthy origin. It reads every request body in full before it answers, and answers:
///
/// - a gRPC call (`application/grpc`) after 300 ms: a slow route;
/// - `/upload`: how many bytes it received;
/// - `/page/...`: a storable page (`max-age=60`, `Vary: Accept-Language`) that names its path,
///   the host the gateway says the client asked for (`X-Forwarded-Host`) and the language it
///   was asked in, padded to 4 KiB;
/// - `/big`: a storable page of [`BIG`] bytes, streamed;
/// - anything else: `ok`.
///
/// Every answer closes its connection, so that no pooled connection outlives [`Origin::stop`].
struct Origin {
    addr: SocketAddr,
    /// Every complete request body it received, with its path.
    bodies: Arc<Mutex<Vec<(String, Bytes)>>>,
    /// The requests it answered.
    answered: Arc<AtomicUsize>,
    task: Option<Task>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = within("binding the origin", TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let bodies: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let answered = Arc::new(AtomicUsize::new(0));
        let (record, count) = (bodies.clone(), answered.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (record, count) = (record.clone(), count.clone());
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (record, count) = (record.clone(), count.clone());
                    async move {
                        let response = answer(request, &record).await;
                        count.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Origin {
            addr,
            bodies,
            answered,
            task: Some(Task(task)),
        }
    }

    fn bodies(&self) -> Vec<(String, Bytes)> {
        self.bodies.lock().expect("not poisoned").clone()
    }

    /// Stops listening: every connection after this is refused.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.0.abort();
        }
        let refused = within("the origin stops", async {
            loop {
                if TcpStream::connect(self.addr).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        refused.await;
    }
}

/// The page the origin serves at `path` for a request with `headers`: the bytes honest requests
/// get, which every stored copy must still be.
fn page_text(path: &str, headers: &HeaderMap) -> Bytes {
    let field = |name: &str| {
        headers
            .get(name)
            .map_or("-", |v| v.to_str().unwrap_or("?"))
            .to_owned()
    };
    let mut text = format!(
        "{path} for {} in {}\n",
        field("x-forwarded-host"),
        field("accept-language")
    );
    while text.len() < 4096 {
        text.push_str(path);
        text.push(' ');
    }
    Bytes::from(text)
}

/// The byte at `at` of `/big`: a pattern, so that a cut or shifted copy differs.
fn big_byte(at: usize) -> u8 {
    b"0123456789abcdefghijklmnopqrstuvwxyz\n"[at % 37]
}

async fn answer(
    request: Request<Incoming>,
    record: &Mutex<Vec<(String, Bytes)>>,
) -> Response<OriginBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    // The whole body first: an upload is complete before anything is answered.
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return reply(
            Response::builder().status(400),
            Full::new(Bytes::new()).boxed(),
        );
    };
    if !body.is_empty() {
        record
            .lock()
            .expect("not poisoned")
            .push((path.clone(), body.clone()));
    }
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let builder = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0");
        return reply(builder, Full::new(Bytes::new()).boxed());
    }
    if path == "/upload" {
        let text = format!("received {} bytes", body.len());
        return reply(Response::builder(), Full::new(Bytes::from(text)).boxed());
    }
    let storable = Response::builder()
        .header("content-type", "text/plain")
        .header("cache-control", "max-age=60")
        .header("vary", "Accept-Language");
    if path.starts_with("/page/") {
        return reply(
            storable,
            Full::new(page_text(&path, &parts.headers)).boxed(),
        );
    }
    if path == "/big" {
        let pieces = futures_util::stream::iter(0..16).then(|piece| async move {
            if piece > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let size = BIG / 16;
            let bytes: Vec<u8> = (piece * size..(piece + 1) * size).map(big_byte).collect();
            Ok::<_, Infallible>(Frame::data(Bytes::from(bytes)))
        });
        let builder = storable.header("content-length", BIG);
        return reply(builder, BodyExt::boxed(StreamBody::new(pieces)));
    }
    reply(Response::builder(), Full::new(Bytes::from("ok")).boxed())
}

fn reply(builder: http::response::Builder, body: OriginBody) -> Response<OriginBody> {
    builder
        .header("connection", "close")
        .body(body)
        .expect("a valid response")
}

// ---------------------------------------------------------------------------------------------
// The example gateway
// ---------------------------------------------------------------------------------------------

/// The example gateway served on loopback, with what its layer answered.
struct Gateway {
    addr: SocketAddr,
    /// The status and fault of every error the layer answered, as its `ProxyError` says.
    faults: Arc<Mutex<Vec<(u16, Fault)>>>,
    _task: Task,
}

impl Gateway {
    fn faults(&self) -> Vec<(u16, Fault)> {
        self.faults.lock().expect("not poisoned").clone()
    }
}

/// The layer the gateways here use (before a store is added): the example's `--timeout 1s` and
/// `--client-body-timeout`, shortened.
fn layer() -> GatewayErrorLayer {
    support::layer().time_limits(
        TimeLimits::new()
            .upstream_timeout(UPSTREAM_TIMEOUT)
            .client_body_timeout(CLIENT_BODY_TIMEOUT),
    )
}

/// Keeps the fault of each error response.
fn recorder<B>(
    faults: Arc<Mutex<Vec<(u16, Fault)>>>,
) -> impl Fn(Response<B>) -> Response<B> + Clone {
    move |response: Response<B>| {
        if let Some(error) = response.extensions().get::<ProxyError>() {
            faults
                .lock()
                .expect("not poisoned")
                .push((response.status().as_u16(), error.fault()));
        }
        response
    }
}

/// The example's gateway with `--breaker-failures failures`: `layer`, then the health layer
/// keyed by the one upstream, then the proxy to `upstream`, served by the example's loop.
async fn example_gateway(upstream: SocketAddr, layer: GatewayErrorLayer, failures: u32) -> Gateway {
    let listener = within("binding the gateway", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let uri: Uri = format!("http://{upstream}").parse().expect("a URI");
    let proxy = Proxy::new(&uri, "edge-1", 1024 * 1024).expect("a proxy");
    let key: Arc<str> = uri.to_string().trim_end_matches('/').into();
    let health = UpstreamHealthLayer::new()
        .consecutive_failures(failures)
        .open_time(Duration::from_secs(10))
        .key_by(move |_: &Request<ClientBody>| Some(key.clone()));
    let faults: Arc<Mutex<Vec<(u16, Fault)>>> = Arc::default();
    let service = ServiceBuilder::new()
        .map_response(recorder(faults.clone()))
        .layer(layer)
        .layer(health)
        .service(proxy);
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    ));
    Gateway {
        addr,
        faults,
        _task: Task(task),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

/// A request head with `Host: shop.test` and the extra field lines.
fn head(method: &str, path: &str, fields: &[&str]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: shop.test\r\n");
    for field in fields {
        head.push_str(field);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// An upload's head (`Content-Length: 100`, and the extra field lines) and its first ten bytes.
fn partial_upload(method: &str, path: &str, fields: &[&str]) -> Vec<u8> {
    let length = format!("content-length: {DECLARED}");
    let mut all = vec![length.as_str()];
    all.extend_from_slice(fields);
    let mut bytes = head(method, path, &all).into_bytes();
    bytes.extend_from_slice(&[b'x'; SENT]);
    bytes
}

/// What a client whose upload stalled saw.
struct Stalled {
    response: raw::Response,
    /// From its last byte sent to the response's arrival.
    waited: Duration,
    /// How the connection ended after the response.
    ending: Ending,
}

/// Sends ten bytes of a hundred, then nothing; reads the answer, then whether the gateway
/// closes the connection (within 2 s).
async fn stalled_upload(gateway: SocketAddr, method: &str, path: &str) -> Stalled {
    stalled_upload_with(gateway, method, path, &[]).await
}

/// [`stalled_upload`] with extra field lines.
async fn stalled_upload_with(
    gateway: SocketAddr,
    method: &str,
    path: &str,
    fields: &[&str],
) -> Stalled {
    let mut stream = raw::connect(gateway).await;
    raw::send(&mut stream, &partial_upload(method, path, fields)).await;
    let sent = Instant::now();
    let response = raw::read_response(&mut stream).await;
    let waited = sent.elapsed();
    let (_, ending) = raw::read_until_close(&mut stream, Duration::from_secs(2)).await;
    Stalled {
        response,
        waited,
        ending,
    }
}

/// Sends ten bytes of a hundred, then shuts its write side (FIN); reads what comes back on the
/// read side.
async fn cut_upload(gateway: SocketAddr, method: &str, path: &str) -> Vec<raw::Response> {
    let mut stream = raw::connect(gateway).await;
    raw::send(&mut stream, &partial_upload(method, path, &[])).await;
    let _ = stream.shutdown().await;
    let (bytes, _) = raw::read_until_close(&mut stream, Duration::from_secs(5)).await;
    raw::parse_all(&bytes)
}

/// An honest GET of `path` (`Connection: close`), with extra field lines.
async fn get(gateway: SocketAddr, path: &str, fields: &[&str]) -> raw::Response {
    let mut all = vec!["connection: close"];
    all.extend_from_slice(fields);
    let (responses, _) = raw::exchange(gateway, head("GET", path, &all).as_bytes()).await;
    assert_eq!(responses.len(), 1, "GET {path}: {responses:?}");
    responses.into_iter().next().expect("a response")
}

fn from_copy(response: &raw::Response) -> bool {
    response
        .header("cache-status")
        .is_some_and(|status| status.contains("fwd=stale"))
}

/// The checks a client makes on the layer's answer to its own fault: `status`, the problem+json
/// body saying so, and a `Proxy-Status` that names the gateway and no error of the next hop.
fn assert_clients_fault(response: &raw::Response, status: u16) {
    assert_eq!(
        response.status,
        status,
        "{response:?}: {}",
        String::from_utf8_lossy(&response.body)
    );
    let proxy_status = response.header("proxy-status").expect("a Proxy-Status");
    assert!(proxy_status.starts_with("edge-1"), "{proxy_status}");
    assert!(
        !proxy_status.contains("error="),
        "a next-hop error type for the client's own fault: {proxy_status}"
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value =
        serde_json::from_slice(&response.body).expect("a problem+json body");
    assert_eq!(problem["status"], status);
    assert!(
        problem.get("error_type").is_none(),
        "no RFC 9209 type: {problem}"
    );
    assert!(!from_copy(response), "answered from a copy: {response:?}");
}

// ---------------------------------------------------------------------------------------------
// One client, one fault
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stalled_upload_is_answered_408_at_the_client_body_timeout_and_closed() {
    let origin = Origin::start().await;
    let gateway = example_gateway(origin.addr, layer(), 3).await;

    let stalled = stalled_upload(gateway.addr, "POST", "/upload").await;

    assert_clients_fault(&stalled.response, 408);
    assert_eq!(stalled.response.header("connection"), Some("close"));
    // At the client body timeout, well before the upstream timeout would have run out.
    assert!(
        stalled.waited >= CLIENT_BODY_TIMEOUT - Duration::from_millis(50)
            && stalled.waited < UPSTREAM_TIMEOUT,
        "answered after {:?}",
        stalled.waited
    );
    assert_ne!(
        stalled.ending,
        Ending::StillOpen,
        "the gateway keeps the connection of a client it answered 408"
    );
    assert_eq!(gateway.faults(), [(408, Fault::Client)]);

    // The body is negotiated as for any error the layer makes: a browser gets HTML.
    let browser =
        stalled_upload_with(gateway.addr, "POST", "/upload", &["accept: text/html"]).await;
    assert_eq!(browser.response.status, 408);
    assert_eq!(browser.response.header("connection"), Some("close"));
    let content_type = browser.response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(!browser.response.body.is_empty());
    assert!(
        origin.bodies().is_empty(),
        "the origin never got a whole body"
    );
}

#[tokio::test]
async fn a_cut_upload_is_answered_400_on_the_read_side() {
    let origin = Origin::start().await;
    let gateway = example_gateway(origin.addr, layer(), 3).await;

    let responses = cut_upload(gateway.addr, "POST", "/upload").await;

    assert_eq!(responses.len(), 1, "one answer: {responses:?}");
    let response = &responses[0];
    assert_clients_fault(response, 400);
    let proxy_status = response.header("proxy-status").unwrap_or_default();
    assert!(
        !proxy_status.contains("http_response_incomplete"),
        "{proxy_status}"
    );
    assert_eq!(gateway.faults(), [(400, Fault::Client)]);
    assert!(origin.bodies().is_empty());
}

#[tokio::test]
async fn a_slow_steady_upload_longer_than_the_upstream_timeout_reaches_the_origin_whole() {
    let origin = Origin::start().await;
    let gateway = example_gateway(origin.addr, layer(), 3).await;
    let upload: Vec<u8> = (0..DECLARED).map(|i| b'a' + (i % 26) as u8).collect();

    let mut stream = raw::connect(gateway.addr).await;
    let started = Instant::now();
    let length = format!("content-length: {DECLARED}");
    raw::send(
        &mut stream,
        head("POST", "/upload", &["connection: close", &length]).as_bytes(),
    )
    .await;
    // Ten pieces, 300 ms apart: each well within the client body timeout, all together far
    // past the upstream timeout.
    for piece in upload.chunks(SENT) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        raw::send(&mut stream, piece).await;
    }
    let response = raw::read_response(&mut stream).await;

    assert!(started.elapsed() > UPSTREAM_TIMEOUT + Duration::from_millis(1500));
    assert_eq!(
        response.status,
        200,
        "{response:?}: {}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.body, b"received 100 bytes");
    assert_eq!(
        origin.bodies(),
        [("/upload".to_owned(), Bytes::from(upload))]
    );
    assert!(gateway.faults().is_empty(), "{:?}", gateway.faults());
}

// ---------------------------------------------------------------------------------------------
// The breaker and the store
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stalled_and_cut_uploads_never_open_the_breaker() {
    let origin = Origin::start().await;
    let gateway = example_gateway(origin.addr, layer(), 3).await;

    for _ in 0..3 {
        let stalled = stalled_upload(gateway.addr, "POST", "/upload").await;
        assert_clients_fault(&stalled.response, 408);
    }
    for _ in 0..3 {
        let responses = cut_upload(gateway.addr, "POST", "/upload").await;
        assert_eq!(responses.len(), 1, "{responses:?}");
        assert_clients_fault(&responses[0], 400);
    }
    let response = get(gateway.addr, "/ok", &[]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"ok");

    // The same gateway in front of a port that refuses: three failures of the upstream's own
    // open it.
    let refusing = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("local address")
    };
    let gateway = example_gateway(refusing, layer(), 3).await;
    for _ in 0..3 {
        let response = get(gateway.addr, "/ok", &[]).await;
        assert_eq!(response.status, 502, "{response:?}");
    }
    let response = get(gateway.addr, "/ok", &[]).await;
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(
        response.header("proxy-status"),
        Some("edge-1; error=destination_unavailable")
    );
}

/// A store with room for everything the tests here serve.
fn store() -> Store {
    Store::new()
        .default_window(Duration::from_secs(600))
        .max_response_bytes(1024 * 1024)
        .max_bytes(16 * 1024 * 1024)
}

#[tokio::test]
async fn stalled_and_cut_uploads_neither_change_nor_get_a_stored_copy() {
    let mut origin = Origin::start().await;
    let store = store();
    let gateway = example_gateway(origin.addr, layer().serve_stale(store.clone()), 3).await;

    let honest = get(gateway.addr, "/page/a", &[]).await;
    assert_eq!(honest.status, 200);
    assert_eq!(store.len(), 1);

    // Uploads to the stored page's URL: GETs with a body (a copy could answer those) and POSTs
    // (whose success would drop the copy).
    for method in ["GET", "POST"] {
        let stalled = stalled_upload(gateway.addr, method, "/page/a").await;
        assert_clients_fault(&stalled.response, 408);
        let responses = cut_upload(gateway.addr, method, "/page/a").await;
        assert_eq!(responses.len(), 1, "{method}: {responses:?}");
        assert_clients_fault(&responses[0], 400);
    }
    assert_eq!(store.len(), 1, "the copy is still there");
    assert!(
        gateway
            .faults()
            .iter()
            .all(|(_, fault)| *fault == Fault::Client),
        "{:?}",
        gateway.faults()
    );

    origin.stop().await;
    let during_outage = get(gateway.addr, "/page/a", &[]).await;
    assert_eq!(during_outage.status, 200, "{during_outage:?}");
    assert!(from_copy(&during_outage), "{during_outage:?}");
    assert_eq!(during_outage.body, honest.body);
}

// ---------------------------------------------------------------------------------------------
// One hostile client, a thousand requests
// ---------------------------------------------------------------------------------------------

/// What one hostile request does.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// A POST or a GET with a body that stalls after ten bytes.
    Stalled(&'static str),
    /// A POST or a GET with a body cut after ten bytes.
    Cut(&'static str),
    /// A gRPC call that gives itself a millisecond (`grpc-timeout: 1m`), to a slow route.
    Grpc,
    /// `Accept-Language: fr`, named in `Connection`.
    HiddenLanguage,
    /// `Connection: cdn-loop` with a `CDN-Loop` of another CDN, or of this gateway's own name.
    CdnLoop { own_name: bool },
    /// Reads the head and a few bytes of `/big`, then leaves.
    Leaves,
    /// `Forwarded` and `X-Forwarded-*` naming another host, client and scheme.
    SpoofsForwarding,
}

const PAGES: [&str; 5] = ["/page/0", "/page/1", "/page/2", "/page/3", "/page/4"];

/// The `n`th request of the storm: kinds in runs of ten (so that a run of one kind reaches the
/// breaker together), pages in turn.
fn nth(n: usize) -> (Hostile, &'static str) {
    let page = PAGES[n % PAGES.len()];
    let odd = n % 2 == 1;
    let kind = match (n / 10) % 9 {
        0 => Hostile::Stalled("POST"),
        1 => Hostile::Stalled("GET"),
        2 => Hostile::Cut("POST"),
        3 => Hostile::Cut("GET"),
        4 => Hostile::Grpc,
        5 => Hostile::HiddenLanguage,
        6 => Hostile::CdnLoop { own_name: odd },
        7 => Hostile::Leaves,
        _ => Hostile::SpoofsForwarding,
    };
    // Half the gRPC calls go to a page's URL: a POST there that a store took for a write would
    // drop its copies.
    let path = match kind {
        Hostile::Grpc if odd => "/demo.Slow/Call",
        Hostile::Leaves => "/big",
        _ => page,
    };
    (kind, path)
}

/// Sends one hostile request; `Err` says what was wrong with the answer.
async fn hostile(
    gateway: SocketAddr,
    kind: Hostile,
    path: &str,
    honest: &[(String, Bytes)],
) -> Result<(), String> {
    let page_for_honest = || {
        honest
            .iter()
            .find(|(key, _)| key == path)
            .map(|(_, body)| body.clone())
    };
    let check_page = |response: &raw::Response| -> Result<(), String> {
        if response.status != 200 || from_copy(response) {
            return Err(format!("{kind:?} {path}: {response:?}"));
        }
        if Some(Bytes::from(response.body.clone())) != page_for_honest() {
            return Err(format!(
                "{kind:?} {path}: the origin served {:?}",
                String::from_utf8_lossy(&response.body[..64.min(response.body.len())])
            ));
        }
        Ok(())
    };
    let status_is = |response: &raw::Response, status: u16| -> Result<(), String> {
        if response.status != status || from_copy(response) {
            return Err(format!("{kind:?} {path}: {response:?}"));
        }
        Ok(())
    };
    match kind {
        Hostile::Stalled(method) => {
            let stalled = stalled_upload(gateway, method, path).await;
            status_is(&stalled.response, 408)
        }
        Hostile::Cut(method) => {
            let responses = cut_upload(gateway, method, path).await;
            match responses.as_slice() {
                [response] => status_is(response, 400),
                other => Err(format!("{kind:?} {path}: {other:?}")),
            }
        }
        Hostile::Grpc => {
            let mut request = head(
                "POST",
                path,
                &[
                    "connection: close",
                    "content-type: application/grpc",
                    "te: trailers",
                    "grpc-timeout: 1m",
                    "content-length: 5",
                ],
            )
            .into_bytes();
            request.extend_from_slice(&[0; 5]);
            let (responses, _) = raw::exchange(gateway, &request).await;
            match responses.as_slice() {
                [response]
                    if response.status == 200 && response.header("grpc-status") == Some("4") =>
                {
                    Ok(())
                }
                other => Err(format!("{kind:?} {path}: {other:?}")),
            }
        }
        Hostile::HiddenLanguage => {
            let response = get(
                gateway,
                path,
                &["connection: accept-language", "accept-language: fr"],
            )
            .await;
            check_page(&response)
        }
        Hostile::CdnLoop { own_name } => {
            let member = if own_name { "edge-1" } else { "other-cdn" };
            let cdn_loop = format!("cdn-loop: {member}");
            let response = get(gateway, path, &["connection: cdn-loop", &cdn_loop]).await;
            if own_name {
                // Its own name coming back: a loop, which no copy hides.
                match response.header("proxy-status") {
                    Some("edge-1; error=proxy_loop_detected") => status_is(&response, 502),
                    _ => Err(format!("{kind:?} {path}: {response:?}")),
                }
            } else {
                check_page(&response)
            }
        }
        Hostile::Leaves => {
            let mut stream = raw::connect(gateway).await;
            raw::send(
                &mut stream,
                head("GET", path, &["connection: close"]).as_bytes(),
            )
            .await;
            let mut bytes = Vec::new();
            let mut buf = [0u8; 1024];
            // The head and a little of the body, then gone, the rest unread.
            while !bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.len() < 2048 {
                match within(
                    "reading /big",
                    tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
                )
                .await
                {
                    Ok(0) | Err(_) => return Err(format!("{kind:?}: ended early")),
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
            drop(stream);
            // The head alone: the body is the origin's, still on its way.
            let end = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a whole head");
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            if head.starts_with("http/1.1 200 ") && !head.contains("fwd=stale") {
                Ok(())
            } else {
                Err(format!("{kind:?}: {head}"))
            }
        }
        Hostile::SpoofsForwarding => {
            let response = get(
                gateway,
                path,
                &[
                    "forwarded: for=127.203.113.9;host=evil.test;proto=https",
                    "x-forwarded-for: 127.203.113.9",
                    "x-forwarded-host: evil.test",
                    "x-forwarded-proto: https",
                ],
            )
            .await;
            check_page(&response)
        }
    }
}

#[tokio::test]
async fn a_thousand_hostile_requests_from_one_client_leave_the_breaker_closed_and_every_copy_intact()
 {
    let started = Instant::now();
    let mut origin = Origin::start().await;
    let store = store();
    let gateway = example_gateway(origin.addr, layer().serve_stale(store.clone()), 3).await;

    // What the origin serves honest requests: each page in the default language and in French,
    // and `/big`; each is stored.
    let mut honest: Vec<(&str, &[&str], Bytes)> = Vec::new();
    for page in PAGES {
        for language in [&[][..], &["accept-language: fr"][..]] {
            let response = get(gateway.addr, page, language).await;
            assert_eq!(response.status, 200, "{response:?}");
            honest.push((page, language, Bytes::from(response.body)));
        }
    }
    let big = get(gateway.addr, "/big", &[]).await;
    assert_eq!(big.status, 200);
    assert_eq!(big.body, (0..BIG).map(big_byte).collect::<Vec<u8>>());
    honest.push(("/big", &[], Bytes::from(big.body)));
    assert_eq!(store.len(), honest.len());
    // The pages as a request without a language gets them: what every hostile GET that reaches
    // the origin must get too.
    let default_pages: Arc<Vec<(String, Bytes)>> = Arc::new(
        honest
            .iter()
            .filter(|(_, language, _)| language.is_empty())
            .map(|(path, _, body)| ((*path).to_owned(), body.clone()))
            .collect(),
    );

    let storm = futures_util::stream::iter(0..1000)
        .map(|n| {
            let default_pages = default_pages.clone();
            let addr = gateway.addr;
            async move {
                let (kind, path) = nth(n);
                hostile(addr, kind, path, &default_pages).await
            }
        })
        .buffer_unordered(50)
        .filter_map(|outcome| async move { outcome.err() })
        .collect::<Vec<String>>();
    let failures = match tokio::time::timeout(Duration::from_secs(60), storm).await {
        Ok(failures) => failures,
        Err(_) => panic!("the storm took over 60 s"),
    };
    assert!(
        failures.is_empty(),
        "{} of 1000 hostile requests answered wrongly, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let upstream_faults: Vec<_> = gateway
        .faults()
        .into_iter()
        .filter(|(_, fault)| *fault == Fault::Upstream)
        .collect();
    assert!(
        upstream_faults.is_empty(),
        "a healthy origin blamed: {upstream_faults:?}"
    );

    assert_eq!(store.len(), honest.len(), "every copy is still stored");

    // The breaker is closed: a plain request reaches the origin.
    let answered = origin.answered.load(Ordering::SeqCst);
    let response = get(gateway.addr, "/ok", &[]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"ok");
    assert!(origin.answered.load(Ordering::SeqCst) > answered);

    // The origin goes down: every stored page answers from its copy, byte for byte what the
    // origin served to honest requests.
    origin.stop().await;
    for (path, language, body) in &honest {
        let response = get(gateway.addr, path, language).await;
        assert_eq!(response.status, 200, "{path} {language:?}: {response:?}");
        assert!(from_copy(&response), "{path} {language:?}: {response:?}");
        assert!(
            response.body == body.as_ref(),
            "{path} {language:?}: the copy is not the page honest requests got: {:?}",
            String::from_utf8_lossy(&response.body[..64.min(response.body.len())])
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}
