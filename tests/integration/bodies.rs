//! Generated error bodies, through the real layer: the format each `Accept` gets, the three bodies
//! of 502, 503 and 504 parsed as a client parses them, escaping of request values, user templates
//! and renderers, and the framing of generated responses.
//!
//! The inner services fail for real without a socket: a refused connection (`io::Error`), a
//! load-shedding `tower::load_shed` in front of a service that is never ready, and a response that
//! never comes, cut off by `upstream_timeout`.

use crate::custom_templates;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::classify::Classification;
use gateway_errors::render::Bodies;
use gateway_errors::render::{ErrorView, Format, Template, negotiate};
use gateway_errors::retry::RetryHints;
use gateway_errors::{GatewayErrorLayer, ProxyErrorKind, ProxyName};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use scraper::{Html, Selector};
use serde_json::Value;
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::request_id::RequestId;

/// Every test's own bound on its time.
const LIMIT: Duration = Duration::from_secs(10);

/// What the inner service's error says: an address and a host name that must never reach a client.
const INTERNALS: &str = "connect to 127.20.30.40:8443 (billing-db.internal) refused";

const JSON: &str = "application/problem+json";
const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

type ReqBody = Empty<Bytes>;
use gateway_errors::body::UploadBody;

/// How the upstream fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The connection is refused: 502 `connection_refused`.
    Refused,
    /// `tower::load_shed` sheds the request: 503 `connection_limit_reached`.
    Shed,
    /// No response within `upstream_timeout(50ms)`: 504 `http_response_timeout`.
    Timeout,
}

impl Failure {
    const ALL: [Failure; 3] = [Failure::Refused, Failure::Shed, Failure::Timeout];

    fn status(self) -> StatusCode {
        match self {
            Failure::Refused => StatusCode::BAD_GATEWAY,
            Failure::Shed => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn error_type(self) -> &'static str {
        match self {
            Failure::Refused => "connection_refused",
            Failure::Shed => "connection_limit_reached",
            Failure::Timeout => "http_response_timeout",
        }
    }
}

/// A service that is never ready, behind `load_shed`: every request is shed.
#[derive(Clone)]
struct NeverReady;

impl<B> Service<Request<B>> for NeverReady {
    type Response = Response<ReqBody>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Response<ReqBody>, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Pending
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        panic!("load_shed calls a service only when it is ready")
    }
}

/// Sends `request` through `layer` around a service that fails as `failure` says, and collects the
/// response body.
async fn send(
    layer: GatewayErrorLayer,
    failure: Failure,
    request: Request<ReqBody>,
) -> Response<Bytes> {
    let work = async move {
        let response = match failure {
            Failure::Refused => {
                let refused = tower::service_fn(|_: Request<UploadBody<ReqBody>>| async {
                    Err::<Response<ReqBody>, _>(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        INTERNALS,
                    ))
                });
                layer.layer(refused).oneshot(request).await
            }
            Failure::Shed => {
                ServiceBuilder::new()
                    .layer(layer)
                    .load_shed()
                    .service(NeverReady)
                    .oneshot(request)
                    .await
            }
            Failure::Timeout => {
                let stalled = tower::service_fn(|_: Request<UploadBody<ReqBody>>| {
                    std::future::pending::<Result<Response<ReqBody>, io::Error>>()
                });
                layer
                    .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(50)))
                    .layer(stalled)
                    .oneshot(request)
                    .await
            }
        };
        let response = response.unwrap_or_else(|never: Infallible| match never {});
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .expect("a generated body never fails")
            .to_bytes();
        Response::from_parts(parts, body)
    };
    tokio::time::timeout(LIMIT, work)
        .await
        .expect("the layer answers in time")
}

fn request(method: Method, accept: &[HeaderValue]) -> Request<ReqBody> {
    let mut request = Request::builder()
        .method(method)
        .uri("/orders/42")
        .body(Empty::new())
        .unwrap();
    for value in accept {
        request.headers_mut().append(header::ACCEPT, value.clone());
    }
    request
}

fn get(accept: &str) -> Request<ReqBody> {
    request(Method::GET, &[HeaderValue::from_str(accept).unwrap()])
}

fn with_request_id(mut request: Request<ReqBody>, id: &str) -> Request<ReqBody> {
    request
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_str(id).unwrap());
    request
}

fn header(response: &Response<Bytes>, name: impl header::AsHeaderName) -> Option<&str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

// ---------------------------------------------------------------------------------------------
// (a) negotiation

struct Row {
    what: &'static str,
    accept: Vec<HeaderValue>,
    expect: &'static str,
}

