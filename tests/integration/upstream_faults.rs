//! Every upstream failure the layer classifies, made real on loopback, and what the client gets for it:
//! the RFC 9209 status and `Proxy-Status`, an uncacheable problem+json body with a correct length,
//! a truthful retry hint, and the `ProxyError` in the response extensions.

use std::error::Error;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_errors::TimeLimits;
use gateway_errors::retry::IDEMPOTENCY_KEY;
use gateway_errors::{ProxyError, ProxyErrorKind};
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::Timeout;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use crate::support::demo_upstream::{self, CUT_DECLARED, CUT_SENT};
use crate::support::{
    self, Expected, PROXY_NAME, assert_generated_headers, assert_problem, call, client_with,
    gateway, gateway_to, layer, raw_exchange, read_body, request, serve_gateway, start_upstream,
    within,
};

/// Upper bound for an answer that a short timeout produces: the timeout plus generous slack for a
/// loaded CI machine, far below what a hang would take.
const TIMEOUT_ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// A made-up name: the custom resolvers below answer for it, so no real DNS lookup happens.
const MADE_UP_UPSTREAM: &str = "upstream.invalid";

#[tokio::test]
async fn closed_port_is_502_connection_refused_and_retryable_even_for_post() {
    let gateway = gateway_to(layer(), demo_upstream::closed_port());
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionRefused,
        "edge-1; error=connection_refused",
        // Refused at connect: the request never left the gateway, so even a POST may be resent.
        true,
    );

    for method in ["GET", "POST"] {
        let response = call(gateway.clone(), request(method, "/orders", None)).await;
        assert_problem(response, &expected).await;
    }
}

#[tokio::test]
async fn slow_upstream_get_is_504_http_response_timeout_and_retryable() {
    let upstream = start_upstream().await;
    let timeout = Duration::from_millis(300);
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(timeout)),
        upstream.addr,
    );

    let started = Instant::now();
    let response = call(gateway, request("GET", "/slow", None)).await;
    let elapsed = started.elapsed();

    assert!(
        elapsed >= timeout,
        "answered before the timeout: {elapsed:?}"
    );
    assert!(elapsed < TIMEOUT_ANSWER_LIMIT, "answered late: {elapsed:?}");
    let expected = Expected::kind(
        ProxyErrorKind::HttpResponseTimeout,
        "edge-1; error=http_response_timeout",
        true,
    );
    let error = assert_problem(response, &expected).await;
    assert!(
        error.get("retry_after").is_none(),
        "no Retry-After configured"
    );
}

#[tokio::test]
async fn slow_upstream_post_is_504_and_not_retryable() {
    let upstream = start_upstream().await;
    let timeout = Duration::from_millis(300);
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(timeout)),
        upstream.addr,
    );

    let started = Instant::now();
    let response = call(gateway, request("POST", "/slow", None)).await;
    assert!(started.elapsed() < TIMEOUT_ANSWER_LIMIT, "answered late");

    // The POST reached the upstream and may have taken effect: resending it is not safe.
    let expected = Expected::kind(
        ProxyErrorKind::HttpResponseTimeout,
        "edge-1; error=http_response_timeout",
        false,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn slow_upstream_post_with_idempotency_key_is_retryable() {
    let upstream = start_upstream().await;
    let gateway = gateway_to(
        layer().time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300))),
        upstream.addr,
    );
    let mut post = request("POST", "/slow", None);
    post.headers_mut().insert(
        IDEMPOTENCY_KEY.clone(),
        http::HeaderValue::from_static("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
    );

    let response = call(gateway, post).await;

    let expected = Expected::kind(
        ProxyErrorKind::HttpResponseTimeout,
        "edge-1; error=http_response_timeout",
        true,
    );
    assert_problem(response, &expected).await;
}

/// The routes whose failure comes before any response head, and what each must be called.
async fn assert_fault_route(path: &str, kind: ProxyErrorKind) {
    let upstream = start_upstream().await;
    let gateway = gateway_to(layer(), upstream.addr);
    let proxy_status = format!("edge-1; error={}", kind.token());

    // GET: idempotent, retryable whatever happened.
    let response = call(gateway.clone(), request("GET", path, None)).await;
    assert_problem(response, &Expected::kind(kind, &proxy_status, true)).await;

    // POST: these failures come after the request was written, so a retry is not safe.
    let response = call(gateway, request("POST", path, None)).await;
    assert_problem(response, &Expected::kind(kind, &proxy_status, false)).await;
}

