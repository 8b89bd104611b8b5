//! Hop-by-hop fields (RFC 9110 §7.6.1) and forwarding fields (RFC 7239), on real sockets: an
//! origin on loopback records what reached it, and the example gateway (its proxy and server loop)
//! or a plain hyper-util client stack stands in front of it.
//!
//! - a field a client names in `Connection` never reaches the origin, and the layer never reads
//!   it either: the stale store keeps the page under the request the origin answered; a head
//!   of thousands of options is answered as any other;
//! - `Connection: cdn-loop` cannot remove the gateway's own `CDN-Loop` member: a gateway pointed
//!   at itself stops as soon as without it;
//! - an upgrade with other options named beside `upgrade` still switches (WebSocket);
//! - the example gateway replaces a client's `Forwarded` and `X-Forwarded-*` with its own;
//! - `remove_hop_by_hop` never panics on any bytes, and removes what a model says it should.

use gateway_errors::body::UploadBody;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway_errors::headers::{CDN_LOOP, remove_hop_by_hop};
use gateway_errors::stale::Store;
use gateway_errors::{GatewayErrorLayer, ProxyName};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower::ServiceBuilder;

use crate::proxy::{self, Proxy, ServeOptions};
use crate::support::{self, demo_upstream, raw, within};

// ---------------------------------------------------------------------------------------------
// An origin that records the heads it receives, and can stop listening

