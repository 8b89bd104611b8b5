//! Stale-if-error on real sockets: an origin on loopback serves pages, then stops listening (or
//! stalls, or fails), and the gateway answers from its last good copies, or does not, as RFC 9111
//! and RFC 5861 say.
//!
//! Staleness comes from the origin's own `Age` header where a test needs a copy that is already
//! some seconds old: no test waits for a clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::stale::{StaleCopy, Store};
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind};
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::support::{self, GatewayService, call, gateway_to, read_body, serve, within};

// ---------------------------------------------------------------------------------------------
// An origin whose answers the test sets, and which can stop listening
// ---------------------------------------------------------------------------------------------

/// A request as the origin read it.
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How the origin answers one request. Every answer closes its connection, so that no pooled
/// connection outlives a change of answer or the origin itself.
#[derive(Clone)]
enum Reply {
    /// A whole response with `Content-Length` (and `Date`, as servers send it).
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A chunked response; after its first chunk the origin waits for `gate`.
    Chunked {
        headers: Vec<(String, String)>,
        chunks: Vec<Vec<u8>>,
        gate: Option<Arc<Notify>>,
    },
    /// A chunked head and one chunk of `sent` bytes, then a close without the last chunk.
    CutChunked { sent: usize },
    /// A head declaring `declared` bytes, `sent` of them, then a close.
    Cut {
        headers: Vec<(String, String)>,
        declared: usize,
        sent: usize,
    },
    /// A head declaring `declared` bytes, `sent` of them, then silence.
    StallBody { declared: usize, sent: usize },
    /// No answer at all.
    Silent,
}

impl Reply {
    fn page(cache_control: &str, body: &str) -> Reply {
        Reply::with(200, &[("cache-control", cache_control)], body)
    }

    fn with(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::Full {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }
}

type Route = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Origin {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = within("binding the origin", TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let routes = routes.clone();
            let hits = hits.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let routes = routes.clone();
                    let hits = hits.clone();
                    tokio::spawn(async move {
                        let _ = answer(stream, &routes, &hits).await;
                    });
                }
            }
        });
        Origin {
            addr,
            routes,
            hits,
            task,
        }
    }

    /// Answers `path` (without the query) with `route` from now on.
    fn route(&self, path: &str, route: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), Arc::new(route));
    }

    /// Answers `path` with `reply` from now on.
    fn set(&self, path: &str, reply: Reply) {
        self.route(path, move |_| reply.clone());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening: every connection after this is refused.
    async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let refused = TcpStream::connect(self.addr).await;
        assert!(refused.is_err(), "the origin still listens");
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    hits: &AtomicUsize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let seen = Seen {
        method,
        path,
        headers,
    };
    let route = routes.lock().unwrap().get(&seen.path).cloned();
    let reply = match route {
        Some(route) => route(&seen),
        None => Reply::with(404, &[], "no such route\n"),
    };
    let head_of = |status: u16, fields: &[(String, String)], framing: &str| {
        let mut text = format!(
            "HTTP/1.1 {status} Whatever\r\ndate: {}\r\nconnection: close\r\n{framing}\r\n",
            httpdate::fmt_http_date(SystemTime::now())
        );
        for (name, value) in fields {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text.into_bytes()
    };
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let framing = format!("content-length: {}", body.len());
            stream
                .write_all(&head_of(status, &headers, &framing))
                .await?;
            if seen.method != "HEAD" {
                stream.write_all(&body).await?;
            }
        }
        Reply::Chunked {
            headers,
            chunks,
            gate,
        } => {
            stream
                .write_all(&head_of(200, &headers, "transfer-encoding: chunked"))
                .await?;
            for (i, chunk) in chunks.iter().enumerate() {
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.write_all(chunk).await?;
                stream.write_all(b"\r\n").await?;
                stream.flush().await?;
                if i == 0 {
                    if let Some(gate) = &gate {
                        gate.notified().await;
                    }
                }
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Reply::Cut {
            headers,
            declared,
            sent,
        } => {
            let framing = format!("content-length: {declared}");
            stream.write_all(&head_of(200, &headers, &framing)).await?;
            stream.write_all(&vec![b'c'; sent]).await?;
        }
        Reply::CutChunked { sent } => {
            let fields = [("cache-control".to_owned(), "max-age=60".to_owned())];
            stream
                .write_all(&head_of(200, &fields, "transfer-encoding: chunked"))
                .await?;
            stream.write_all(format!("{sent:x}\r\n").as_bytes()).await?;
            stream.write_all(&vec![b'c'; sent]).await?;
            stream.write_all(b"\r\n").await?;
        }
        Reply::StallBody { declared, sent } => {
            let framing = format!("content-length: {declared}");
            let fields = [("cache-control".to_owned(), "max-age=60".to_owned())];
            stream.write_all(&head_of(200, &fields, &framing)).await?;
            stream.write_all(&vec![b's'; sent]).await?;
            stream.flush().await?;
            while stream.read(&mut buf).await? > 0 {}
        }
        Reply::Silent => while stream.read(&mut buf).await? > 0 {},
    }
    stream.flush().await?;
    stream.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// The gateway, and what a client sees
// ---------------------------------------------------------------------------------------------

/// A store that keeps copies up to ten minutes past their freshness.
fn store() -> Store {
    Store::new().default_window(Duration::from_secs(600))
}

fn layer(store: &Store) -> GatewayErrorLayer {
    support::layer().serve_stale(store.clone())
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "www.example.com");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).expect("a valid request")
}

