//! No leaks: an upstream error that names internals (a host, an address, a URL with a token, an
//! operating-system error) reaches the operator's span event and never the client: not in any
//! body format, not for HEAD, not in any header, not after a body fails mid-stream. With
//! `proxy_status_details(true)` the chain goes out in `Proxy-Status` only, as a bounded,
//! sanitized Structured Field string.

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::body::GatewayBody;
use gateway_errors::headers::PROXY_STATUS;
use gateway_errors::{GatewayErrorLayer, ProxyError};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::Full;
use tower::{ServiceBuilder, service_fn};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

use crate::support::{call, demo_upstream, gateway_to, layer, raw_exchange, read_body, serve};

// ---------------------------------------------------------------------------------------------
// Sentinels

/// An internal host name.
const HOST: &str = "db-primary.internal.corp";
/// An internal address (loopback range: the only kind of literal this repository holds).
const ADDRESS: &str = "127.66.77.88";
/// A URL with a credential in it.
const URL: &str = "http://internal.example/?token=SECRET123";
/// What the operating system says about a refused connection (errno 111 on Linux).
const OS_TEXT: &str = "Connection refused (os error 111)";

/// Pieces of the sentinels: none may show up anywhere a client can see.
const SECRETS: [&str; 8] = [
    HOST,
    "internal.corp",
    ADDRESS,
    "internal.example",
    "SECRET123",
    "token=",
    "os error",
    "Connection refused",
];

/// The top of the chain: names the host and the address.
#[derive(Debug)]
struct PoolCheckout {
    source: FetchFailed,
}

impl fmt::Display for PoolCheckout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checkout from {HOST} ({ADDRESS}:5432) failed")
    }
}

impl Error for PoolCheckout {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// The middle: names the URL with its token.
#[derive(Debug)]
struct FetchFailed {
    source: io::Error,
}

impl fmt::Display for FetchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GET {URL}")
    }
}

impl Error for FetchFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}

/// A chain ending in an OS error the default classifier recognises (a refused connection).
fn recognised_chain() -> PoolCheckout {
    let os = io::Error::from_raw_os_error(111);
    assert_eq!(os.to_string(), OS_TEXT, "the sentinel is what Linux says");
    PoolCheckout {
        source: FetchFailed { source: os },
    }
}