#[tokio::test]
async fn garbage_instead_of_http_is_502_http_protocol_error() {
    assert_fault_route("/garbage", ProxyErrorKind::HttpProtocolError).await;
}

#[tokio::test]
async fn close_before_head_is_502_connection_terminated() {
    assert_fault_route("/close", ProxyErrorKind::ConnectionTerminated).await;
}

#[tokio::test]
async fn reset_before_head_is_502_connection_terminated() {
    assert_fault_route("/reset", ProxyErrorKind::ConnectionTerminated).await;
}

#[tokio::test]
async fn huge_response_head_is_502_header_section_size() {
    assert_fault_route("/huge-head", ProxyErrorKind::HttpResponseHeaderSectionSize).await;
}

#[tokio::test]
async fn body_cut_after_head_passes_the_head_then_fails_the_body() {
    let upstream = start_upstream().await;
    let gateway = gateway_to(layer(), upstream.addr);

    let response = call(gateway, request("GET", "/cut", None)).await;

    // The head was already the origin's: it passes through, with no error markers.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        CUT_DECLARED.to_string().as_str()
    );
    assert!(response.headers().get("proxy-status").is_none());
    assert!(response.extensions().get::<ProxyError>().is_none());
    let outcome = within("reading /cut", response.into_body().collect()).await;
    match outcome {
        Err(_) => {}
        Ok(collected) => panic!(
            "a body cut at {CUT_SENT} of {CUT_DECLARED} bytes must end in an error, \
             not a clean {}-byte body",
            collected.to_bytes().len()
        ),
    }
}

#[tokio::test]
async fn body_cut_after_head_breaks_the_client_connection() {
    let upstream = start_upstream().await;
    let server = serve_gateway(layer(), upstream.addr).await;

    let response = raw_exchange(server.addr, "GET", "/cut", &[]).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.content_length(), Some(CUT_DECLARED));
    assert!(
        response.body.len() < CUT_DECLARED,
        "the client must see fewer bytes than Content-Length (got {}), so it knows the body is \
         incomplete",
        response.body.len()
    );
    assert!(
        response.body.len() <= CUT_SENT,
        "no more than the origin sent"
    );
}

/// A gateway whose client resolves every name with `resolver`, in front of a made-up name.
fn gateway_with_resolver<R>(resolver: R) -> impl support::GatewayService
where
    R: tower::Service<Name, Error: Into<Box<dyn Error + Send + Sync>>, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static,
    R::Response: Iterator<Item = SocketAddr>,
{
    let connector = HttpConnector::new_with_resolver(resolver);
    gateway(layer(), client_with(connector), MADE_UP_UPSTREAM)
}