/// What a client got: status, head and whole body, and the extension of an answer from a copy.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    from_copy: Option<StaleCopy>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        assert!(
            values.next().is_none(),
            "{name} sent twice: {:?}",
            self.headers
        );
        Some(first.to_str().expect("a visible header"))
    }

    /// The copy's age, as sent.
    fn age(&self) -> u64 {
        self.header("age")
            .expect("an Age header")
            .parse()
            .expect("Age is a number")
    }

    /// Checks an answer from a copy: 200, the body, `Age` non-zero, `Cache-Status` with
    /// `fwd=stale`, `Proxy-Status` naming `hidden`, no `Warning`.
    fn assert_stale(&self, body: &str, proxy_status: &str, fwd_status: u16) {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.headers);
        assert_eq!(self.body, body);
        assert!(self.age() >= 1, "Age is never 0");
        let cache_status = self.header("cache-status").expect("a Cache-Status");
        assert!(
            cache_status.starts_with(&format!("edge-1; fwd=stale; fwd-status={fwd_status}; ttl=")),
            "{cache_status}"
        );
        assert_eq!(self.header("proxy-status"), Some(proxy_status));
        assert!(self.headers.get("warning").is_none());
        assert!(self.from_copy.is_some());
    }

    /// Checks that no copy answered: the layer's own error.
    fn assert_generated(&self, status: StatusCode) {
        assert_eq!(self.status, status, "{:?} {:?}", self.headers, self.body);
        assert!(self.from_copy.is_none());
        assert!(self.headers.get("cache-status").is_none());
        assert_eq!(self.header("cache-control"), Some("no-store"));
    }
}

async fn fetch(gateway: impl GatewayService, request: Request<Body>) -> Got {
    let response = call(gateway, request).await;
    let from_copy = response.extensions().get::<StaleCopy>().cloned();
    let (parts, body) = response.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: read_body(body).await,
        from_copy,
    }
}

async fn get(gateway: &impl GatewayService, path: &str) -> Got {
    fetch(gateway.clone(), request("GET", path, &[])).await
}

const REFUSED: &str = "edge-1; error=connection_refused";

// ---------------------------------------------------------------------------------------------
// The last good copy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_last_good_copy_answers_byte_for_byte_when_the_origin_stops_listening() {
    let mut origin = Origin::start().await;
    origin.set(
        "/robots.txt",
        Reply::with(
            200,
            &[
                ("content-type", "text/plain"),
                ("cache-control", "max-age=60, stale-if-error=86400"),
                ("etag", "\"r1\""),
                ("x-origin", "one"),
                ("x-origin", "two"),
            ],
            "User-agent: *\nDisallow: /private/\n",
        ),
    );
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    let fresh = get(&gateway, "/robots.txt").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(store.len(), 1);

    origin.stop().await;
    let stale = get(&gateway, "/robots.txt").await;
    stale.assert_stale("User-agent: *\nDisallow: /private/\n", REFUSED, 502);
    // The origin's head, field for field and in order, and only these three added.
    let mut expected = fresh.headers.clone();
    expected.remove(header::CONNECTION);
    let mut sent = stale.headers.clone();
    for added in ["age", "cache-status", "proxy-status"] {
        sent.remove(added);
    }
    assert_eq!(sent, expected);
    let ttl: i64 = stale
        .header("cache-status")
        .unwrap()
        .rsplit('=')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        ttl,
        60 - stale.age() as i64,
        "ttl is what freshness is left"
    );
    let from_copy = stale.from_copy.as_ref().unwrap();
    assert_eq!(from_copy.age(), Duration::from_secs(stale.age()));
    assert_eq!(
        from_copy.error().kind(),
        Some(ProxyErrorKind::ConnectionRefused)
    );

    // A copy stays a copy: the next answer is the same page, a little older.
    let again = get(&gateway, "/robots.txt").await;
    again.assert_stale("User-agent: *\nDisallow: /private/\n", REFUSED, 502);
    assert!(again.age() >= stale.age());
}