fn row(what: &'static str, accept: &[&[u8]], expect: &'static str) -> Row {
    Row {
        what,
        accept: accept
            .iter()
            .map(|a| HeaderValue::from_bytes(a).expect("a valid header value"))
            .collect(),
        expect,
    }
}

fn negotiation_table() -> Vec<Row> {
    let long = b"a/b;q=0.1,".repeat(64 * 1024 / 10);
    let mut long_then_text = long.clone();
    long_then_text.extend_from_slice(b"text/plain");
    vec![
        row("no Accept", &[], JSON),
        row(
            "Chrome, navigation",
            &[b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"],
            HTML,
        ),
        row(
            "Firefox, navigation",
            &[b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
            HTML,
        ),
        row(
            "Safari (older WebKit), navigation",
            &[b"application/xml,application/xhtml+xml,text/html;q=0.9,text/plain;q=0.8,image/png,*/*;q=0.5"],
            HTML,
        ),
        row(
            "Chrome, image",
            &[b"image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"],
            JSON,
        ),
        row("curl, fetch()", &[b"*/*"], JSON),
        row("HTTPie", &[b"application/json, */*;q=0.5"], JSON),
        row("application/json", &[b"application/json"], JSON),
        row("application/problem+json", &[b"application/problem+json"], JSON),
        row("application/*", &[b"application/*"], JSON),
        row("text/* (HTML first on a tie)", &[b"text/*"], HTML),
        row("text/plain", &[b"text/plain"], TEXT),
        row("*/*;q=0 alone: nothing acceptable", &[b"*/*;q=0"], JSON),
        row("image/png: nothing acceptable", &[b"image/png"], JSON),
        row("text/html;q=0, */*", &[b"text/html;q=0, */*"], JSON),
        row("text/html;q=0, text/*", &[b"text/html;q=0, text/*"], TEXT),
        row(
            "specific q=0 beats a wildcard",
            &[b"*/*;q=0.1, text/*;q=0.5, text/html;q=0"],
            TEXT,
        ),
        row(
            "application/json;q=0 refuses JSON despite */*",
            &[b"application/json;q=0, */*"],
            HTML,
        ),
        row(
            "problem+json named beats application/json",
            &[b"application/problem+json;q=0.1, application/json, text/plain;q=0.5"],
            TEXT,
        ),
        row("uppercase TEXT/HTML", &[b"TEXT/HTML"], HTML),
        row("mixed case, Q=", &[b"Text/Plain; Q=0.9, text/html;q=0.5"], TEXT),
        row("q=0.001 is not zero", &[b"image/png, text/plain;q=0.001"], TEXT),
        row("charset=utf-8 matches", &[b"text/plain; charset=utf-8"], TEXT),
        row("charset quoted, any case", &[b"text/plain;charset=\"UTF-8\""], TEXT),
        row(
            "charset=iso-8859-1 does not match",
            &[b"text/plain;charset=iso-8859-1, text/html;q=0.5"],
            HTML,
        ),
        row(
            "level=1 does not match our text/html",
            &[b"text/html;level=1, text/plain;q=0.5"],
            TEXT,
        ),
        row(
            "level=1;q=0 does not refuse our text/html",
            &[b"text/html;level=1;q=0, text/html;q=0.7, text/plain;q=0.5"],
            HTML,
        ),
        row(
            "quoted string with commas",
            &[b"text/plain;q=0.5, text/html;foo=\"x,text/plain;q=0,y\""],
            TEXT,
        ),
        row(
            "quoted string with an escaped quote",
            &[b"text/html;q=0.1, text/plain;q=0.5;ext=\"a\\\",text/html;q=1,b\""],
            TEXT,
        ),
        row(
            "two Accept field lines",
            &[b"text/html;q=0.1", b"text/plain;q=0.9"],
            TEXT,
        ),
        row(
            "two Accept field lines, q=0 in the second",
            &[b"text/*", b"text/html;q=0, application/json;q=0.2"],
            TEXT,
        ),
        row("empty", &[b""], JSON),
        row("garbage ;;;,,,", &[b";;;,,,"], JSON),
        row("text/", &[b"text/"], JSON),
        row("/html", &[b"/html"], JSON),
        row("*/html is no range", &[b"*/html"], JSON),
        row(
            "q=abc drops its range",
            &[b"text/html;q=abc, text/plain;q=0.5"],
            TEXT,
        ),
        row("q=1.5 drops its range", &[b"text/html;q=1.5"], JSON),
        row("q with four decimals", &[b"text/html;q=0.0001"], JSON),
        row(
            "unterminated quote swallows the rest",
            &[b"text/html;x=\"abc, text/plain"],
            JSON,
        ),
        row(
            "tabs and spaces around everything",
            &[b"\t text/plain \t; \tq=0.9\t ,\ttext/html ; q=0.1 "],
            TEXT,
        ),
        row(
            "non-UTF-8 bytes (obs-text)",
            &[b"text/ht\xe4ml, t\xffxt/plain, text/plain;q=0.3"],
            TEXT,
        ),
        row("64 KiB of a/b;q=0.1,", &[&long], JSON),
        row("64 KiB of a/b;q=0.1, then text/plain", &[&long_then_text], TEXT),
    ]
}

#[tokio::test]
async fn every_accept_gets_the_right_format_and_the_errors_status() {
    let rows = negotiation_table();
    assert!(rows.len() >= 30);
    // 50 ms of timeout per 504: run everything at once.
    let layer = GatewayErrorLayer::new();
    let mut runs = JoinSet::new();
    for (index, row) in rows.iter().enumerate() {
        for failure in Failure::ALL {
            let (layer, accept) = (layer.clone(), row.accept.clone());
            runs.spawn(async move {
                let response = send(layer, failure, request(Method::GET, &accept)).await;
                (index, failure, response)
            });
        }
    }
    let mut wrong = Vec::new();
    let mut seen = 0;
    let all = tokio::time::timeout(LIMIT, runs.join_all())
        .await
        .expect("the table runs in time");
    for (index, failure, response) in all {
        seen += 1;
        let row = &rows[index];
        let content_type = header(&response, header::CONTENT_TYPE);
        if response.status() != failure.status()
            || content_type != Some(row.expect)
            || header(&response, header::VARY) != Some("accept")
        {
            wrong.push(format!(
                "{} ({failure:?}): got {} {content_type:?}, want {} {:?}",
                row.what,
                response.status(),
                failure.status(),
                row.expect
            ));
        }
    }
    assert_eq!(seen, rows.len() * 3);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn the_default_format_is_configurable() {
    let layer = GatewayErrorLayer::new().bodies(Bodies::new().default_format(Format::Html));
    for (accept, expect) in [
        (None, HTML),
        (Some("*/*"), HTML),
        (Some("image/png"), HTML),
        (Some("application/json, text/html"), HTML),
        (Some("application/json"), JSON),
        (Some("text/plain"), TEXT),
    ] {
        let accept: Vec<HeaderValue> = accept.map(HeaderValue::from_static).into_iter().collect();
        let response = send(
            layer.clone(),
            Failure::Refused,
            request(Method::GET, &accept),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            header(&response, header::CONTENT_TYPE),
            Some(expect),
            "Accept: {accept:?}"
        );
    }
}

/// A quadratic parser would take minutes on these; a linear one takes milliseconds.
#[tokio::test]
async fn hostile_accept_headers_cost_linear_time() {
    const LEN: usize = 1 << 20;
    let hostile: Vec<Vec<u8>> = vec![
        vec![b'"'; LEN],
        vec![b';'; LEN],
        vec![b'='; LEN],
        vec![b','; LEN],
        vec![b'/'; LEN],
        [b"text/html;x=\"".as_slice(), &vec![b'\\'; LEN]].concat(),
        b"a/b;c=d".iter().copied().cycle().take(LEN).collect(),
        b";q=".iter().copied().cycle().take(LEN).collect(),
        b"text/html;".iter().copied().cycle().take(LEN).collect(),
        b"*/*;q=0.1;".iter().copied().cycle().take(LEN).collect(),
    ];
    let started = Instant::now();
    let work = tokio::task::spawn_blocking(move || {
        for bytes in &hostile {
            let value = HeaderValue::from_bytes(bytes).unwrap();
            let _ = negotiate([&value], Format::ProblemJson);
        }
    });
    tokio::time::timeout(LIMIT, work)
        .await
        .expect("negotiation of 10 MiB of hostile Accept finishes in time")
        .expect("negotiation never panics");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// (b) the three bodies of each gateway status

const ID: &str = "req-7f3a9c";

fn text_of(element: scraper::ElementRef<'_>) -> String {
    element
        .text()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn select<'a>(html: &'a Html, selector: &str) -> Vec<scraper::ElementRef<'a>> {
    html.select(&Selector::parse(selector).unwrap()).collect()
}

fn only<'a>(html: &'a Html, selector: &str) -> scraper::ElementRef<'a> {
    let found = select(html, selector);
    assert_eq!(
        found.len(),
        1,
        "exactly one `{selector}` in {}",
        html.html()
    );
    found[0]
}

/// The `<dd>` of each `<dt>` in the page's details list.
fn details(html: &Html) -> Vec<(String, String)> {
    select(html, "dt")
        .into_iter()
        .zip(select(html, "dd"))
        .map(|(dt, dd)| (text_of(dt), text_of(dd)))
        .collect()
}

fn parse_html(body: &[u8]) -> Html {
    let html = Html::parse_document(std::str::from_utf8(body).expect("UTF-8"));
    assert!(
        html.errors.is_empty(),
        "HTML parse errors: {:?}",
        html.errors
    );
    // A missing or wrong doctype puts browsers in quirks mode.
    assert_eq!(format!("{:?}", html.quirks_mode), "NoQuirks");
    html
}

fn parse_json(body: &[u8]) -> serde_json::Map<String, Value> {
    match serde_json::from_slice(body).expect("the body is JSON") {
        Value::Object(members) => members,
        other => panic!("not an object: {other}"),
    }
}

fn members(object: &serde_json::Map<String, Value>) -> BTreeSet<&str> {
    object.keys().map(String::as_str).collect()
}

fn assert_no_internals(body: &[u8]) {
    let body = String::from_utf8_lossy(body);
    for secret in ["127.20.30.40", "8443", "billing-db", "os error", "/orders"] {
        assert!(!body.contains(secret), "`{secret}` leaked into {body}");
    }
}

#[tokio::test]
async fn html_json_and_text_say_the_same_for_502_503_504() {
    let layer = GatewayErrorLayer::new()
        .proxy_name(ProxyName::from_static("edge-1"))
        .retry_hints(
            RetryHints::new()
                .retry_after_for_status(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(30)),
        );
    for failure in Failure::ALL {
        let status = failure.status();
        let title = status.canonical_reason().unwrap();
        let send = |accept: &str| send(layer.clone(), failure, with_request_id(get(accept), ID));
        let (html_response, json_response, text_response) = (
            send("text/html").await,
            send("application/json").await,
            send("text/plain").await,
        );

        for (response, content_type) in [
            (&html_response, HTML),
            (&json_response, JSON),
            (&text_response, TEXT),
        ] {
            assert_eq!(response.status(), status, "{failure:?}");
            assert_eq!(header(response, header::CONTENT_TYPE), Some(content_type));
            assert_eq!(
                header(response, header::CONTENT_LENGTH),
                Some(response.body().len().to_string().as_str())
            );
            assert_eq!(header(response, header::CACHE_CONTROL), Some("no-store"));
            assert_eq!(
                header(response, "proxy-status"),
                Some(format!("edge-1; error={}", failure.error_type()).as_str())
            );
            assert_eq!(
                header(response, header::RETRY_AFTER),
                (status == StatusCode::SERVICE_UNAVAILABLE).then_some("30")
            );
            assert_no_internals(response.body());
        }

        // problem+json: every member, and `status` is the real status.
        let json = parse_json(json_response.body());
        let mut expected = BTreeSet::from([
            "type",
            "title",
            "status",
            "detail",
            "error_type",
            "retryable",
            "request_id",
        ]);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            expected.insert("retry_after");
            assert_eq!(json["retry_after"], 30);
        }
        assert_eq!(members(&json), expected);
        assert_eq!(json["type"], "about:blank");
        assert_eq!(json["title"], title);
        assert_eq!(json["status"], json_response.status().as_u16());
        assert_eq!(json["error_type"], failure.error_type());
        assert_eq!(json["retryable"], true, "a GET may be sent again");
        assert_eq!(json["request_id"], ID);
        let detail = json["detail"].as_str().unwrap();
        assert!(detail.len() > 20 && detail.ends_with('.'), "{detail}");

        // HTML: a whole page a browser shows without any asset.
        let html = parse_html(html_response.body());
        assert_eq!(only(&html, "html").value().attr("lang"), Some("en"));
        let charset = only(&html, "meta[charset]")
            .value()
            .attr("charset")
            .unwrap();
        assert!(charset.eq_ignore_ascii_case("utf-8"));
        assert_eq!(
            text_of(only(&html, "title")),
            format!("{} {title}", status.as_u16())
        );
        assert_eq!(text_of(only(&html, "h1")), title);
        assert!(
            text_of(only(&html, ".status")).contains(status.as_str()),
            "the page shows the status code"
        );
        assert_eq!(text_of(only(&html, ".detail")), detail);
        let advice = text_of(only(&html, ".advice"));
        assert!(advice.starts_with("This is usually temporary"), "{advice}");
        assert_eq!(
            advice.contains("30 seconds"),
            status == StatusCode::SERVICE_UNAVAILABLE,
            "{advice}"
        );
        let details = details(&html);
        assert!(
            details.contains(&("Request ID".into(), ID.into())),
            "{details:?}"
        );
        assert!(details.contains(&("Error type".into(), failure.error_type().into())));
        assert!(select(&html, "script, link, img, iframe, object, [src], [href]").is_empty());

        // text: the same title, detail and advice, one per line.
        let text = std::str::from_utf8(text_response.body()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("{} {title}", status.as_u16()));
        assert!(lines.contains(&detail), "{text}");
        let advice_line = lines
            .iter()
            .find(|line| line.starts_with("This is usually temporary"))
            .unwrap_or_else(|| panic!("no advice in {text}"));
        assert!(advice.starts_with(advice_line), "{advice} / {advice_line}");
        assert!(
            lines.contains(&format!("Request ID: {ID}").as_str()),
            "{text}"
        );
        assert!(
            lines.contains(&format!("Error type: {}", failure.error_type()).as_str()),
            "{text}"
        );
        assert!(text.ends_with('\n'));
    }
}