#[tokio::test]
async fn resolver_failure_is_502_dns_error() {
    let resolver = service_fn(|_name: Name| async {
        Err::<std::vec::IntoIter<SocketAddr>, _>(io::Error::new(
            io::ErrorKind::NotFound,
            "no such host",
        ))
    });
    let gateway = gateway_with_resolver(resolver);

    let response = call(gateway, request("POST", "/orders", None)).await;

    // Nothing was sent: even a POST may be resent.
    let expected = Expected::kind(ProxyErrorKind::DnsError, "edge-1; error=dns_error", true);
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn resolver_that_never_answers_is_504_dns_timeout() {
    let stalled = service_fn(|_name: Name| {
        std::future::pending::<Result<std::vec::IntoIter<SocketAddr>, io::Error>>()
    });
    let gateway = gateway_with_resolver(Timeout::new(stalled, Duration::from_millis(200)));

    let started = Instant::now();
    let response = call(gateway, request("GET", "/", None)).await;
    assert!(started.elapsed() < TIMEOUT_ANSWER_LIMIT, "answered late");

    let expected = Expected::kind(
        ProxyErrorKind::DnsTimeout,
        "edge-1; error=dns_timeout",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn resolver_timed_out_error_is_504_dns_timeout() {
    let resolver = service_fn(|_name: Name| async {
        Err::<std::vec::IntoIter<SocketAddr>, _>(io::Error::from(io::ErrorKind::TimedOut))
    });
    let gateway = gateway_with_resolver(resolver);

    let response = call(gateway, request("POST", "/", None)).await;

    let expected = Expected::kind(
        ProxyErrorKind::DnsTimeout,
        "edge-1; error=dns_timeout",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn connect_that_never_completes_is_504_connection_timeout() {
    let stalled =
        service_fn(|_uri: Uri| std::future::pending::<Result<TokioIo<TcpStream>, io::Error>>());
    // hyper-util wants an `Unpin` connect future; boxing gives one.
    let connector = BoxCloneSyncService::new(Timeout::new(stalled, Duration::from_millis(200)));
    let gateway = gateway(layer(), client_with(connector), MADE_UP_UPSTREAM);

    let started = Instant::now();
    let response = call(gateway, request("POST", "/orders", None)).await;
    assert!(started.elapsed() < TIMEOUT_ANSWER_LIMIT, "answered late");

    // The connection was never made: the POST was not sent and may be resent.
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionTimeout,
        "edge-1; error=connection_timeout",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn full_concurrency_limit_is_503_connection_limit_reached() {
    let upstream = start_upstream().await;
    let authority = upstream.addr.to_string();
    let (reached_upstream, mut reached) = tokio::sync::mpsc::unbounded_channel();
    let gateway = ServiceBuilder::new()
        .layer(layer())
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(1))
        // Runs only once the concurrency slot is taken: the signal that the slot is occupied.
        .map_request(move |request| {
            let _ = reached_upstream.send(());
            support::to_upstream(&authority, request)
        })
        .service(support::upstream_client());

    let stalled = tokio::spawn(gateway.clone().oneshot(request("GET", "/slow", None)));
    within("the stalled request taking the slot", reached.recv())
        .await
        .expect("the stalled request reached the client");

    let response = call(gateway, request("POST", "/orders", None)).await;
    stalled.abort();

    // Shed before anything was sent: safe to retry for any method.
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionLimitReached,
        "edge-1; error=connection_limit_reached",
        true,
    );
    assert_problem(response, &expected).await;
}

/// An error of the application's own, which no classifier knows.
#[derive(Debug)]
struct UpstreamExploded;

impl fmt::Display for UpstreamExploded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("secret-internal-detail: upstream pool exploded")
    }
}

impl Error for UpstreamExploded {}

#[tokio::test]
async fn unrecognised_error_is_502_without_error_type() {
    let failing = service_fn(|_request: Request<crate::support::Upload>| async {
        Err::<Response<Full<Bytes>>, _>(UpstreamExploded)
    });
    let gateway = ServiceBuilder::new().layer(layer()).service(failing);

    let response = call(gateway.clone(), request("GET", "/", None)).await;
    let expected = Expected {
        status: StatusCode::BAD_GATEWAY,
        proxy_status: PROXY_NAME,
        kind: None,
        // The layer cannot know whether the request was sent: only an idempotent method may retry.
        retryable: true,
    };
    let json = assert_problem(response, &expected).await;
    assert!(
        !json.to_string().contains("secret-internal-detail"),
        "the error's text must not reach the client: {json}"
    );

    let response = call(gateway, request("POST", "/", None)).await;
    let expected = Expected {
        retryable: false,
        ..expected
    };
    assert_problem(response, &expected).await;
}

/// Wraps an error the default classifier would recognise (a refused connection).
#[derive(Debug)]
struct CircuitOpen(io::Error);

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit open")
    }
}

impl Error for CircuitOpen {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn user_classifier_runs_before_the_default_one() {
    let failing = service_fn(|_request: Request<crate::support::Upload>| async {
        Err::<Response<Full<Bytes>>, _>(CircuitOpen(io::ErrorKind::ConnectionRefused.into()))
    });
    let classified = layer().classifier(|error: &(dyn Error + 'static)| {
        error
            .is::<CircuitOpen>()
            .then_some(ProxyErrorKind::DestinationUnavailable)
    });
    let gateway = ServiceBuilder::new().layer(classified).service(failing);

    let response = call(gateway, request("POST", "/", None)).await;