#[tokio::test]
async fn on_the_wire_a_stale_answer_is_the_stored_page_with_age_and_both_status_fields() {
    let mut origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=5", "<p>hello</p>"));
    let store = store();
    let server = serve(gateway_to(layer(&store), origin.addr)).await;
    let fresh = support::raw_exchange(server.addr, "GET", "/page", &[]).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(store.len(), 1);
    origin.stop().await;

    let stale = support::raw_exchange(server.addr, "GET", "/page", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, b"<p>hello</p>");
    assert!(!stale.ended_with_error);
    assert_eq!(stale.content_length(), Some(12));
    assert_eq!(stale.header("cache-control"), Some("max-age=5"));
    assert_eq!(
        stale.header("date"),
        fresh.header("date"),
        "the origin's Date"
    );
    assert!(stale.header("age").unwrap().parse::<u64>().unwrap() >= 1);
    let cache_status = stale.header("cache-status").unwrap();
    assert!(
        cache_status.starts_with("edge-1; fwd=stale; fwd-status=502; ttl="),
        "{cache_status}"
    );
    assert_eq!(stale.header("proxy-status"), Some(REFUSED));
    assert_eq!(stale.header("warning"), None);
    // Parsed as Structured Fields, both are lists with our member.
    let parsed = sfv::Parser::new(cache_status)
        .parse::<sfv::List>()
        .expect("an SF list");
    assert_eq!(parsed.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// What is stored
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn what_a_shared_cache_may_not_store_is_never_answered_from() {
    let mut origin = Origin::start().await;
    let window = "max-age=60, stale-if-error=600";
    for (path, cache_control, extra) in [
        ("/no-store", "no-store", None),
        ("/private", "private, max-age=60", None),
        ("/private-field", "private=\"x-user\", max-age=60", None),
        ("/set-cookie", window, Some(("set-cookie", "session=abc"))),
        ("/vary-star", window, Some(("vary", "*"))),
        ("/vary-user-agent", window, Some(("vary", "user-agent"))),
        ("/authorized", window, None),
        ("/asked-no-store", window, None),
    ] {
        let mut fields = vec![("cache-control", cache_control)];
        fields.extend(extra);
        origin.set(path, Reply::with(200, &fields, path));
    }
    for status in [500, 302, 206, 403] {
        origin.set(
            &format!("/status-{status}"),
            Reply::with(status, &[("cache-control", window)], "x"),
        );
    }
    origin.set("/posted", Reply::page(window, "posted"));
    origin.set("/head-only", Reply::page(window, "head"));

    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    for path in [
        "/no-store",
        "/private",
        "/private-field",
        "/set-cookie",
        "/vary-star",
        "/vary-user-agent",
        "/status-500",
        "/status-302",
        "/status-206",
        "/status-403",
    ] {
        get(&gateway, path).await;
    }
    let authorized = [("authorization", "Bearer secret")];
    fetch(gateway.clone(), request("GET", "/authorized", &authorized)).await;
    fetch(
        gateway.clone(),
        request("GET", "/asked-no-store", &[("cache-control", "no-store")]),
    )
    .await;
    fetch(gateway.clone(), request("POST", "/posted", &[])).await;
    fetch(gateway.clone(), request("HEAD", "/head-only", &[])).await;
    assert_eq!(store.len(), 0, "nothing was storable");

    origin.stop().await;
    for path in [
        "/no-store",
        "/private",
        "/private-field",
        "/set-cookie",
        "/vary-star",
        "/vary-user-agent",
        "/status-500",
        "/status-302",
        "/status-206",
        "/status-403",
        "/asked-no-store",
        "/posted",
    ] {
        get(&gateway, path)
            .await
            .assert_generated(StatusCode::BAD_GATEWAY);
    }
    fetch(gateway.clone(), request("GET", "/authorized", &authorized))
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
    fetch(gateway.clone(), request("HEAD", "/head-only", &[]))
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn what_a_shared_cache_may_store_comes_back_with_its_own_status() {
    let mut origin = Origin::start().await;
    let window = "stale-if-error=600";
    origin.set(
        "/moved",
        Reply::with(
            301,
            &[("cache-control", window), ("location", "/new-home")],
            "moved\n",
        ),
    );
    origin.set(
        "/missing",
        Reply::with(404, &[("cache-control", window)], "not here\n"),
    );
    origin.set(
        "/gone",
        Reply::with(410, &[("cache-control", window)], "gone\n"),
    );
    origin.set(
        "/public",
        Reply::with(200, &[("cache-control", "public, max-age=60")], "for all\n"),
    );
    origin.set(
        "/cookie",
        Reply::with(
            200,
            &[("cache-control", window), ("set-cookie", "session=abc")],
            "page\n",
        ),
    );

    // No declared length: the chunks are joined once the last one has passed.
    origin.set(
        "/chunked",
        Reply::Chunked {
            headers: vec![("cache-control".into(), window.into())],
            chunks: vec![b"one ".to_vec(), b"two ".to_vec(), b"three\n".to_vec()],
            gate: None,
        },
    );

    // A store that keeps a page that sets a cookie, without its cookie.
    let store = store().strip_set_cookie(true);
    let gateway = gateway_to(layer(&store), origin.addr);
    let authorized = [("authorization", "Bearer secret")];
    for path in ["/moved", "/missing", "/gone", "/cookie", "/chunked"] {
        get(&gateway, path).await;
    }
    fetch(gateway.clone(), request("GET", "/public", &authorized)).await;
    assert_eq!(store.len(), 6);

    origin.stop().await;
    for (path, status, body) in [
        ("/moved", 301, "moved\n"),
        ("/missing", 404, "not here\n"),
        ("/gone", 410, "gone\n"),
        ("/cookie", 200, "page\n"),
        ("/chunked", 200, "one two three\n"),
    ] {
        let got = get(&gateway, path).await;
        assert_eq!(got.status.as_u16(), status, "{path}");
        assert_eq!(got.body, body);
        assert_eq!(got.header("proxy-status"), Some(REFUSED));
        assert!(
            got.headers.get("set-cookie").is_none(),
            "no cookie is replayed"
        );
    }
    assert_eq!(
        get(&gateway, "/moved").await.header("location"),
        Some("/new-home")
    );
    // `public` let the authorized response be stored, and the copy answers anyone.
    get(&gateway, "/public")
        .await
        .assert_stale("for all\n", REFUSED, 502);
}

// ---------------------------------------------------------------------------------------------
// The windows
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_window_is_the_origins_else_the_operators_and_a_request_can_only_shorten_it() {
    let mut origin = Origin::start().await;
    // Each page arrives 30 s past its 10 s of freshness: `Age: 40`.
    for (path, cache_control) in [
        ("/origin-allows-60", "max-age=10, stale-if-error=60"),
        ("/origin-allows-20", "max-age=10, stale-if-error=20"),
        ("/operator-decides", "max-age=10"),
    ] {
        origin.set(
            path,
            Reply::with(
                200,
                &[("cache-control", cache_control), ("age", "40")],
                path,
            ),
        );
    }
    let generous = Store::new().default_window(Duration::from_secs(3600));
    let strict = Store::new().default_window(Duration::from_secs(20));
    let origin_only = Store::new();
    let gateways = [&generous, &strict, &origin_only].map(|s| gateway_to(layer(s), origin.addr));
    for gateway in &gateways {
        for path in [
            "/origin-allows-60",
            "/origin-allows-20",
            "/operator-decides",
        ] {
            get(gateway, path).await;
        }
    }
    origin.stop().await;
    let [generous_gw, strict_gw, origin_only_gw] = &gateways;

    // The origin's own window wins over the operator's, shorter or longer.
    for gateway in [generous_gw, strict_gw, origin_only_gw] {
        let got = get(gateway, "/origin-allows-60").await;
        got.assert_stale("/origin-allows-60", REFUSED, 502);
        assert!((40..=41).contains(&got.age()), "{}", got.age());
        get(gateway, "/origin-allows-20")
            .await
            .assert_generated(StatusCode::BAD_GATEWAY);
    }
    // Without an origin window, the operator's: an hour, 20 s, or none.
    get(generous_gw, "/operator-decides")
        .await
        .assert_stale("/operator-decides", REFUSED, 502);
    for gateway in [strict_gw, origin_only_gw] {
        get(gateway, "/operator-decides")
            .await
            .assert_generated(StatusCode::BAD_GATEWAY);
    }

    // A request's own stale-if-error shortens the window; it cannot lengthen it.
    let asks = |seconds: &str| {
        request(
            "GET",
            "/origin-allows-60",
            &[("cache-control", &format!("stale-if-error={seconds}"))],
        )
    };
    fetch(generous_gw.clone(), asks("10"))
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
    fetch(generous_gw.clone(), asks("45"))
        .await
        .assert_stale("/origin-allows-60", REFUSED, 502);
    fetch(generous_gw.clone(), asks("100000"))
        .await
        .assert_stale("/origin-allows-60", REFUSED, 502);
    // Its other freshness directives do not change the answer (RFC 5861 §4).
    fetch(
        generous_gw.clone(),
        request(
            "GET",
            "/origin-allows-60",
            &[("cache-control", "max-age=0, min-fresh=5")],
        ),
    )
    .await
    .assert_stale("/origin-allows-60", REFUSED, 502);
}

#[tokio::test]
async fn a_fresh_copy_answers_whatever_window_the_request_asks_for() {
    let mut origin = Origin::start().await;
    origin.set(
        "/fresh",
        Reply::page("max-age=300, stale-if-error=10", "fresh"),
    );
    let store = Store::new();
    let gateway = gateway_to(layer(&store), origin.addr);
    get(&gateway, "/fresh").await;
    origin.stop().await;
    let got = fetch(
        gateway.clone(),
        request("GET", "/fresh", &[("cache-control", "stale-if-error=0")]),
    )
    .await;
    got.assert_stale("fresh", REFUSED, 502);
    let cache_status = got.header("cache-status").unwrap();
    let ttl: i64 = cache_status.rsplit('=').next().unwrap().parse().unwrap();
    assert!(ttl > 0, "still fresh: {cache_status}");
}

#[tokio::test]
async fn a_response_that_forbids_serving_stale_is_never_answered_from() {
    let mut origin = Origin::start().await;
    let paths = [
        ("/no-cache", "no-cache, stale-if-error=600"),
        ("/no-cache-field", "no-cache=\"x-a\", stale-if-error=600"),
        ("/must-revalidate", "max-age=60, must-revalidate"),
        ("/proxy-revalidate", "max-age=60, proxy-revalidate"),
        ("/s-maxage", "s-maxage=60, stale-if-error=600"),
    ];
    for (path, cache_control) in paths {
        origin.set(path, Reply::page(cache_control, path));
    }
    // The operator's window is an hour: it does not override a prohibition.
    let store = Store::new().default_window(Duration::from_secs(3600));
    let gateway = gateway_to(layer(&store), origin.addr);
    for (path, _) in paths {
        assert_eq!(get(&gateway, path).await.status, StatusCode::OK);
    }
    assert_eq!(store.len(), 0);
    origin.stop().await;
    for (path, _) in paths {
        get(&gateway, path)
            .await
            .assert_generated(StatusCode::BAD_GATEWAY);
    }
}

#[tokio::test]
async fn a_request_that_asks_for_validation_gets_the_error_and_its_no_store_stores_nothing() {
    let mut origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "v1"));
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    get(&gateway, "/page").await;
    // A request that says no-store keeps its response out, and leaves the stored one alone.
    origin.set("/page", Reply::page("max-age=60", "v2"));
    let no_store = [("cache-control", "no-store")];
    let got = fetch(gateway.clone(), request("GET", "/page", &no_store)).await;
    assert_eq!(got.body, "v2");
    origin.stop().await;

    // A hard reload asks for what the origin confirms: it gets the error.
    let reload = [("cache-control", "no-cache")];
    fetch(gateway.clone(), request("GET", "/page", &reload))
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
    // no-store on a request does not stop a stored copy from answering it.
    fetch(gateway.clone(), request("GET", "/page", &no_store))
        .await
        .assert_stale("v1", REFUSED, 502);
}

// ---------------------------------------------------------------------------------------------
// Variants, sites, HEAD
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_variant_answers_the_requests_it_was_chosen_for() {
    let mut origin = Origin::start().await;
    origin.route("/styles.css", |seen| {
        let encoding = seen
            .header("accept-encoding")
            .unwrap_or("identity")
            .to_owned();
        Reply::Full {
            status: 200,
            headers: vec![
                ("cache-control".into(), "max-age=60".into()),
                ("vary".into(), "Accept-Encoding".into()),
            ],
            body: format!("css in {encoding}").into_bytes(),
        }
    });
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    let gzip = [("accept-encoding", "gzip")];
    fetch(gateway.clone(), request("GET", "/styles.css", &gzip)).await;
    get(&gateway, "/styles.css").await;
    assert_eq!(store.len(), 2);
    origin.stop().await;

    fetch(gateway.clone(), request("GET", "/styles.css", &gzip))
        .await
        .assert_stale("css in gzip", REFUSED, 502);
    get(&gateway, "/styles.css")
        .await
        .assert_stale("css in identity", REFUSED, 502);
    // A header the response does not vary on does not matter; one it varies on does.
    fetch(
        gateway.clone(),
        request(
            "GET",
            "/styles.css",
            &[("accept-encoding", "gzip"), ("accept", "text/css")],
        ),
    )
    .await
    .assert_stale("css in gzip", REFUSED, 502);
    fetch(
        gateway.clone(),
        request("GET", "/styles.css", &[("accept-encoding", "br")]),
    )
    .await
    .assert_generated(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn two_sites_behind_one_gateway_never_share_a_copy() {
    let mut origin = Origin::start().await;
    origin.route("/", |seen| {
        let host = seen.header("host").unwrap_or_default().to_owned();
        Reply::page("max-age=60", &format!("home of {host}"))
    });
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    let on = |host: &'static str| {
        let mut request = request("GET", "/", &[]);
        request
            .headers_mut()
            .insert(header::HOST, host.parse().unwrap());
        request
    };
    assert_eq!(
        fetch(gateway.clone(), on("a.example")).await.body,
        "home of a.example"
    );
    assert_eq!(
        fetch(gateway.clone(), on("b.example")).await.body,
        "home of b.example"
    );
    origin.stop().await;
    fetch(gateway.clone(), on("a.example"))
        .await
        .assert_stale("home of a.example", REFUSED, 502);
    // Hosts are compared without case, as DNS names are.
    fetch(gateway.clone(), on("B.Example"))
        .await
        .assert_stale("home of b.example", REFUSED, 502);
    fetch(gateway.clone(), on("c.example"))
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn head_gets_the_stored_head_and_no_body() {
    let mut origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "0123456789"));
    let store = store();
    let server = serve(gateway_to(layer(&store), origin.addr)).await;
    let fresh = support::raw_exchange(server.addr, "GET", "/page", &[]).await;
    assert_eq!(fresh.body, b"0123456789");
    origin.stop().await;

    let head = support::raw_exchange(server.addr, "HEAD", "/page", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.content_length(),
        Some(10),
        "the length a GET would have"
    );
    assert!(head.body.is_empty(), "{:?}", head.body);
    assert!(head.header("age").is_some());
    assert!(head.header("cache-status").unwrap().contains("fwd=stale"));
    assert_eq!(head.header("proxy-status"), Some(REFUSED));
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_cut_mid_stream_is_never_stored_and_the_good_copy_stays() {
    let mut origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "the good one"));
    origin.set(
        "/only-cut",
        Reply::Cut {
            headers: vec![("cache-control".into(), "max-age=60".into())],
            declared: 1000,
            sent: 400,
        },
    );
    // Chunked: nothing declares a length, only the missing last chunk tells the cut.
    origin.set("/cut-chunked", Reply::CutChunked { sent: 400 });
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    get(&gateway, "/page").await;
    origin.set(
        "/page",
        Reply::Cut {
            headers: vec![("cache-control".into(), "max-age=60".into())],
            declared: 1000,
            sent: 400,
        },
    );
    for path in ["/page", "/only-cut", "/cut-chunked"] {
        let response = call(gateway.clone(), request("GET", path, &[])).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = within("the cut body", response.into_body().collect()).await;
        assert!(body.is_err(), "{path}: a cut body ends with an error");
    }
    assert_eq!(store.len(), 1, "only the good copy");
    origin.stop().await;
    get(&gateway, "/page")
        .await
        .assert_stale("the good one", REFUSED, 502);
    for path in ["/only-cut", "/cut-chunked"] {
        get(&gateway, path)
            .await
            .assert_generated(StatusCode::BAD_GATEWAY);
    }
}