/// Aborts a spawned task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Origin {
    addr: SocketAddr,
    /// The header fields of every request that reached it, in order.
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    /// Answers every request with `answer(request headers)`. Each answer closes its connection,
    /// so that no pooled connection outlives [`Origin::stop`].
    async fn start(
        answer: impl Fn(&HeaderMap) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
    ) -> Origin {
        let listener = within("binding the origin", TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                let answer = answer.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    record
                        .lock()
                        .expect("not poisoned")
                        .push(request.headers().clone());
                    let mut response = answer(request.headers());
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Origin {
            addr,
            seen,
            task: Some(task),
        }
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Stops listening: every connection after this is refused.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let refused = tokio::net::TcpStream::connect(self.addr).await;
        assert!(refused.is_err(), "the origin still listens");
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The example gateway

/// The example's proxy named `edge-1` behind `layer`, forwarding to `upstream`, served by the
/// example's server loop on `listener`; the counter counts the requests that reach it.
fn example_gateway(
    listener: TcpListener,
    upstream: SocketAddr,
    layer: GatewayErrorLayer,
) -> (Arc<AtomicUsize>, Task) {
    let uri: Uri = format!("http://{upstream}").parse().expect("a URI");
    let proxy = Proxy::new(&uri, "edge-1", 1024 * 1024).expect("a proxy");
    let arrived = Arc::new(AtomicUsize::new(0));
    let counted = arrived.clone();
    let service = ServiceBuilder::new()
        .map_request(move |request| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
        })
        .layer(layer.proxy_name(ProxyName::from_static("edge-1")))
        .service(proxy);
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    ));
    (arrived, Task(task))
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = within("binding the gateway", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// Sends `GET path` with `Host: shop.test` and the extra field lines (the connection is closed
/// after the answer: `Connection: close`, and whatever `connection` adds to it), and reads the
/// one response.
async fn get(gateway: SocketAddr, path: &str, connection: &str, fields: &[&str]) -> raw::Response {
    let mut head =
        format!("GET {path} HTTP/1.1\r\nhost: shop.test\r\nconnection: close{connection}\r\n");
    for field in fields {
        head.push_str(field);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let (responses, _) = raw::exchange(gateway, head.as_bytes()).await;
    assert_eq!(responses.len(), 1, "one response: {responses:?}");
    responses.into_iter().next().expect("a response")
}

fn text(response: &raw::Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

// ---------------------------------------------------------------------------------------------
// What the layer reads is what the origin gets

/// A page that varies on `Accept-Language`, in the language the origin was asked for.
fn page_in_asked_language(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let language = headers
        .get("accept-language")
        .map_or("default", |v| v.to_str().expect("ASCII"));
    Response::builder()
        .header("cache-control", "max-age=60")
        .header("vary", "Accept-Language")
        .body(Full::new(Bytes::from(format!("page in {language}"))))
        .expect("a response")
}

#[tokio::test]
async fn a_language_the_client_named_in_connection_never_keys_the_stored_page() {
    let mut origin = Origin::start(page_in_asked_language).await;
    let store = Store::new().default_window(Duration::from_secs(600));
    let (listener, gateway) = bind().await;
    let (_arrived, _task) = example_gateway(
        listener,
        origin.addr,
        support::layer().serve_stale(store.clone()),
    );

    let french = get(gateway, "/", "", &["accept-language: fr"]).await;
    assert_eq!(text(&french), "page in fr");
    // `Accept-Language` named as this hop's own: the origin answers without it.
    let hidden = get(gateway, "/", ", accept-language", &["accept-language: fr"]).await;
    assert_eq!(hidden.status, 200);
    assert_eq!(text(&hidden), "page in default");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["accept-language"], "fr");
    assert!(
        seen[1].get("accept-language").is_none(),
        "the origin got a field the client named in Connection: {:?}",
        seen[1]
    );
    assert!(seen[1].get("connection").is_none(), "{:?}", seen[1]);
    assert_eq!(store.len(), 2, "the French page and the default one");

    origin.stop().await;
    // The next French visitor during the outage gets the French page, not the one the origin
    // chose for a request without a language.
    let french = get(gateway, "/", "", &["accept-language: fr"]).await;
    assert_eq!(french.status, 200);
    assert_eq!(
        french
            .header("cache-status")
            .map(|s| s.contains("fwd=stale")),
        Some(true)
    );
    assert_eq!(text(&french), "page in fr");
    let no_language = get(gateway, "/", "", &[]).await;
    assert_eq!(no_language.status, 200);
    assert_eq!(text(&no_language), "page in default");
}

/// The plain stack a user builds (the layer around a hyper-util client, no proxy code of its own)
/// no longer passes on what `Connection` names: the layer removed it.
#[tokio::test]
async fn a_plain_client_stack_forwards_nothing_connection_names() {
    let origin = Origin::start(|_: &HeaderMap| Response::new(Full::new(Bytes::from("ok")))).await;
    let gateway = support::serve_gateway(support::layer(), origin.addr).await;

    let response = get(
        gateway.addr,
        "/",
        ", x-hop, Accept-Language, te",
        &[
            "x-hop: 1",
            "accept-language: fr",
            "te: trailers",
            "keep-alive: timeout=5",
            "accept: text/html",
        ],
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    for name in ["x-hop", "accept-language", "te", "keep-alive"] {
        assert!(
            seen[0].get(name).is_none(),
            "{name} reached the origin: {:?}",
            seen[0]
        );
    }
    for value in seen[0].get_all("connection") {
        let value = value.to_str().expect("ASCII").to_ascii_lowercase();
        assert!(
            !value.contains("x-hop") && !value.contains("accept-language"),
            "{value}"
        );
    }
    assert_eq!(seen[0]["accept"], "text/html");
    assert_eq!(seen[0]["cdn-loop"], "edge-1");
}

/// A head near the example's 64 KiB limit, all of it `Connection` options (and one field they
/// name at the end): answered as any request, the named field kept from the origin.
#[tokio::test]
async fn thousands_of_options_in_connection_are_answered_in_time() {
    let origin = Origin::start(|_: &HeaderMap| Response::new(Full::new(Bytes::from("ok")))).await;
    let (listener, gateway) = bind().await;
    let (_arrived, _task) = example_gateway(listener, origin.addr, support::layer());
    let options = format!(
        ", {}x-last, \"{}",
        "x-none,,".repeat(7_000),
        "q, ".repeat(1_000)
    );

    let response = get(gateway, "/", &options, &["x-last: 1", "x-kept: 1"]).await;

    assert_eq!(response.status, 200);
    let seen = origin.seen();
    assert!(seen[0].get("x-last").is_none(), "{:?}", seen[0].keys());
    assert_eq!(seen[0]["x-kept"], "1");
}

// ---------------------------------------------------------------------------------------------
// CDN-Loop

/// The layer in front of a proxy that does what RFC 9110 §7.6.1 says and nothing more: it
/// removes every field `Connection` names (whatever it is), then forwards with a plain client.
fn literal_gateway(listener: TcpListener, upstream: SocketAddr) -> (Arc<AtomicUsize>, Task) {
    let client: Client<_, UploadBody<Incoming>> =
        Client::builder(TokioExecutor::new()).build_http();
    let arrived = Arc::new(AtomicUsize::new(0));
    let counted = arrived.clone();
    let service = ServiceBuilder::new()
        .map_request(move |request| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
        })
        .layer(support::layer())
        .map_request(move |mut request: Request<UploadBody<Incoming>>| {
            let named: Vec<String> = request
                .headers()
                .get_all("connection")
                .iter()
                .flat_map(|line| line.to_str().unwrap_or_default().split(','))
                .map(|name| name.trim().to_owned())
                .collect();
            for name in named {
                request.headers_mut().remove(name.as_str());
            }
            request.headers_mut().remove("connection");
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = format!("http://{upstream}{path}").parse().expect("a URI");
            request
        })
        .service(client);
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    ));
    (arrived, Task(task))
}