#[tokio::test]
async fn a_request_that_may_have_reached_the_origin_is_not_called_retryable() {
    let layer = GatewayErrorLayer::new();
    let post = |accept: &str| request(Method::POST, &[HeaderValue::from_str(accept).unwrap()]);
    let json = send(layer.clone(), Failure::Timeout, post("application/json")).await;
    let json = parse_json(json.body());
    assert_eq!(json["retryable"], false);
    assert_eq!(json["status"], 504);
    let html = send(layer.clone(), Failure::Timeout, post("text/html")).await;
    let advice = text_of(only(&parse_html(html.body()), ".advice"));
    assert!(advice.contains("check whether it took effect"), "{advice}");
    // Refused before anything was sent: safe even for a POST.
    let refused = send(layer, Failure::Refused, post("application/json")).await;
    assert_eq!(parse_json(refused.body())["retryable"], true);
}

// ---------------------------------------------------------------------------------------------
// (c) escaping: request values come out inert

const HOSTILE_IDS: [&str; 3] = [
    r#"<script>alert("x")</script>"#,
    r#""},{"injected":1"#,
    r#"</dd><img/src=x/onerror=alert(1)>&amp;'"#,
];

/// By header, and by tower-http's `RequestId` (which wins when both are present).
fn id_carriers(id: &str, accept: &str) -> [Request<ReqBody>; 2] {
    let by_header = with_request_id(get(accept), id);
    let mut by_extension = with_request_id(get(accept), "the-header-loses");
    by_extension
        .extensions_mut()
        .insert(RequestId::new(HeaderValue::from_str(id).unwrap()));
    [by_header, by_extension]
}