#[tokio::test]
async fn a_body_that_stalls_past_the_read_timeout_is_never_stored() {
    let mut origin = Origin::start().await;
    origin.set(
        "/stalls",
        Reply::StallBody {
            declared: 100,
            sent: 10,
        },
    );
    let store = store();
    let layer =
        layer(&store).time_limits(TimeLimits::new().read_timeout(Duration::from_millis(200)));
    let gateway = gateway_to(layer, origin.addr);
    let response = call(gateway.clone(), request("GET", "/stalls", &[])).await;
    let body = within("the stalled body", response.into_body().collect()).await;
    let error = body.expect_err("the read timeout cuts it");
    let error = error.downcast_ref::<ProxyError>().expect("a ProxyError");
    assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionReadTimeout));
    assert_eq!(store.len(), 0);
    origin.stop().await;
    get(&gateway, "/stalls")
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_body_over_the_limit_streams_through_without_waiting_and_is_not_stored() {
    let mut origin = Origin::start().await;
    let first = vec![b'a'; 32 * 1024];
    let rest: Vec<Vec<u8>> = (0..50).map(|i| vec![b'0' + (i % 10) as u8; 4096]).collect();
    let gate = Arc::new(Notify::new());
    let mut chunks = vec![first.clone()];
    chunks.extend(rest.iter().cloned());
    let expected: Vec<u8> = chunks.concat();
    origin.set(
        "/large",
        Reply::Chunked {
            headers: vec![("cache-control".into(), "max-age=60".into())],
            chunks,
            gate: Some(gate.clone()),
        },
    );
    origin.set(
        "/declared-large",
        Reply::with(
            200,
            &[("cache-control", "max-age=60")],
            &"d".repeat(100 * 1024),
        ),
    );
    let store = store().max_response_bytes(64 * 1024);
    let gateway = gateway_to(layer(&store), origin.addr);

    let response = call(gateway.clone(), request("GET", "/large", &[])).await;
    let mut body = std::pin::pin!(response.into_body());
    let mut received = Vec::new();
    // The first 32 KiB reach the client while the origin still holds back the rest: nothing
    // waits for the copy.
    while received.len() < first.len() {
        let frame = within(
            "the first chunk, before the origin sends more",
            body.frame(),
        )
        .await
        .expect("a frame")
        .expect("no error");
        received.extend_from_slice(frame.data_ref().expect("data"));
    }
    gate.notify_one();
    while let Some(frame) = within("the rest", body.frame()).await {
        received.extend_from_slice(frame.expect("no error").data_ref().expect("data"));
    }
    assert_eq!(received, expected, "every byte, in order");

    let declared = get(&gateway, "/declared-large").await;
    assert_eq!(declared.body.len(), 100 * 1024);
    assert_eq!(store.len(), 0, "neither was stored");
    origin.stop().await;
    for path in ["/large", "/declared-large"] {
        get(&gateway, path)
            .await
            .assert_generated(StatusCode::BAD_GATEWAY);
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds and sharing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_byte_budget_evicts_the_least_recently_used_copy() {
    let mut origin = Origin::start().await;
    let page = "p".repeat(10_000);
    for path in ["/a", "/b", "/c", "/d"] {
        origin.set(path, Reply::page("max-age=60", &page));
    }
    // Room for three of these pages (10 KB of body each, and their heads), not four.
    let store = store().max_bytes(35_000);
    let gateway = gateway_to(layer(&store), origin.addr);
    for path in ["/a", "/b", "/c"] {
        get(&gateway, path).await;
    }
    assert_eq!(store.len(), 3);
    // /a is fetched again: /b is now the least recently used.
    get(&gateway, "/a").await;
    get(&gateway, "/d").await;
    assert_eq!(store.len(), 3);
    assert!(store.bytes() <= 35_000, "{}", store.bytes());
    origin.stop().await;
    for path in ["/a", "/c", "/d"] {
        get(&gateway, path).await.assert_stale(&page, REFUSED, 502);
    }
    get(&gateway, "/b")
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn many_clients_read_one_copy_at_once() {
    let mut origin = Origin::start().await;
    let page = "shared page ".repeat(1000);
    origin.set("/popular", Reply::page("max-age=60", &page));
    let store = store();
    let server = serve(gateway_to(layer(&store), origin.addr)).await;
    assert_eq!(
        support::raw_exchange(server.addr, "GET", "/popular", &[])
            .await
            .body,
        page.as_bytes()
    );
    origin.stop().await;

    let readers: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(
                async move { support::raw_exchange(server.addr, "GET", "/popular", &[]).await },
            )
        })
        .collect();
    for reader in readers {
        let got = within("a reader", reader).await.expect("the reader ran");
        assert_eq!(got.status, 200);
        assert_eq!(got.body, page.as_bytes());
        assert_eq!(got.header("proxy-status"), Some(REFUSED));
    }
    assert_eq!(store.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Which failures a copy hides
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_timeout_is_hidden_too() {
    let origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=1", "patient"));
    let store = store();
    let layer =
        layer(&store).time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300)));
    let gateway = gateway_to(layer, origin.addr);
    get(&gateway, "/page").await;
    origin.set("/page", Reply::Silent);
    let got = get(&gateway, "/page").await;
    got.assert_stale("patient", "edge-1; error=http_response_timeout", 504);
    assert_eq!(
        got.from_copy.unwrap().error().kind(),
        Some(ProxyErrorKind::HttpResponseTimeout)
    );
}