#[tokio::test]
async fn naming_cdn_loop_in_connection_does_not_remove_the_gateways_member() {
    // A gateway pointed at itself, as in `loops.rs`: without the trick it stops at the first
    // return (the client's request and its own). The example's proxy, and one that removes
    // whatever `Connection` names.
    for (literal, connection) in [
        (false, ""),
        (false, ", cdn-loop"),
        (false, ", CDN-Loop, keep-alive"),
        (true, ""),
        (true, ", cdn-loop"),
    ] {
        let (listener, addr) = bind().await;
        let (arrived, _task) = if literal {
            literal_gateway(listener, addr)
        } else {
            example_gateway(listener, addr, support::layer())
        };

        let response = get(addr, "/orders", connection, &["accept: application/json"]).await;

        assert_eq!(
            response.status, 502,
            "{literal} {connection:?}: {response:?}"
        );
        assert_eq!(
            response.header("proxy-status"),
            Some("edge-1; error=proxy_loop_detected"),
            "{literal} {connection:?}"
        );
        assert_eq!(
            arrived.load(Ordering::SeqCst),
            2,
            "{literal} {connection:?}"
        );
    }
}

#[tokio::test]
async fn a_client_cannot_erase_the_members_before_ours_by_naming_cdn_loop() {
    let origin = Origin::start(|_: &HeaderMap| Response::new(Full::new(Bytes::from("ok")))).await;
    let (listener, gateway) = bind().await;
    let (_arrived, _task) = example_gateway(listener, origin.addr, support::layer());

    let response = get(gateway, "/", ", cdn-loop", &["cdn-loop: cdn-x"]).await;

    assert_eq!(response.status, 200);
    let seen = origin.seen();
    let members: Vec<&str> = seen[0]
        .get_all(&CDN_LOOP)
        .iter()
        .map(|v| v.to_str().expect("ASCII"))
        .collect();
    assert_eq!(members, ["cdn-x", "edge-1"]);
}

// ---------------------------------------------------------------------------------------------
// Upgrades

