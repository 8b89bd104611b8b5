//! Injection: what a client sends (a request id, a path, a method) and what an operator configures
//! (a proxy name) cannot add markup, script, JSON members or header lines to a generated error.
//!
//! - problem+json bodies parse, with exactly the expected members, the request id as a string;
//! - HTML pages, parsed with `scraper`, have the same elements and attributes as with a plain id;
//! - text bodies have the same lines;
//! - a request id that is not printable ASCII (obs-text, spaces, controls, too long) is dropped;
//!   CR and LF cannot be in a header value at all, and hyper refuses them on the wire.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io;

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::headers::PROXY_STATUS;
use gateway_errors::render::Bodies;
use gateway_errors::render::Template;
use gateway_errors::{GatewayErrorLayer, ProxyName};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use scraper::{ElementRef, Html, Selector};
use tower::{ServiceBuilder, service_fn};

use crate::support::{call, demo_upstream, layer, raw_exchange, read_body, serve_gateway};

/// Request ids that are valid header values and printable ASCII, built to break out of HTML text,
/// HTML attributes, JSON strings and templates.
const HOSTILE_IDS: &[&str] = &[
    "<script>alert(1)</script>",
    "\"},\"status\":200,\"injected\":{\"a\":\"",
    "\",\"retryable\":true,\"x\":\"",
    "</dd><img/src=x/onerror=alert(1)>",
    "'onmouseover='alert(1)'",
    "\"/><svg/onload=alert(1)>",
    "{status}{{request_id}}{#retryable}",
    "&lt;script&gt;&#60;&amp;",
    "\\u003cscript\\u003e\\\"",
    "]]><!--<![CDATA[",
    "</title></head><body><h1>owned</h1>",
];

/// A gateway whose upstream refuses the connection.
fn refusing_gateway(
    layer: GatewayErrorLayer,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<gateway_errors::body::GatewayBody<Full<Bytes>>>,
    Error = Infallible,
> + Clone {
    let refusing = service_fn(|_request: Request<crate::support::Upload>| async {
        Err::<Response<Full<Bytes>>, _>(io::Error::from(io::ErrorKind::ConnectionRefused))
    });
    ServiceBuilder::new().layer(layer).service(refusing)
}

/// The generated error for `request`: status, content type and body text.
async fn generated(
    layer: GatewayErrorLayer,
    request: Request<Body>,
) -> (StatusCode, String, String) {
    let response = call(refusing_gateway(layer), request).await;
    let (parts, body) = response.into_parts();
    let body = read_body(body).await;
    for (name, value) in &parts.headers {
        // Whatever the request held, every header we send is one line of visible ASCII.
        assert!(
            value.to_str().is_ok(),
            "{name}: {value:?} is not visible ASCII"
        );
    }
    let content_type = parts.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let body = String::from_utf8(body.to_vec()).expect("bodies are UTF-8");
    (parts.status, content_type, body)
}

fn request_with_id(accept: &str, id: HeaderValue) -> Request<Body> {
    Request::get("/orders")
        .header(header::ACCEPT, accept)
        .header("x-request-id", id)
        .body(Body::empty())
        .expect("a valid request")
}

fn id_value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).expect("a valid header value")
}

// ---------------------------------------------------------------------------------------------
// problem+json