#[tokio::test]
async fn origin_errors_pass_through_unless_the_store_answers_them() {
    let origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "good"));
    let passing = store();
    let answering = store().failure_statuses([StatusCode::SERVICE_UNAVAILABLE]);
    let passes = gateway_to(layer(&passing), origin.addr);
    let answers = gateway_to(layer(&answering), origin.addr);
    get(&passes, "/page").await;
    get(&answers, "/page").await;
    origin.set(
        "/page",
        Reply::with(
            503,
            &[("content-type", "text/plain"), ("retry-after", "7")],
            "origin maintenance\n",
        ),
    );
    // Untouched: status, headers and body.
    let passed = get(&passes, "/page").await;
    assert_eq!(passed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(passed.body, "origin maintenance\n");
    assert_eq!(passed.header("retry-after"), Some("7"));
    assert!(passed.from_copy.is_none());
    // Opted in: the copy, naming the status it hides.
    let answered = get(&answers, "/page").await;
    answered.assert_stale("good", "edge-1; received-status=503", 503);
    // A status not opted in still passes.
    origin.set("/page", Reply::with(500, &[], "boom\n"));
    assert_eq!(get(&answers, "/page").await.body, "boom\n");
}

#[tokio::test]
async fn an_intercepted_origin_error_is_answered_from_the_copy() {
    let origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "good"));
    let store = store();
    let layer = layer(&store).failure_statuses([StatusCode::BAD_GATEWAY]);
    let gateway = gateway_to(layer, origin.addr);
    get(&gateway, "/page").await;
    origin.set("/page", Reply::with(502, &[], "upstream proxy failed\n"));
    get(&gateway, "/page")
        .await
        .assert_stale("good", "edge-1; received-status=502", 502);
}