/// A chain no classifier recognises, with the OS text as a plain message.
fn unrecognised_chain() -> PoolCheckout {
    PoolCheckout {
        source: FetchFailed {
            source: io::Error::other(OS_TEXT),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// A tracing layer that keeps every event

#[derive(Debug, Clone)]
struct CapturedEvent {
    level: Level,
    /// Every field as `name=value; `.
    fields: String,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<CapturedEvent>>>);

impl Capture {
    fn events(&self) -> Vec<CapturedEvent> {
        self.0.lock().expect("not poisoned").clone()
    }

    /// The WARN events, as one text.
    fn warnings(&self) -> String {
        self.events()
            .iter()
            .filter(|e| e.level == Level::WARN)
            .map(|e| e.fields.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct FieldText(String);

impl Visit for FieldText {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!("{}={value}; ", field.name()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!("{}={value:?}; ", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut text = FieldText(String::new());
        event.record(&mut text);
        self.0.lock().expect("not poisoned").push(CapturedEvent {
            level: *event.metadata().level(),
            fields: text.0,
        });
    }
}

/// Installs a capturing subscriber for this thread (the tests run on tokio's current-thread
/// runtime, so every poll happens here).
fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    // Callsites first met on another thread while no subscriber was set may have cached
    // "never": ask again now that this one is.
    tracing::callsite::rebuild_interest_cache();
    (capture, guard)
}

// ---------------------------------------------------------------------------------------------
// What the client sees

/// Everything a client can read of a response: each header as `name: value`, and the body.
struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    places: Vec<(String, String)>,
}

async fn seen<B>(response: Response<B>) -> Seen
where
    B: http_body::Body,
    B::Error: fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let body = read_body(body).await;
    let mut places = vec![(
        "body".to_owned(),
        String::from_utf8_lossy(&body).into_owned(),
    )];
    for (name, value) in &parts.headers {
        places.push((
            format!("header {name}"),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    Seen {
        status: parts.status,
        headers: parts.headers,
        places,
    }
}

fn assert_reveals_none(what: &str, seen: &Seen, secrets: &[&str]) {
    for (place, text) in &seen.places {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{what}: {place} reveals {secret:?}: {text}"
            );
        }
    }
}

/// The requests a client can make: each body format, and HEAD.
fn client_requests() -> Vec<(&'static str, Request<Body>)> {
    let with_accept = |method: &str, accept: Option<&str>| {
        let mut builder = Request::builder().method(method).uri("/orders/7");
        if let Some(accept) = accept {
            builder = builder.header(http::header::ACCEPT, accept);
        }
        builder.body(Body::empty()).expect("a valid request")
    };
    vec![
        ("no Accept", with_accept("GET", None)),
        ("json", with_accept("GET", Some("application/json"))),
        (
            "problem+json",
            with_accept("GET", Some("application/problem+json")),
        ),
        ("html", with_accept("GET", Some("text/html"))),
        ("text", with_accept("GET", Some("text/plain"))),
        ("anything", with_accept("GET", Some("*/*"))),
        ("HEAD", with_accept("HEAD", Some("text/html"))),
        ("POST", with_accept("POST", Some("application/json"))),
    ]
}

/// A gateway whose inner service fails with `make_error()`.
fn failing_gateway<E, F>(
    layer: GatewayErrorLayer,
    make_error: F,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<GatewayBody<Full<Bytes>>>,
    Error = Infallible,
> + Clone
where
    E: Error + Send + Sync + 'static,
    F: Fn() -> E + Clone + Send + 'static,
{
    let failing = service_fn(move |_request: Request<crate::support::Upload>| {
        let error = make_error();
        async move { Err::<Response<Full<Bytes>>, _>(error) }
    });
    ServiceBuilder::new().layer(layer).service(failing)
}

/// Sends every kind of client request through `gateway`, checks that no secret reaches the
/// client and that the WARN event names every sentinel; returns what each client saw.
async fn assert_secrets_stay_in_the_span<S>(gateway: S, expected_status: StatusCode) -> Vec<Seen>
where
    S: tower::Service<
            Request<Body>,
            Error = Infallible,
            Response = Response<GatewayBody<Full<Bytes>>>,
        > + Clone,
{
    let mut all = Vec::new();
    for (what, request) in client_requests() {
        let (capture, _guard) = capture();
        let seen = seen(call(gateway.clone(), request).await).await;
        assert_eq!(seen.status, expected_status, "{what}");
        assert_reveals_none(what, &seen, &SECRETS);

        let warnings = capture.warnings();
        for sentinel in [HOST, ADDRESS, URL, OS_TEXT] {
            assert!(
                warnings.contains(sentinel),
                "{what}: the operator's WARN event must name {sentinel:?}: {warnings}"
            );
        }
        all.push(seen);
    }
    all
}

#[tokio::test]
async fn a_recognised_error_chain_reaches_the_span_and_never_the_client() {
    let gateway = failing_gateway(layer(), recognised_chain);
    let seen = assert_secrets_stay_in_the_span(gateway, StatusCode::BAD_GATEWAY).await;
    for seen in seen {
        assert_eq!(
            seen.headers[&PROXY_STATUS], "edge-1; error=connection_refused",
            "no details by default"
        );
    }
}

#[tokio::test]
async fn an_unrecognised_error_chain_reaches_the_span_and_never_the_client() {
    let gateway = failing_gateway(layer(), unrecognised_chain);
    let seen = assert_secrets_stay_in_the_span(gateway, StatusCode::BAD_GATEWAY).await;
    for seen in seen {
        assert_eq!(seen.headers[&PROXY_STATUS], "edge-1");
    }
}

#[tokio::test]
async fn a_handlers_proxy_error_with_a_secret_source_reaches_only_the_span() {
    // An axum handler that proxies by hand returns the error as a marked response.
    let handler = service_fn(|_request: Request<crate::support::Upload>| async {
        let error = ProxyError::from_error(recognised_chain());
        Ok::<Response<Full<Bytes>>, Infallible>(error.into())
    });
    let gateway = ServiceBuilder::new().layer(layer()).service(handler);
    assert_secrets_stay_in_the_span(gateway, StatusCode::BAD_GATEWAY).await;
}

#[tokio::test]
async fn a_real_connect_error_names_the_address_only_in_the_span() {
    let upstream = demo_upstream::closed_port();
    let port = upstream.port();
    let gateway = gateway_to(layer(), upstream);
    let secrets = [
        "127.0.0.1",
        &format!(":{port}"),
        "tcp connect",
        "os error",
        "Connection refused",
        "client error",
    ];

    for (what, request) in client_requests() {
        let (capture, _guard) = capture();
        let seen = seen(call(gateway.clone(), request).await).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{what}");
        assert_reveals_none(what, &seen, &secrets);

        let warnings = capture.warnings();
        assert!(
            warnings.contains("tcp connect error") && warnings.contains("Connection refused"),
            "{what}: the WARN event carries hyper-util's error chain: {warnings}"
        );
    }
}

/// An origin body that sends a little, waits (so the server flushes the head and that part),
/// then fails with the sentinel chain.
struct FailingBody {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for FailingBody {
    type Data = Bytes;
    type Error = PoolCheckout;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PoolCheckout>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial-")))));
        }
        std::task::ready!(self.pause.as_mut().poll(cx));
        Poll::Ready(Some(Err(recognised_chain())))
    }
}

#[tokio::test]
async fn a_body_failing_mid_stream_breaks_the_connection_without_a_word() {
    let (capture, _guard) = capture();
    let origin = service_fn(|_request: Request<crate::support::Upload>| async {
        let pause = Box::pin(tokio::time::sleep(Duration::from_millis(20)));
        Ok::<_, Infallible>(Response::new(FailingBody { sent: false, pause }))
    });
    let server = serve(ServiceBuilder::new().layer(layer()).service(origin)).await;

    let response = raw_exchange(server.addr, "GET", "/stream", &[]).await;

    assert_eq!(response.status, 200, "the head was the origin's");
    let wire = format!(
        "{:?}\n{}",
        response.headers,
        String::from_utf8_lossy(&response.body)
    );
    assert!(wire.contains("partial-"), "{wire}");
    for secret in SECRETS {
        assert!(
            !wire.contains(secret),
            "the wire reveals {secret:?}: {wire}"
        );
    }
    let warnings = capture.warnings();
    for sentinel in [HOST, ADDRESS, URL, OS_TEXT] {
        assert!(
            warnings.contains(sentinel),
            "the WARN event for the failed body names {sentinel:?}: {warnings}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// `details`, opted in

/// One `Proxy-Status` member parsed as RFC 9651 says: the name (token or string) and its
/// parameters, each a token, an integer or a string (unescaped). Anything else is an error.
fn parse_member(text: &str) -> Result<(String, Vec<(String, String)>), String> {
    let bytes = text.as_bytes();
    let mut at = 0;

    fn string(bytes: &[u8], at: &mut usize) -> Result<String, String> {
        debug_assert_eq!(bytes[*at], b'"');
        *at += 1;
        let mut out = String::new();
        loop {
            match bytes.get(*at) {
                None => return Err("unterminated string".into()),
                Some(b'"') => {
                    *at += 1;
                    return Ok(out);
                }
                Some(b'\\') => match bytes.get(*at + 1) {
                    Some(&c @ (b'"' | b'\\')) => {
                        out.push(char::from(c));
                        *at += 2;
                    }
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some(&c @ 0x20..=0x7e) => {
                    out.push(char::from(c));
                    *at += 1;
                }
                Some(c) => return Err(format!("byte {c:#x} in a string")),
            }
        }
    }

    fn bare(bytes: &[u8], at: &mut usize) -> Result<String, String> {
        match bytes.get(*at) {
            Some(b'"') => string(bytes, at),
            Some(c) if c.is_ascii_alphabetic() || *c == b'*' => {
                let start = *at;
                while bytes.get(*at).is_some_and(|&c| {
                    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c)
                }) {
                    *at += 1;
                }
                Ok(String::from_utf8_lossy(&bytes[start..*at]).into_owned())
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let start = *at;
                *at += 1;
                while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                    *at += 1;
                }
                Ok(String::from_utf8_lossy(&bytes[start..*at]).into_owned())
            }
            other => Err(format!("no bare item at {other:?}")),
        }
    }

    let name = bare(bytes, &mut at)?;
    let mut params = Vec::new();
    while at < bytes.len() {
        if bytes[at] != b';' {
            return Err(format!("expected `;` at byte {at} of {text:?}"));
        }
        at += 1;
        while bytes.get(at) == Some(&b' ') {
            at += 1;
        }
        let start = at;
        while bytes
            .get(at)
            .is_some_and(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
        {
            at += 1;
        }
        let key = String::from_utf8_lossy(&bytes[start..at]).into_owned();
        if key.is_empty() {
            return Err(format!("empty key at byte {start}"));
        }
        if bytes.get(at) != Some(&b'=') {
            params.push((key, "?1".to_owned()));
            continue;
        }
        at += 1;
        params.push((key, bare(bytes, &mut at)?));
    }
    Ok((name, params))
}

/// The `details` parameter of a `Proxy-Status` value, checked to be a valid member: returns the
/// serialized length of the string and its unescaped content.
fn details_of(value: &HeaderValue) -> (usize, String) {
    let text = value.to_str().expect("Proxy-Status is visible ASCII");
    let (name, params) =
        parse_member(text).unwrap_or_else(|e| panic!("{text:?} is not an sf member: {e}"));
    assert_eq!(name, "edge-1");
    let details: Vec<&String> = params
        .iter()
        .filter(|(k, _)| k == "details")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(details.len(), 1, "one details parameter in {text:?}");
    let serialized = &text[text.find("details=").expect("details") + "details=".len()..];
    assert!(serialized.starts_with('"'), "{serialized}");
    (serialized.len(), details[0].clone())
}

#[tokio::test]
async fn details_opted_in_go_in_proxy_status_only_and_bodies_stay_the_same() {
    let plain = failing_gateway(layer(), recognised_chain);
    let detailed = failing_gateway(layer().proxy_status_details(true), recognised_chain);

    for ((what, request), (_, same_request)) in client_requests().into_iter().zip(client_requests())
    {
        let without = seen(call(plain.clone(), request).await).await;
        let with = seen(call(detailed.clone(), same_request).await).await;

        assert_eq!(with.status, without.status, "{what}");
        assert_eq!(
            with.places[0], without.places[0],
            "{what}: the body does not change with details"
        );
        let value = &with.headers[&PROXY_STATUS];
        assert!(
            value
                .to_str()
                .unwrap()
                .starts_with("edge-1; error=connection_refused; details=\""),
            "{what}: {value:?}"
        );
        let (len, details) = details_of(value);
        assert!(len <= 256, "{what}: details is {len} bytes");
        // Opted in, the operator asked for the chain: it is there, as text.
        assert_eq!(
            details,
            format!("checkout from {HOST} ({ADDRESS}:5432) failed: GET {URL}: {OS_TEXT}"),
            "{what}"
        );
        // Every other header is the same as without details.
        for (name, value) in &without.headers {
            if name != PROXY_STATUS {
                assert_eq!(with.headers.get(name), Some(value), "{what}: {name}");
            }
        }
    }
}

#[tokio::test]
async fn hostile_error_text_becomes_a_bounded_valid_sf_string() {
    let hostile = [
        // Header injection, quotes, escapes, controls, non-ASCII, and a lot of it.
        "a\r\nSet-Cookie: session=stolen\r\n\r\n<script>x</script>".to_owned(),
        "quote \" backslash \\ nul \0 del \u{7f} tab \t é 😀 \u{2028}".to_owned(),
        "\"\\".repeat(5000),
        "x".repeat(10_000),
        String::new(),
    ];
    for message in hostile {
        let make = {
            let message = message.clone();
            move || io::Error::other(message.clone())
        };
        let gateway = failing_gateway(layer().proxy_status_details(true), make);
        let request = Request::get("/").body(Body::empty()).unwrap();
        let seen = seen(call(gateway, request).await).await;

        let value = &seen.headers[&PROXY_STATUS];
        assert!(
            HeaderValue::from_bytes(value.as_bytes()).is_ok(),
            "{value:?}"
        );
        assert!(
            !value.as_bytes().iter().any(|&b| b == b'\r' || b == b'\n'),
            "{value:?}"
        );
        let (len, details) = details_of(value);
        assert!(len <= 256, "details of {} bytes: {len}", message.len());
        assert!(
            details.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{details:?}"
        );
        if message.len() > 256 {
            assert!(details.ends_with("..."), "a cut is marked: {details:?}");
        }
        // Nothing of the hostile text reached the body.
        let body = &seen.places[0].1;
        assert!(
            !body.contains("Set-Cookie") && !body.contains("<script>x"),
            "{body}"
        );
        // The header stands alone: no line of it can become another header.
        assert!(seen.headers.get("set-cookie").is_none());
    }
}

#[test]
fn the_member_parser_rejects_what_is_not_structured() {
    // The checks above are only as good as this parser: it must refuse broken members.
    assert!(parse_member(r#"edge-1; details="a\"b\\c""#).is_ok());
    assert_eq!(
        parse_member(r#"edge-1; details="a\"b""#).unwrap().1[0].1,
        "a\"b"
    );
    assert!(parse_member(r#"edge-1; details="unterminated"#).is_err());
    assert!(parse_member(r#"edge-1; details="bad \x escape""#).is_err());
    assert!(parse_member("edge-1; details=\"caf\u{e9}\"").is_err());
    assert!(parse_member("edge-1 details").is_err());
    assert!(parse_member("edge-1; =x").is_err());
}