#[tokio::test]
async fn hostile_request_ids_are_inert_in_every_format() {
    let layer = GatewayErrorLayer::new();
    for id in HOSTILE_IDS {
        for (html_request, json_request, text_request) in id_carriers(id, "text/html")
            .into_iter()
            .zip(id_carriers(id, "application/json"))
            .zip(id_carriers(id, "text/plain"))
            .map(|((h, j), t)| (h, j, t))
        {
            let html = send(layer.clone(), Failure::Refused, html_request).await;
            let page = parse_html(html.body());
            assert!(
                select(&page, "script, img, [onerror]").is_empty(),
                "{}",
                page.html()
            );
            let raw = String::from_utf8_lossy(html.body()).to_ascii_lowercase();
            assert!(!raw.contains("<script") && !raw.contains("<img"), "{raw}");
            assert!(
                details(&page).contains(&("Request ID".into(), id.into())),
                "the id shows as text, exactly: {:?}",
                details(&page)
            );

            let json = send(layer.clone(), Failure::Refused, json_request).await;
            let object = parse_json(json.body());
            assert_eq!(object["request_id"], id);
            assert_eq!(
                members(&object),
                BTreeSet::from([
                    "type",
                    "title",
                    "status",
                    "detail",
                    "error_type",
                    "retryable",
                    "request_id"
                ]),
                "no member injected"
            );
            assert!(!String::from_utf8_lossy(json.body()).contains('<'));

            let text = send(layer.clone(), Failure::Refused, text_request).await;
            let text = std::str::from_utf8(text.body()).unwrap();
            assert!(text.contains(&format!("\nRequest ID: {id}\n")), "{text}");
        }
    }
}