/// A breaker next to the client, as a health layer is: while `open`, it refuses at once with
/// `destination_unavailable` and a retry delay, without touching the origin.
#[derive(Clone)]
struct Breaker<S> {
    inner: S,
    open: Arc<AtomicBool>,
}

impl<S> Service<Request<support::Upload>> for Breaker<S>
where
    S: Service<Request<support::Upload>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<support::Upload>) -> Self::Future {
        if self.open.load(Ordering::SeqCst) {
            let refused = ProxyError::new(ProxyErrorKind::DestinationUnavailable)
                .with_retry_after(Duration::from_secs(30));
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let future = self.inner.call(request);
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

#[tokio::test]
async fn an_open_breaker_is_answered_from_the_copy_without_asking_the_origin() {
    let origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "good"));
    let store = store();
    let open = Arc::new(AtomicBool::new(false));
    let authority = origin.addr.to_string();
    let gateway = ServiceBuilder::new()
        .layer(layer(&store))
        .map_request(move |request| support::to_upstream(&authority, request))
        .service(Breaker {
            inner: support::upstream_client(),
            open: open.clone(),
        });
    get(&gateway, "/page").await;
    let hits = origin.hits();
    open.store(true, Ordering::SeqCst);
    let got = get(&gateway, "/page").await;
    got.assert_stale("good", "edge-1; error=destination_unavailable", 503);
    assert_eq!(origin.hits(), hits, "the origin was not asked");
    assert!(
        got.headers.get("retry-after").is_none(),
        "the answer is no error"
    );
}