#[tokio::test]
async fn a_websocket_with_more_options_beside_upgrade_still_switches() {
    let demo = within("demo upstream", demo_upstream::spawn())
        .await
        .expect("demo upstream");
    let (listener, gateway) = bind().await;
    let (_arrived, _task) = example_gateway(listener, demo.addr, support::layer());

    let mut request = format!("ws://{gateway}/ws")
        .into_client_request()
        .expect("a WebSocket request");
    request.headers_mut().insert(
        "connection",
        HeaderValue::from_static("keep-alive, Upgrade, x-hop"),
    );
    request
        .headers_mut()
        .insert("x-hop", HeaderValue::from_static("1"));
    let stream = raw::connect(gateway).await;
    let (mut socket, response) = within(
        "the handshake",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("the upgrade goes through");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    socket
        .send(Message::text("still a tunnel"))
        .await
        .expect("send");
    let echoed = within("the echo", socket.next()).await;
    assert_eq!(
        echoed.expect("a message").expect("no error"),
        Message::text("still a tunnel")
    );
    socket.close(None).await.expect("close");
}

#[tokio::test]
async fn an_upgrade_request_reaches_the_origin_with_its_two_fields_only() {
    let origin = Origin::start(|_: &HeaderMap| Response::new(Full::new(Bytes::from("ok")))).await;
    let (listener, gateway) = bind().await;
    let (_arrived, _task) = example_gateway(listener, origin.addr, support::layer());

    // The origin answers 200 (RFC 9110 §7.8: it may ignore `Upgrade`).
    let response = get(
        gateway,
        "/",
        ", upgrade, x-hop",
        &["upgrade: websocket", "x-hop: 1"],
    )
    .await;

    assert_eq!(response.status, 200);
    let seen = origin.seen();
    assert_eq!(seen[0]["upgrade"], "websocket");
    assert_eq!(seen[0]["connection"], "upgrade");
    assert!(seen[0].get("x-hop").is_none(), "{:?}", seen[0]);
}

// ---------------------------------------------------------------------------------------------
// Forwarded, X-Forwarded-*

#[tokio::test]
async fn the_example_gateway_replaces_a_clients_forwarding_fields_with_its_own() {
    let origin = Origin::start(|_: &HeaderMap| Response::new(Full::new(Bytes::from("ok")))).await;
    let (listener, gateway) = bind().await;
    let (_arrived, _task) = example_gateway(listener, origin.addr, support::layer());

    let claims = [
        "forwarded: for=127.203.113.9;host=evil.test;proto=https",
        "forwarded: for=127.51.100.1",
        "x-forwarded-for: 127.203.113.9",
        "x-forwarded-host: evil.test",
        "x-forwarded-proto: https",
        "x-forwarded-port: 443",
        "x-real-ip: 127.203.113.9",
    ];
    let response = get(gateway, "/", "", &claims).await;
    assert_eq!(response.status, 200);
    // Without any: the same fields, written by the gateway.
    let response = get(gateway, "/", "", &[]).await;
    assert_eq!(response.status, 200);

    for seen in origin.seen() {
        let all = |name: &str| -> Vec<String> {
            seen.get_all(name)
                .iter()
                .map(|v| v.to_str().expect("ASCII").to_owned())
                .collect()
        };
        assert_eq!(
            all("forwarded"),
            ["for=127.0.0.1;host=shop.test;proto=http"]
        );
        assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(all("x-forwarded-host"), ["shop.test"]);
        assert_eq!(all("x-forwarded-proto"), ["http"]);
        assert!(all("x-forwarded-port").is_empty());
        assert!(all("x-real-ip").is_empty());
    }
}

#[test]
fn forwarded_values_quote_what_is_no_token() {
    let v4 = "127.0.2.7".parse().unwrap();
    let v6 = "2001:db8::17".parse().unwrap();
    let host_port = Authority::from_static("shop.test:8080");
    let v6_host = Authority::from_static("[2001:db8::1]:443");
    let cases = [
        (Some(v4), None, "for=127.0.2.7;proto=http"),
        (
            Some(v6),
            Some(&host_port),
            "for=\"[2001:db8::17]\";host=\"shop.test:8080\";proto=http",
        ),
        (
            None,
            Some(&v6_host),
            "for=unknown;host=\"[2001:db8::1]:443\";proto=http",
        ),
    ];
    for (client, host, expected) in cases {
        assert_eq!(proxy::forwarded_value(client, host, "http"), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Any bytes

/// Field names the properties draw from: some the function keeps whatever is named, some it
/// removes, in mixed case.
const NAMES: [&str; 12] = [
    "x-hop",
    "Accept-Language",
    "accept",
    "te",
    "upgrade",
    "host",
    "content-length",
    "cdn-loop",
    "keep-alive",
    "close",
    "Transfer-Encoding",
    "x-a-name-longer-than-sixty-four-bytes-which-http-looks-up-off-the-stack",
];

/// What a `Connection` line names, as the function should read it: its list members, trimmed,
/// lowercased, that are tokens (no quoted string is ever generated here).
fn named(line: &str) -> Vec<String> {
    line.split(',')
        .map(|member| member.trim_matches([' ', '\t']).to_ascii_lowercase())
        .filter(|member| {
            !member.is_empty()
                && member
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        })
        .collect()
}

fn connection_line() -> impl Strategy<Value = String> {
    let member = prop_oneof![
        proptest::sample::select(&NAMES[..]).prop_map(str::to_owned),
        "[ \t]{0,2}[a-zA-Z0-9!#*+.^_|~-]{0,8}[ \t]{0,2}",
    ];
    proptest::collection::vec(member, 0..8).prop_map(|members| members.join(","))
}

/// Any bytes a field value may hold, heavy in what list parsing looks at (commas, quotes,
/// backslashes, whitespace), with field names among them.
fn hostile_line() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        prop_oneof![Just(b','), Just(b'"'), Just(b'\\'), Just(b' '), Just(b'\t')],
        0x21u8..0x7f,
        0x80u8..=0xff,
    ];
    let piece = prop_oneof![
        proptest::sample::select(&NAMES[..]).prop_map(|name| name.as_bytes().to_vec()),
        proptest::collection::vec(byte, 0..16),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// Proptest's default number of cases (or `PROPTEST_CASES`), without regression files in the
/// tree.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes in `Connection`: no panic, and no `Connection` left unless it is the `upgrade`
    /// an upgrade keeps.
    #[test]
    fn remove_hop_by_hop_never_panics(
        lines in proptest::collection::vec(hostile_line(), 0..4),
        fields in proptest::collection::vec(proptest::sample::select(&NAMES[..]), 0..6),
    ) {
        let mut headers = HeaderMap::new();
        for line in &lines {
            if let Ok(value) = HeaderValue::from_bytes(line) {
                headers.append(http::header::CONNECTION, value);
            }
        }
        for name in &fields {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        remove_hop_by_hop(&mut headers);
        for value in headers.get_all(http::header::CONNECTION) {
            prop_assert_eq!(value, "upgrade");
            prop_assert!(headers.contains_key(http::header::UPGRADE));
        }
        prop_assert!(!headers.contains_key("keep-alive"));
        prop_assert!(!headers.contains_key("proxy-connection"));
    }

    /// Well-formed lists: exactly the named fields go, except those the request cannot lose, and
    /// `Upgrade` stays exactly when `upgrade` is named.
    #[test]
    fn remove_hop_by_hop_removes_what_is_named(
        lines in proptest::collection::vec(connection_line(), 1..3),
        fields in proptest::collection::vec(proptest::sample::select(&NAMES[..]), 0..8),
    ) {
        let mut headers = HeaderMap::new();
        for line in &lines {
            headers.append(http::header::CONNECTION, HeaderValue::from_str(line).unwrap());
        }
        for name in &fields {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        let named: Vec<String> = lines.iter().flat_map(|line| named(line)).collect();
        let upgrade =
            named.iter().any(|n| n == "upgrade") && fields.contains(&"upgrade");

        remove_hop_by_hop(&mut headers);

        for name in &fields {
            let lower = name.to_ascii_lowercase();
            let kept = match lower.as_str() {
                "keep-alive" => false,
                "upgrade" => upgrade,
                "close" | "host" | "content-length" | "transfer-encoding" | "cdn-loop" => true,
                _ => !named.contains(&lower),
            };
            prop_assert_eq!(headers.contains_key(lower.as_str()), kept, "{}", lower);
        }
        let connection: Vec<_> =
            headers.get_all(http::header::CONNECTION).iter().collect();
        if upgrade {
            prop_assert_eq!(connection, [&HeaderValue::from_static("upgrade")]);
        } else {
            prop_assert!(connection.is_empty());
        }
    }
}