#[tokio::test]
async fn request_ids_that_are_not_visible_ascii_are_dropped() {
    let layer = GatewayErrorLayer::new();
    let long = "a".repeat(201);
    let bad: Vec<HeaderValue> = vec![
        HeaderValue::from_bytes(b"req-\x80\x81\xff").unwrap(),
        HeaderValue::from_static("two words"),
        HeaderValue::from_static("tab\there"),
        HeaderValue::from_static(""),
        HeaderValue::from_str(&long).unwrap(),
    ];
    for value in bad {
        let mut by_header = Vec::new();
        for accept in ["text/html", "application/json", "text/plain"] {
            let mut request = get(accept);
            request.headers_mut().insert("x-request-id", value.clone());
            by_header.push(request);
            let mut request = get(accept);
            request
                .extensions_mut()
                .insert(RequestId::new(value.clone()));
            by_header.push(request);
        }
        for request in by_header {
            let response = send(layer.clone(), Failure::Refused, request).await;
            let body = String::from_utf8_lossy(response.body());
            match header(&response, header::CONTENT_TYPE) {
                Some(JSON) => assert!(!parse_json(response.body()).contains_key("request_id")),
                Some(HTML) => {
                    let page = parse_html(response.body());
                    assert!(
                        !details(&page).iter().any(|(dt, _)| dt == "Request ID"),
                        "{body}"
                    );
                }
                Some(TEXT) => assert!(!body.contains("Request ID"), "{body}"),
                other => panic!("unexpected content type {other:?}"),
            }
            assert!(
                !body.contains("req-") && !body.contains("two words") && !body.contains("aaaa")
            );
        }
    }
}