#[tokio::test]
async fn a_request_error_the_layer_makes_is_never_hidden() {
    let origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "good"));
    let store = store();
    let denied = Arc::new(AtomicBool::new(false));
    let authority = origin.addr.to_string();
    let gateway = ServiceBuilder::new()
        .layer(layer(&store))
        .map_request(move |request| support::to_upstream(&authority, request))
        .service(tower::service_fn({
            let denied = denied.clone();
            let client = support::upstream_client();
            move |request: Request<support::Upload>| {
                let denied = denied.load(Ordering::SeqCst);
                let client = client.clone();
                async move {
                    if denied {
                        let error = ProxyError::new(ProxyErrorKind::HttpRequestDenied);
                        let error: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
                        return Err(error);
                    }
                    let response: Response<hyper::body::Incoming> = client.oneshot(request).await?;
                    Ok(response)
                }
            }
        }));
    get(&gateway, "/page").await;
    denied.store(true, Ordering::SeqCst);
    // A policy that refuses the request is not bypassed by a copy.
    get(&gateway, "/page")
        .await
        .assert_generated(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_successful_write_drops_the_copies_of_its_uri_and_a_failed_one_does_not() {
    let mut origin = Origin::start().await;
    origin.set("/kept", Reply::page("max-age=60", "kept"));
    origin.route("/dropped", |seen| {
        if seen.method == "PUT" {
            Reply::with(204, &[], "")
        } else {
            Reply::page("max-age=60", "old")
        }
    });
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    get(&gateway, "/kept").await;
    get(&gateway, "/dropped").await;
    assert_eq!(store.len(), 2);
    let put = fetch(gateway.clone(), request("PUT", "/dropped", &[])).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    assert_eq!(store.len(), 1);
    origin.set("/kept", Reply::with(500, &[], "failed"));
    fetch(gateway.clone(), request("POST", "/kept", &[])).await;
    assert_eq!(store.len(), 1, "a failed write changes nothing");

    origin.stop().await;
    get(&gateway, "/dropped")
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
    get(&gateway, "/kept")
        .await
        .assert_stale("kept", REFUSED, 502);
    // A write is never answered from a copy.
    fetch(gateway.clone(), request("POST", "/kept", &[]))
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn every_clone_of_the_layer_shares_one_store() {
    let mut origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=60", "shared"));
    let store = store();
    let layer = layer(&store);
    let first = gateway_to(layer.clone(), origin.addr);
    let second = gateway_to(layer, origin.addr);
    get(&first, "/page").await;
    origin.stop().await;
    get(&second, "/page")
        .await
        .assert_stale("shared", REFUSED, 502);
    store.clear();
    get(&second, "/page")
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn the_demo_upstreams_robots_txt_survives_its_outage_as_the_readme_shows() {
    let demo = support::start_upstream().await;
    let addr = demo.addr;
    // The example gateway's `--stale 1h`.
    let store = Store::new().default_window(Duration::from_secs(3600));
    let gateway = gateway_to(layer(&store), addr);
    let fresh = get(&gateway, "/robots.txt").await;
    assert_eq!(fresh.body, support::demo_upstream::ROBOTS_TXT);
    assert_eq!(fresh.header("cache-control"), Some("max-age=60"));

    // The reader stops the upstream: wait until connecting is refused.
    drop(demo);
    within("the demo upstream to stop listening", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let stale = get(&gateway, "/robots.txt").await;
    stale.assert_stale(support::demo_upstream::ROBOTS_TXT, REFUSED, 502);
    assert_eq!(stale.header("last-modified"), fresh.header("last-modified"));
    // A page never fetched has no copy: the usual 502, never a 404.
    get(&gateway, "/private/page")
        .await
        .assert_generated(StatusCode::BAD_GATEWAY);
}

// ---------------------------------------------------------------------------------------------
// One client cannot move the store, and what it cannot read it does not store
// ---------------------------------------------------------------------------------------------

/// Reads `body` to its end, bounded; the data of its frames.
async fn drain<B>(body: Pin<&mut B>) -> Vec<u8>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = body;
    let mut received = Vec::new();
    while let Some(frame) = within("the rest of the body", body.as_mut().frame()).await {
        if let Some(data) = frame.expect("no error").data_ref() {
            received.extend_from_slice(data);
        }
    }
    received
}

/// A route that answers its first GET with a chunked page whose second chunk waits for `gate`,
/// and every later GET with `later`.
fn slow_first(
    gate: &Arc<Notify>,
    slow: [&'static str; 2],
    later: &'static str,
) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    let gate = gate.clone();
    let gets = AtomicUsize::new(0);
    move |_| {
        if gets.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Chunked {
                headers: vec![("cache-control".into(), "max-age=60".into())],
                chunks: slow.iter().map(|chunk| chunk.as_bytes().to_vec()).collect(),
                gate: Some(gate.clone()),
            }
        } else {
            Reply::page("max-age=60", later)
        }
    }
}

#[tokio::test]
async fn a_slower_older_response_that_ends_last_never_replaces_the_newer_copy() {
    let mut origin = Origin::start().await;
    let gate = Arc::new(Notify::new());
    origin.route("/page", slow_first(&gate, ["old, ", "slow"], "new"));
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);

    // The first request's head and first chunk arrive; the rest of its body waits.
    let slow = call(gateway.clone(), request("GET", "/page", &[])).await;
    let mut slow = std::pin::pin!(slow.into_body());
    let first = within("the first chunk", slow.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.data_ref().expect("data"), "old, ");
    // A request sent after it is answered whole, and stored.
    assert_eq!(get(&gateway, "/page").await.body, "new");
    assert_eq!(store.len(), 1);
    // The older response ends last: its client gets all of it, and the store keeps the newer.
    gate.notify_one();
    assert_eq!(drain(slow.as_mut()).await, b"slow");
    assert_eq!(store.len(), 1);

    origin.stop().await;
    get(&gateway, "/page")
        .await
        .assert_stale("new", REFUSED, 502);
}

#[tokio::test]
async fn a_read_that_began_before_a_write_does_not_put_its_outdated_copy_back() {
    let mut origin = Origin::start().await;
    let gate = Arc::new(Notify::new());
    let read = slow_first(&gate, ["v1, ", "before the write"], "v2");
    origin.route("/doc", move |seen| {
        if seen.method == "PUT" {
            Reply::with(204, &[], "")
        } else {
            read(seen)
        }
    });
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);

    let slow = call(gateway.clone(), request("GET", "/doc", &[])).await;
    let mut slow = std::pin::pin!(slow.into_body());
    within("the first chunk", slow.frame())
        .await
        .expect("a frame")
        .expect("no error");
    // A write succeeds while that read's body is still on its way.
    let put = fetch(gateway.clone(), request("PUT", "/doc", &[])).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    gate.notify_one();
    assert_eq!(drain(slow.as_mut()).await, b"before the write");
    assert_eq!(
        store.len(),
        0,
        "the page as it was before the write is not kept"
    );

    // A read that begins after the write is stored as usual.
    assert_eq!(get(&gateway, "/doc").await.body, "v2");
    assert_eq!(store.len(), 1);
    origin.stop().await;
    get(&gateway, "/doc").await.assert_stale("v2", REFUSED, 502);
}