    // Alone, the default classifier would find the refused connection in the source chain.
    let expected = Expected::kind(
        ProxyErrorKind::DestinationUnavailable,
        "edge-1; error=destination_unavailable",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn head_on_failure_has_the_get_headers_and_no_body() {
    let gateway = gateway_to(layer(), demo_upstream::closed_port());

    let get = call(gateway.clone(), request("GET", "/", None)).await;
    let (get, get_body) = get.into_parts();
    let get_body = read_body(get_body).await;
    let head = call(gateway, request("HEAD", "/", None)).await;
    let (head, head_body) = head.into_parts();
    let head_body = read_body(head_body).await;

    assert!(head_body.is_empty(), "HEAD got a body: {head_body:?}");
    assert_eq!(head.status, get.status);
    assert_eq!(head.headers, get.headers, "HEAD states the GET headers");
    assert_eq!(
        head.headers[header::CONTENT_LENGTH],
        get_body.len().to_string().as_str()
    );
    let error = head.extensions.get::<ProxyError>().expect("ProxyError");
    assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionRefused));
}

#[tokio::test]
async fn head_on_failure_over_a_socket_has_the_get_headers_and_no_body() {
    let server = serve_gateway(layer(), demo_upstream::closed_port()).await;

    let get = raw_exchange(server.addr, "GET", "/", &[]).await;
    let head = raw_exchange(server.addr, "HEAD", "/", &[]).await;

    assert_eq!(get.status, 502);
    assert_eq!(get.content_length(), Some(get.body.len()));
    assert_eq!(head.status, 502);
    assert!(head.body.is_empty(), "HEAD got body bytes: {:?}", head.body);
    assert!(!head.ended_with_error);
    assert_eq!(
        head.content_length(),
        Some(get.body.len()),
        "HEAD's Content-Length states the GET body's length"
    );
    for name in ["proxy-status", "content-type", "cache-control", "vary"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(
        head.header("proxy-status"),
        Some("edge-1; error=connection_refused")
    );
}

/// A refused connection asked for in `accept`: returns the content type and the body as text.
async fn refused_in_format(accept: &str) -> (String, String) {
    let gateway = gateway_to(layer(), demo_upstream::closed_port());
    let response = call(gateway, request("GET", "/", Some(accept))).await;
    let (parts, body) = response.into_parts();
    let body = read_body(body).await;
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionRefused,
        "edge-1; error=connection_refused",
        true,
    );
    assert_eq!(parts.status, expected.status);
    assert_generated_headers(&parts.headers, &expected, body.len());
    let content_type = parts.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let body = String::from_utf8(body.to_vec()).expect("the body is UTF-8");
    (content_type, body)
}

#[tokio::test]
async fn accept_html_gets_an_html_page() {
    let (content_type, body) = refused_in_format("text/html,application/xhtml+xml,*/*;q=0.8").await;

    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
    assert!(body.contains("<title>502 Bad Gateway</title>"), "{body}");
    assert!(
        body.contains(ProxyErrorKind::ConnectionRefused.detail()),
        "{body}"
    );
    assert!(body.contains("connection_refused"), "{body}");
}

#[tokio::test]
async fn accept_text_gets_plain_text() {
    let (content_type, body) = refused_in_format("text/plain").await;

    assert_eq!(content_type, "text/plain; charset=utf-8");
    assert!(body.starts_with("502 Bad Gateway\n"), "{body}");
    assert!(
        body.contains(ProxyErrorKind::ConnectionRefused.detail()),
        "{body}"
    );
    assert!(body.contains("Error type: connection_refused\n"), "{body}");
    assert!(!body.contains('{') && !body.contains('<'), "{body}");
}

#[tokio::test]
async fn refused_connection_reveals_nothing_about_the_upstream() {
    let upstream = demo_upstream::closed_port();
    let port = upstream.port().to_string();
    let gateway = gateway_to(layer(), upstream);

    for accept in ["application/json", "text/html", "text/plain"] {
        let response = call(gateway.clone(), request("GET", "/", Some(accept))).await;
        let (parts, body) = response.into_parts();
        let body = String::from_utf8(read_body(body).await.to_vec()).expect("UTF-8");
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);

        let mut seen = vec![("body".to_owned(), body.clone())];
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            seen.push((name.to_string(), value));
        }
        for (place, text) in &seen {
            for secret in ["127.0.0.1", "os error", "Connection refused", "tcp connect"] {
                assert!(
                    !text.contains(secret),
                    "{accept}: {place} reveals {secret:?}: {text}"
                );
            }
            assert!(
                !text.contains(&format!(":{port}")),
                "{accept}: {place} reveals the port: {text}"
            );
        }
        // The HTML page holds colour codes whose digits could match a port by chance.
        if accept != "text/html" {
            assert!(
                !body.contains(&port),
                "{accept}: body reveals the port: {body}"
            );
        }
    }
}