#[tokio::test]
async fn a_hostile_path_is_never_shown() {
    let layer = GatewayErrorLayer::new();
    for accept in ["text/html", "application/json", "text/plain"] {
        let mut request = get(accept);
        *request.uri_mut() = "/%3Cscript%3Ealert(1)%3C/script%3E?q=%22x%22"
            .parse()
            .unwrap();
        let response = send(layer.clone(), Failure::Refused, request).await;
        let body = String::from_utf8_lossy(response.body());
        assert!(
            !body.contains("script") && !body.contains("alert"),
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (d) user templates and renderers

#[test]
fn template_mistakes_are_errors_with_their_position() {
    let err = Template::html("<h1>{title}</h1>\n<p>{detial}</p>").unwrap_err();
    assert_eq!((err.line(), err.column(), err.byte_offset()), (2, 4, 20));
    assert_eq!(
        err.to_string(),
        "unknown placeholder `{detial}` at line 2, column 4 (byte 20)"
    );

    let err = Template::text("{status} {title").unwrap_err();
    assert_eq!((err.line(), err.column()), (1, 10));
    assert!(err.to_string().starts_with("unclosed `{`"), "{err}");

    let err = Template::html("<style>\nbody { margin: 0 }\n</style>").unwrap_err();
    assert_eq!((err.line(), err.column()), (2, 6));
    assert!(
        err.to_string().contains("write `{{` for a literal brace"),
        "{err}"
    );

    let err = Template::text("{status}} x").unwrap_err();
    assert!(err.to_string().starts_with("unmatched `}`"), "{err}");
    assert_eq!(err.byte_offset(), 8);

    let err = Template::text("ok\n  {#request_id}id: {request_id}").unwrap_err();
    assert_eq!((err.line(), err.column()), (2, 3));
    assert!(err.to_string().contains("never closed"), "{err}");

    let err = Template::text("{/retryable}").unwrap_err();
    assert!(err.to_string().contains("closes no open section"), "{err}");

    let err = Template::text("{ status }").unwrap_err();
    assert_eq!(err.byte_offset(), 0);

    // JSON templates are rendered with hostile samples when compiled and must give an object.
    let err = Template::problem_json(r#"{{"title":{title}}}"#).unwrap_err();
    assert!(
        err.to_string().contains("does not render valid JSON"),
        "{err}"
    );
    let err = Template::problem_json(r#"{{"status":{status},}}"#).unwrap_err();
    assert!(
        err.to_string().contains("does not render valid JSON"),
        "{err}"
    );
    let err = Template::problem_json("[{status}]").unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
    let err = Template::problem_json(r#"{{"id":"{request_id}"#).unwrap_err();
    assert!(
        err.to_string().contains("does not render valid JSON"),
        "{err}"
    );
    assert!(Template::problem_json(r#"{{"s":{status},"id":"{request_id}"}}"#).is_ok());
}

#[tokio::test]
async fn kind_templates_beat_status_templates_beat_format_templates() {
    let layer = GatewayErrorLayer::new().bodies(
        Bodies::new()
            .template(Template::text("any: {status}\n").unwrap())
            .template_for_status(
                StatusCode::SERVICE_UNAVAILABLE,
                Template::text("status 503: {error_type}\n").unwrap(),
            )
            .template_for_status(
                StatusCode::BAD_GATEWAY,
                Template::text("status 502\n").unwrap(),
            )
            .template_for_kind(
                ProxyErrorKind::ConnectionRefused,
                Template::text("refused{#request_id} [{request_id}]{/request_id}\n").unwrap(),
            )
            .template_for_kind(
                ProxyErrorKind::ConnectionRefused,
                Template::html("<!DOCTYPE html><title>x</title><p>refused page</p>").unwrap(),
            ),
    );
    let text = |failure| {
        send(
            layer.clone(),
            failure,
            with_request_id(get("text/plain"), "r1"),
        )
    };
    let refused = text(Failure::Refused).await;
    assert_eq!(refused.body(), "refused [r1]\n");
    assert_eq!(header(&refused, header::CONTENT_TYPE), Some(TEXT));
    assert_eq!(header(&refused, header::CONTENT_LENGTH), Some("13"));
    assert_eq!(
        text(Failure::Shed).await.body(),
        "status 503: connection_limit_reached\n"
    );
    assert_eq!(text(Failure::Timeout).await.body(), "any: 504\n");

    // A 502 of another kind gets the 502 template.
    let unknown = tower::service_fn(|_: Request<UploadBody<ReqBody>>| async {
        Err::<Response<ReqBody>, _>(io::Error::other("something nobody recognises"))
    });
    let work = async {
        let response = layer
            .clone()
            .layer(unknown)
            .oneshot(get("text/plain"))
            .await;
        let response = response.unwrap_or_else(|never: Infallible| match never {});
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    let (status, body) = tokio::time::timeout(LIMIT, work).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "status 502\n");

    // Other formats keep their own templates.
    let html = send(layer.clone(), Failure::Refused, get("text/html")).await;
    assert!(text_of(only(&parse_html(html.body()), "p")) == "refused page");
    let json = send(layer.clone(), Failure::Timeout, get("text/html")).await;
    assert_eq!(
        text_of(only(&parse_html(json.body()), "h1")),
        "Gateway Timeout"
    );
    let json = send(layer, Failure::Refused, get("application/json")).await;
    assert_eq!(parse_json(json.body())["status"], 502);
}

#[tokio::test]
async fn a_renderer_closure_renders_what_it_wants_and_leaves_the_rest() {
    let layer = GatewayErrorLayer::new().bodies(Bodies::new().renderer(
        |view: &ErrorView<'_>, format: Format| {
            (format == Format::Text && view.status() == StatusCode::GATEWAY_TIMEOUT).then(|| {
                Bytes::from(format!(
                    "slow upstream, retry: {} ({})\n",
                    view.retryable(),
                    view.error_type().unwrap_or("-")
                ))
            })
        },
    ));
    let slow = send(layer.clone(), Failure::Timeout, get("text/plain")).await;
    assert_eq!(
        slow.body(),
        "slow upstream, retry: true (http_response_timeout)\n"
    );
    assert_eq!(header(&slow, header::CONTENT_TYPE), Some(TEXT));
    assert_eq!(
        header(&slow, header::CONTENT_LENGTH),
        Some(slow.body().len().to_string().as_str())
    );
    // `None`: the templates apply.
    let refused = send(layer.clone(), Failure::Refused, get("text/plain")).await;
    assert!(refused.body().starts_with(b"502 Bad Gateway\n"));
    let html = send(layer, Failure::Timeout, get("text/html")).await;
    assert_eq!(
        text_of(only(&parse_html(html.body()), "h1")),
        "Gateway Timeout"
    );
}

/// examples/custom_templates.rs: its own page, its text for timeouts only, and minijinja's
/// problem+json, which must parse whatever the request id holds.
#[tokio::test]
async fn the_custom_templates_example_renders_what_it_promises() {
    let layer = custom_templates::layer().expect("the example's templates compile");

    for id in ["7f3a", HOSTILE_IDS[0], HOSTILE_IDS[1]] {
        let json = send(
            layer.clone(),
            Failure::Refused,
            with_request_id(get("*/*"), id),
        )
        .await;
        assert_eq!(header(&json, header::CONTENT_TYPE), Some(JSON));
        let object = parse_json(json.body());
        assert_eq!(
            members(&object),
            BTreeSet::from([
                "type",
                "title",
                "status",
                "detail",
                "retryable",
                "request_id"
            ])
        );
        assert_eq!(
            object["type"],
            "https://errors.example.com/connection_refused"
        );
        assert_eq!(object["status"], 502);
        assert_eq!(object["title"], "Bad Gateway");
        assert_eq!(object["retryable"], true);
        assert_eq!(object["request_id"], id);
    }
    let json = send(layer.clone(), Failure::Timeout, get("application/json")).await;
    let object = parse_json(json.body());
    assert_eq!(object["status"], 504);
    assert!(!object.contains_key("request_id"));

    let html = send(
        layer.clone(),
        Failure::Shed,
        with_request_id(get("text/html"), "7f3a"),
    )
    .await;
    let page = parse_html(html.body());
    assert_eq!(text_of(only(&page, "h1")), "Sorry, that did not work (503)");
    assert_eq!(text_of(only(&page, "code")), "7f3a");
    assert_eq!(text_of(only(&page, "title")), "Service Unavailable · Acme");

    let slow = send(layer.clone(), Failure::Timeout, get("text/plain")).await;
    let slow = std::str::from_utf8(slow.body()).unwrap();
    assert!(
        slow.starts_with("504 Gateway Timeout: the upstream took too long to answer.\n"),
        "{slow}"
    );
    let refused = send(layer, Failure::Refused, get("text/plain")).await;
    assert!(
        refused.body().starts_with(b"502 Bad Gateway\n\n"),
        "built-in text for other kinds"
    );
}

// ---------------------------------------------------------------------------------------------
// (e) framing

#[tokio::test]
async fn head_gets_the_headers_of_get_and_no_body() {
    let layer = GatewayErrorLayer::new();
    for failure in Failure::ALL {
        for accept in ["text/html", "application/json", "text/plain"] {
            let accept = [HeaderValue::from_static(accept)];
            let get = send(layer.clone(), failure, request(Method::GET, &accept)).await;
            let head = send(layer.clone(), failure, request(Method::HEAD, &accept)).await;
            assert!(!get.body().is_empty());
            assert!(head.body().is_empty(), "{failure:?} {accept:?}");
            assert_eq!(head.status(), get.status());
            for name in [
                header::CONTENT_TYPE,
                header::CONTENT_LENGTH,
                header::VARY,
                header::CACHE_CONTROL,
                HeaderName::from_static("proxy-status"),
            ] {
                assert_eq!(
                    head.headers().get(&name),
                    get.headers().get(&name),
                    "{name}"
                );
            }
            assert_eq!(
                header(&head, header::CONTENT_LENGTH),
                Some(get.body().len().to_string().as_str())
            );
        }
    }
}

#[tokio::test]
async fn generated_errors_state_type_charset_length_and_vary() {
    let layer = GatewayErrorLayer::new();
    for (accept, media_type) in [("text/html", "text/html"), ("text/plain", "text/plain")] {
        let response = send(layer.clone(), Failure::Timeout, get(accept)).await;
        let content_type = header(&response, header::CONTENT_TYPE).unwrap();
        let (essence, params) = content_type.split_once(';').unwrap();
        assert_eq!(essence, media_type);
        assert_eq!(params.trim(), "charset=utf-8");
        assert!(std::str::from_utf8(response.body()).is_ok());
        assert_eq!(header(&response, header::VARY), Some("accept"));
        assert_eq!(
            header(&response, header::CONTENT_LENGTH)
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            response.body().len()
        );
    }
}

#[tokio::test]
async fn a_status_without_content_gets_no_body_and_no_length() {
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let layer =
            GatewayErrorLayer::new().classifier(move |_: &(dyn std::error::Error + 'static)| {
                Some(Classification::new(ProxyErrorKind::ProxyInternalResponse).with_status(status))
            });
        for method in [Method::GET, Method::HEAD] {
            for accept in ["text/html", "application/json", "text/plain"] {
                let request = request(method.clone(), &[HeaderValue::from_static(accept)]);
                let response = send(layer.clone(), Failure::Refused, request).await;
                assert_eq!(response.status(), status);
                assert!(response.body().is_empty(), "{status} {accept}");
                assert_eq!(header(&response, header::CONTENT_LENGTH), None, "{status}");
                assert_eq!(header(&response, header::CONTENT_TYPE), None, "{status}");
            }
        }
    }
}