#[tokio::test]
async fn copies_being_made_count_against_the_byte_budget_and_are_given_back() {
    const STREAMS: usize = 40;
    const DECLARED: usize = 64 * 1024;
    const BUDGET: usize = 512 * 1024;
    let origin = Origin::start().await;
    for i in 0..STREAMS {
        // A head declaring 64 KiB, 1 KiB of it, then nothing: a response held open.
        origin.set(
            &format!("/held-{i}"),
            Reply::StallBody {
                declared: DECLARED,
                sent: 1024,
            },
        );
    }
    origin.set("/after", Reply::page("max-age=60", "after"));
    let store = store().max_bytes(BUDGET);
    let gateway = gateway_to(layer(&store), origin.addr);

    // One client holds forty responses open, each read up to its first bytes.
    let mut held = Vec::new();
    for i in 0..STREAMS {
        let response = call(gateway.clone(), request("GET", &format!("/held-{i}"), &[])).await;
        let mut body = Box::pin(response.into_body());
        within("the first bytes", body.frame())
            .await
            .expect("a frame")
            .expect("no error");
        held.push(body);
    }
    // Forty copies of 64 KiB would be 2.5 MiB: the store counts those it makes, and makes no
    // more than its budget allows.
    let counted = store.bytes();
    assert!(
        counted >= DECLARED,
        "copies being made are counted: {counted}"
    );
    assert!(
        counted <= BUDGET,
        "{counted} bytes against a budget of {BUDGET}"
    );

    // The client goes away: what the copies held is given back, and copies are made again.
    drop(held);
    assert_eq!(store.bytes(), 0);
    assert_eq!(get(&gateway, "/after").await.body, "after");
    assert_eq!(store.len(), 1);
    assert!(store.bytes() <= BUDGET);
}

#[tokio::test]
async fn a_cache_control_the_store_cannot_read_is_not_stored_when_it_names_a_restriction() {
    let mut origin = Origin::start().await;
    let restricted = [
        ("/semicolon-private", "max-age=60; private"),
        ("/space-no-store", "max-age=60 no-store"),
        ("/unclosed-no-cache", "max-age=\"60, no-cache"),
    ];
    for (path, cache_control) in restricted {
        origin.set(path, Reply::page(cache_control, path));
    }
    // Malformed too, but it restricts nothing: stored, its bad element skipped.
    origin.set(
        "/semicolon-other",
        Reply::page("max-age=60; charset", "other"),
    );
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    for (path, _) in restricted {
        assert_eq!(get(&gateway, path).await.body, path);
    }
    get(&gateway, "/semicolon-other").await;
    assert_eq!(store.len(), 1);

    origin.stop().await;
    for (path, _) in restricted {
        get(&gateway, path)
            .await
            .assert_generated(StatusCode::BAD_GATEWAY);
    }
    get(&gateway, "/semicolon-other")
        .await
        .assert_stale("other", REFUSED, 502);
}

#[tokio::test]
async fn an_origin_error_is_answered_from_a_copy_whose_origin_sent_stale_if_error() {
    let origin = Origin::start().await;
    origin.set(
        "/asked",
        Reply::page("max-age=60, stale-if-error=600", "asked"),
    );
    origin.set("/operators", Reply::page("max-age=60", "operator's"));
    // The operator's window, and no origin status named.
    let store = store();
    let gateway = gateway_to(layer(&store), origin.addr);
    get(&gateway, "/asked").await;
    get(&gateway, "/operators").await;
    assert_eq!(store.len(), 2);

    let failing = |status: u16| {
        Reply::with(
            status,
            &[("content-type", "text/plain"), ("retry-after", "7")],
            "origin maintenance\n",
        )
    };
    for status in [500, 502, 503, 504] {
        origin.set("/asked", failing(status));
        origin.set("/operators", failing(status));
        // The origin asked for its copy in place of its errors (RFC 5861 §4).
        get(&gateway, "/asked").await.assert_stale(
            "asked",
            &format!("edge-1; received-status={status}"),
            status,
        );
        // A copy kept under the operator's window only: the origin's error passes untouched.
        let passed = get(&gateway, "/operators").await;
        assert_eq!(passed.status.as_u16(), status);
        assert_eq!(passed.body, "origin maintenance\n");
        assert_eq!(passed.header("retry-after"), Some("7"));
        assert!(passed.from_copy.is_none());
    }
    // Not an error RFC 5861 names: it passes.
    origin.set("/asked", failing(501));
    let passed = get(&gateway, "/asked").await;
    assert_eq!(passed.status, StatusCode::NOT_IMPLEMENTED);
    assert!(passed.from_copy.is_none());
}

#[tokio::test]
async fn the_longest_window_an_operator_can_give_is_accepted() {
    let mut origin = Origin::start().await;
    origin.set("/page", Reply::page("max-age=5", "forever"));
    origin.set(
        "/origin-long",
        Reply::page("max-age=5, stale-if-error=99999999999999999999999", "long"),
    );
    let store = Store::new().default_window(Duration::MAX);
    let gateway = gateway_to(layer(&store), origin.addr);
    get(&gateway, "/page").await;
    get(&gateway, "/origin-long").await;
    assert_eq!(store.len(), 2);
    origin.stop().await;
    get(&gateway, "/page")
        .await
        .assert_stale("forever", REFUSED, 502);
    get(&gateway, "/origin-long")
        .await
        .assert_stale("long", REFUSED, 502);
}