fn members(json: &serde_json::Value) -> BTreeSet<String> {
    json.as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn json_bodies_keep_their_members_whatever_the_request_id() {
    let expected: BTreeSet<String> = [
        "type",
        "title",
        "status",
        "detail",
        "error_type",
        "retryable",
        "request_id",
    ]
    .map(String::from)
    .into();

    for id in HOSTILE_IDS {
        let (status, content_type, body) =
            generated(layer(), request_with_id("application/json", id_value(id))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(content_type, "application/problem+json");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{id:?}: body is not JSON ({e}): {body}"));
        assert_eq!(members(&json), expected, "{id:?}: {body}");
        assert_eq!(json["request_id"], *id, "the id comes back as a string");
        assert_eq!(json["status"], 502, "{id:?}");
        assert_eq!(json["retryable"], true, "{id:?}");
        // Even shown raw inside an HTML page, the JSON cannot open a tag.
        assert!(!body.contains('<') && !body.contains('>'), "{body}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Every element of a page in document order: its name and its attributes.
fn element_shape(page: &Html) -> Vec<(String, Vec<(String, String)>)> {
    page.root_element()
        .descendants()
        .filter_map(ElementRef::wrap)
        .map(|element| {
            let mut attrs: Vec<(String, String)> = element
                .value()
                .attrs()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            attrs.sort();
            (element.value().name().to_owned(), attrs)
        })
        .collect()
}

/// The text of the `<dd>` that follows the `<dt>` named `term`.
fn definition(page: &Html, term: &str) -> Option<String> {
    let dt = Selector::parse("dt").expect("a selector");
    let found = page
        .select(&dt)
        .find(|e| e.text().collect::<String>() == term)?;
    let dd = found.next_siblings().filter_map(ElementRef::wrap).next()?;
    assert_eq!(dd.value().name(), "dd");
    Some(dd.text().collect())
}

#[tokio::test]
async fn html_pages_gain_no_elements_from_a_request_id() {
    let (_, _, plain) = generated(layer(), request_with_id("text/html", id_value("req-1"))).await;
    let plain = Html::parse_document(&plain);
    let shape = element_shape(&plain);
    assert_eq!(definition(&plain, "Request ID").as_deref(), Some("req-1"));

    for id in HOSTILE_IDS {
        let (status, content_type, body) =
            generated(layer(), request_with_id("text/html", id_value(id))).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(content_type, "text/html; charset=utf-8");
        let page = Html::parse_document(&body);
        assert_eq!(
            element_shape(&page),
            shape,
            "{id:?} changed the page: {body}"
        );
        assert_eq!(
            definition(&page, "Request ID").as_deref(),
            Some(*id),
            "the id is shown as text, exactly"
        );
        let title = Selector::parse("title").unwrap();
        let title: String = page.select(&title).next().unwrap().text().collect();
        assert_eq!(title, "502 Bad Gateway");
    }
}

#[tokio::test]
async fn custom_templates_escape_in_attributes_and_json_too() {
    let page = Template::html(
        r#"<!DOCTYPE html><p><a title="{request_id}" href="/r/{request_id}" data-x='{request_id}'>{request_id}</a></p>"#,
    )
    .expect("a valid template");
    let json = Template::problem_json(
        r#"{{"id":"{request_id}","nested":{{"again":"{request_id}"}},"status":{status}}}"#,
    )
    .expect("a valid template");
    let custom = || layer().bodies(Bodies::new().template(page.clone()).template(json.clone()));
    let a = Selector::parse("a").unwrap();

    for id in HOSTILE_IDS {
        let (_, _, body) = generated(custom(), request_with_id("text/html", id_value(id))).await;
        let parsed = Html::parse_document(&body);
        let names: Vec<String> = element_shape(&parsed).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["html", "head", "body", "p", "a"], "{id:?}: {body}");
        let link = parsed.select(&a).next().expect("the link");
        assert_eq!(link.value().attr("title"), Some(*id), "{body}");
        assert_eq!(link.value().attr("href"), Some(format!("/r/{id}").as_str()));
        assert_eq!(link.value().attr("data-x"), Some(*id));
        assert_eq!(link.text().collect::<String>(), *id);

        let (_, _, body) =
            generated(custom(), request_with_id("application/json", id_value(id))).await;
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            members(&value),
            ["id", "nested", "status"].map(String::from).into()
        );
        assert_eq!(value["id"], *id);
        assert_eq!(
            members(&value["nested"]),
            ["again"].map(String::from).into()
        );
        assert_eq!(value["nested"]["again"], *id);
    }
}

// ---------------------------------------------------------------------------------------------
// Text

#[tokio::test]
async fn text_bodies_gain_no_lines_from_a_request_id() {
    let (_, _, plain) = generated(layer(), request_with_id("text/plain", id_value("req-1"))).await;
    for id in HOSTILE_IDS {
        let (_, content_type, body) =
            generated(layer(), request_with_id("text/plain", id_value(id))).await;
        assert_eq!(content_type, "text/plain; charset=utf-8");
        assert_eq!(body.lines().count(), plain.lines().count(), "{body}");
        assert_eq!(
            body.replace(id, "req-1"),
            plain,
            "only the id differs, written as it is"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Request ids that are dropped, and those that cannot exist

#[tokio::test]
async fn request_ids_that_are_not_printable_ascii_are_dropped() {
    let long = "a".repeat(201);
    let dropped: Vec<(&str, HeaderValue)> = vec![
        (
            "obs-text",
            HeaderValue::from_bytes(b"req-\xe2\x80\xa8-1").unwrap(),
        ),
        ("latin-1", HeaderValue::from_bytes(b"caf\xe9").unwrap()),
        ("a space", HeaderValue::from_static("req 1")),
        ("a tab", HeaderValue::from_static("req\t1")),
        ("empty", HeaderValue::from_static("")),
        ("201 characters", HeaderValue::from_str(&long).unwrap()),
    ];
    for accept in ["application/json", "text/html", "text/plain"] {
        let (_, _, without) = generated(
            layer(),
            Request::get("/orders")
                .header(header::ACCEPT, accept)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        for (what, id) in &dropped {
            let (_, _, body) = generated(layer(), request_with_id(accept, id.clone())).await;
            assert_eq!(
                body, without,
                "{accept}, {what}: the id is dropped, the body is the one without an id"
            );
        }
    }
    // The longest id shown is 200 characters.
    let longest = "b".repeat(200);
    let (_, _, body) = generated(layer(), request_with_id("text/plain", id_value(&longest))).await;
    assert!(body.contains(&format!("Request ID: {longest}\n")), "{body}");
}

#[test]
fn cr_lf_and_nul_cannot_be_in_a_header_value() {
    // What would split a header in two, or end the head, is refused when the value is made.
    for bad in [
        &b"a\r\nSet-Cookie: x=1"[..],
        b"a\nb",
        b"a\rb",
        b"a\0b",
        b"a\x7fb",
    ] {
        assert!(HeaderValue::from_bytes(bad).is_err(), "{bad:?}");
    }
    assert!(HeaderValue::from_str("a\r\nb").is_err());
}

#[tokio::test]
async fn header_lines_smuggled_in_a_request_id_are_refused_on_the_wire() {
    let server = serve_gateway(layer(), demo_upstream::closed_port()).await;
    for (what, id) in [
        ("a bare CR", "req-1\rset-cookie: session=stolen"),
        ("a NUL", "req-1\0x"),
    ] {
        let response = raw_exchange(server.addr, "GET", "/", &[("x-request-id", id)]).await;
        assert_eq!(response.status, 400, "{what}: hyper refuses the head");
        assert!(
            response.header("set-cookie").is_none(),
            "{what}: {response:?}"
        );
        let body = String::from_utf8_lossy(&response.body);
        assert!(!body.contains("session=stolen"), "{what}: {body}");
    }
    // An obs-fold continuation line is not a way to add a header either.
    let response = raw_exchange(
        server.addr,
        "GET",
        "/",
        &[("x-request-id", "req-1\r\n set-cookie: session=stolen")],
    )
    .await;
    assert_eq!(response.status, 400, "obs-fold is refused");
    assert!(response.header("set-cookie").is_none());
}

// ---------------------------------------------------------------------------------------------
// Paths, methods and the proxy name

#[tokio::test]
async fn paths_and_methods_are_never_reflected() {
    let hostile_paths = [
        "/%3Cscript%3Ealert(1)%3C/script%3E",
        "/%22%7D,%22injected%22:%7B%22",
        "/'onmouseover='alert(1)'",
        "/a?q=%3Cimg%20src=x%3E&r=%22%7D",
    ];
    let hostile_methods = ["X'OR'1", "GET<", "PURGE"];
    let mut tried = BTreeSet::new();
    for path in hostile_paths {
        for method in hostile_methods {
            let Ok(request) = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
            else {
                // http refuses it outright: nothing to reflect.
                continue;
            };
            tried.insert((method, path));
            for accept in ["application/json", "text/html", "text/plain"] {
                let request = Request::builder()
                    .method(request.method().clone())
                    .uri(request.uri().clone())
                    .header(header::ACCEPT, accept)
                    .body(Body::empty())
                    .unwrap();
                let (_, _, body) = generated(layer(), request).await;
                for piece in [
                    "script",
                    "injected",
                    "onmouseover",
                    "img",
                    "X'OR'1",
                    "PURGE",
                    "q=",
                ] {
                    assert!(
                        !body.contains(piece),
                        "{method} {path} ({accept}): body reflects {piece:?}: {body}"
                    );
                }
                if accept == "application/json" {
                    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert!(json.get("instance").is_none());
                    assert_eq!(members(&json).len(), 6, "{body}");
                }
            }
        }
    }
    // `GET<` is no method token; every path and the other two methods make requests.
    assert_eq!(tried.len(), hostile_paths.len() * 2, "{tried:?}");
}

#[tokio::test]
async fn a_proxy_name_cannot_carry_markup_and_its_own_characters_are_escaped() {
    // Markup, quotes and spaces are no part of a proxy name: refused when it is made.
    for hostile in [r#"edge <b>1</b>"#, r#"edge"1""#, "edge 1", "edge\r\nx: y"] {
        assert!(ProxyName::new(hostile).is_err(), "{hostile:?}");
    }
    // What a name may hold that HTML gives a meaning to is escaped in the page.
    let name = "edge&'co'";
    let layer = || GatewayErrorLayer::new().proxy_name(ProxyName::from_static(name));

    let response = call(
        refusing_gateway(layer()),
        Request::get("/")
            .header(header::ACCEPT, "text/html")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        response.headers()[&PROXY_STATUS],
        "edge&'co'; error=connection_refused",
        "a name that is a token is written bare"
    );
    let body = read_body(response.into_body()).await;
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains("edge&amp;&#39;co&#39;"), "{text}");
    let page = Html::parse_document(text);
    assert_eq!(definition(&page, "Gateway").as_deref(), Some(name));
}
