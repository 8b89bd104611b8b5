//! Retry hints and the retry policy, against real upstreams on loopback.
//!
//! The hint (is a retry safe, and when) reaches the client three ways: the `retryable` member of
//! the body, the `ProxyError` in the response's extensions, and `Retry-After`. `RetryPolicy` acts on
//! the extension only. Attempts are counted twice: by an inner service (what the policy sent) and,
//! where an upstream is reachable, by a relay that counts the connections the upstream accepted.

use crate::support::demo_upstream;
use gateway_errors::body::UploadBody;
use gateway_errors::retry::RetryHints;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gateway_errors::body::GatewayBody;
use gateway_errors::retry::{RetryAfter, RetryFacts, RetryLayer, RetryPolicy, TryCloneBody};
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, RequestSent};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tower::retry::budget::TpsBudget;
use tower::{ServiceBuilder, ServiceExt};

/// The longest any single step of a test may take.
const STEP: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: still waiting after {STEP:?}"),
    }
}

/// A TCP relay in front of an upstream that counts the connections it accepts: how many times the
/// upstream was actually contacted.
struct Relay {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    async fn to(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let accepts = Arc::new(AtomicUsize::new(0));
        let counted = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            addr,
            accepts,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// A hyper-util client behind `layer` (and `policy`, if any), pointed at `upstream`, with a
/// counter of the attempts that reached the client.
struct Gateway<B> {
    service: tower::util::BoxCloneService<Request<B>, Response<GatewayBody<Incoming>>, Infallible>,
    calls: Arc<AtomicUsize>,
}

fn gateway<B>(
    upstream: SocketAddr,
    layer: GatewayErrorLayer,
    policy: Option<RetryPolicy>,
) -> Gateway<B>
where
    B: http_body::Body<Data = Bytes> + TryCloneBody + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<UploadBody<B>>();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let inner = ServiceBuilder::new()
        .layer(layer)
        .map_request(move |mut request: Request<UploadBody<B>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = format!("http://{upstream}{path}")
                .parse::<Uri>()
                .expect("upstream uri");
            request
        })
        .service(client);
    let service = match policy {
        Some(policy) => ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .service(inner)
            .boxed_clone(),
        None => inner.boxed_clone(),
    };
    Gateway { service, calls }
}

impl<B: Send + 'static> Gateway<B> {
    async fn send(&self, request: Request<B>) -> Response<GatewayBody<Incoming>> {
        within("request", self.service.clone().oneshot(request))
            .await
            .unwrap_or_else(|never| match never {})
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Tiny waits, so that retries cost milliseconds.
fn quick_policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(3)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(50))
}

fn request(method: Method, path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::ACCEPT, "application/problem+json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid request")
}

fn proxy_error<B>(response: &Response<B>) -> &ProxyError {
    response
        .extensions()
        .get::<ProxyError>()
        .expect("a generated error carries its ProxyError")
}

async fn json_body(response: Response<GatewayBody<Incoming>>) -> serde_json::Value {
    let bytes = within("body", response.into_body().collect())
        .await
        .expect("generated body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("problem+json body")
}

// ---------------------------------------------------------------------------------------------
// The policy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_post_that_may_have_reached_the_origin_is_never_retried() {
    let demo = demo_upstream::spawn().await.expect("demo upstream");
    for route in ["/close", "/reset"] {
        let relay = Relay::to(demo.addr).await;
        let gw = gateway(relay.addr, GatewayErrorLayer::new(), Some(quick_policy()));

        let response = gw
            .send(request(Method::POST, route, "{\"order\":42}"))
            .await;

        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{route}");
        let error = proxy_error(&response);
        assert_eq!(error.request_sent(), RequestSent::MaybeSent, "{route}");
        assert!(!error.is_retryable(), "{route}");
        assert_eq!(gw.calls(), 1, "{route}: attempts sent");
        assert_eq!(relay.accepts(), 1, "{route}: connections the upstream saw");
        assert_eq!(json_body(response).await["retryable"], false, "{route}");
    }
}

#[tokio::test]
async fn a_connect_refused_post_is_retried_up_to_the_limit() {
    let closed = demo_upstream::closed_port();
    let gw = gateway(
        closed,
        GatewayErrorLayer::new(),
        Some(quick_policy().max_attempts(4)),
    );

    let response = gw
        .send(request(Method::POST, "/orders", "{\"order\":42}"))
        .await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = proxy_error(&response);
    assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionRefused));
    assert_eq!(error.request_sent(), RequestSent::NotSent);
    assert!(error.is_retryable());
    assert_eq!(gw.calls(), 4);
}

#[tokio::test]
async fn a_get_that_may_have_reached_the_origin_is_retried() {
    let demo = demo_upstream::spawn().await.expect("demo upstream");
    let relay = Relay::to(demo.addr).await;
    let gw = gateway(relay.addr, GatewayErrorLayer::new(), Some(quick_policy()));

    let response = gw.send(request(Method::GET, "/close", "")).await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = proxy_error(&response);
    assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionTerminated));
    assert_eq!(error.request_sent(), RequestSent::MaybeSent);
    assert!(error.is_retryable());
    assert_eq!(gw.calls(), 3);
    assert_eq!(relay.accepts(), 3);
}

#[tokio::test]
async fn an_idempotency_key_makes_a_post_retryable_but_only_a_valid_one() {
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    let relay = Relay::to(demo.addr).await;
    let gw = gateway(relay.addr, GatewayErrorLayer::new(), Some(quick_policy()));
    let mut keyed = request(Method::POST, "/close", "{\"order\":42}");
    keyed.headers_mut().insert(
        "idempotency-key",
        HeaderValue::from_static("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
    );
    let response = gw.send(keyed).await;
    assert!(proxy_error(&response).is_retryable());
    assert_eq!(gw.calls(), 3);
    assert_eq!(relay.accepts(), 3);

    // Not a Structured Field string (no quotes): no key, no retry.
    let relay = Relay::to(demo.addr).await;
    let gw = gateway(relay.addr, GatewayErrorLayer::new(), Some(quick_policy()));
    let mut bare = request(Method::POST, "/close", "{\"order\":42}");
    bare.headers_mut().insert(
        "idempotency-key",
        HeaderValue::from_static("8e03978e-40d5-43e8-bc93-6894a57f9324"),
    );
    let response = gw.send(bare).await;
    assert!(!proxy_error(&response).is_retryable());
    assert_eq!(gw.calls(), 1);
    assert_eq!(relay.accepts(), 1);
}

#[tokio::test]
async fn a_request_whose_body_cannot_be_replayed_is_sent_once() {
    let closed = demo_upstream::closed_port();

    // The hint says safe (nothing was sent), but an axum body with content may be a stream that
    // is gone once read: the policy does not copy it, so it cannot retry.
    let gw = gateway::<axum::body::Body>(closed, GatewayErrorLayer::new(), Some(quick_policy()));
    let streamed = Request::post("/upload")
        .body(axum::body::Body::from("chunk of an upload"))
        .expect("valid request");
    let response = gw.send(streamed).await;
    assert!(proxy_error(&response).is_retryable());
    assert_eq!(gw.calls(), 1);

    // The same body type, empty (a GET from an axum router), is replayed.
    let gw = gateway::<axum::body::Body>(closed, GatewayErrorLayer::new(), Some(quick_policy()));
    let empty = Request::get("/items")
        .body(axum::body::Body::empty())
        .expect("valid request");
    let response = gw.send(empty).await;
    assert!(proxy_error(&response).is_retryable());
    assert_eq!(gw.calls(), 3);
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_means_no_retry() {
    let closed = demo_upstream::closed_port();
    let layer = GatewayErrorLayer::new().retry_hints(
        RetryHints::new()
            .retry_after_for_kind(ProxyErrorKind::ConnectionRefused, Duration::from_secs(30)),
    );
    let gw = gateway(closed, layer, Some(quick_policy()));

    let response = gw.send(request(Method::GET, "/items", "")).await;

    assert!(proxy_error(&response).is_retryable());
    assert_eq!(response.headers()[header::RETRY_AFTER], "30");
    assert_eq!(gw.calls(), 1);
}

#[tokio::test]
async fn a_retry_after_within_the_cap_is_waited_for() {
    let closed = demo_upstream::closed_port();
    // 30 ms: longer than the 1 ms backoff, shorter than the 50 ms cap.
    let layer = GatewayErrorLayer::new().retry_hints(
        RetryHints::new()
            .retry_after_for_kind(ProxyErrorKind::ConnectionRefused, Duration::from_millis(30)),
    );
    let gw = gateway(closed, layer, Some(quick_policy()));

    let started = Instant::now();
    let response = gw.send(request(Method::GET, "/items", "")).await;
    let elapsed = started.elapsed();

    assert_eq!(gw.calls(), 3);
    // Two waits of at least Retry-After each.
    assert!(
        elapsed >= Duration::from_millis(60),
        "waited only {elapsed:?}"
    );
    // The header says whole seconds, rounded up.
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn a_spent_budget_stops_retries() {
    let closed = demo_upstream::closed_port();
    // No share of traffic, and a reserve of exactly one retry for the next second.
    let budget = TpsBudget::new(Duration::from_secs(1), 1, 0.0);
    let policy = quick_policy().max_attempts(5).budget(budget);
    let gw = gateway(closed, GatewayErrorLayer::new(), Some(policy));

    // The first request spends the reserve on its one retry.
    let response = gw.send(request(Method::POST, "/orders", "{}")).await;
    assert!(proxy_error(&response).is_retryable());
    assert_eq!(gw.calls(), 2);

    // The second is sent once: the budget is shared by every clone of the policy.
    let response = gw.send(request(Method::POST, "/orders", "{}")).await;
    assert!(proxy_error(&response).is_retryable());
    assert_eq!(gw.calls(), 3);
}

#[tokio::test]
async fn an_origin_error_is_passed_on_not_retried() {
    let demo = demo_upstream::spawn().await.expect("demo upstream");
    let relay = Relay::to(demo.addr).await;
    let gw = gateway(relay.addr, GatewayErrorLayer::new(), Some(quick_policy()));

    let response = gw.send(request(Method::GET, "/origin-503", "")).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.extensions().get::<ProxyError>().is_none());
    assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    assert_eq!(gw.calls(), 1);
    assert_eq!(relay.accepts(), 1);
}

// ---------------------------------------------------------------------------------------------
// The hint, as every consumer sees it
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_hint_is_the_same_in_the_body_and_the_extension() {
    let demo = demo_upstream::spawn().await.expect("demo upstream");
    let closed = demo_upstream::closed_port();
    let cases = [
        (closed, Method::POST, "/orders", true, RequestSent::NotSent),
        (
            demo.addr,
            Method::POST,
            "/close",
            false,
            RequestSent::MaybeSent,
        ),
        (
            demo.addr,
            Method::PATCH,
            "/close",
            false,
            RequestSent::MaybeSent,
        ),
        (
            demo.addr,
            Method::GET,
            "/close",
            true,
            RequestSent::MaybeSent,
        ),
        (
            demo.addr,
            Method::PUT,
            "/close",
            true,
            RequestSent::MaybeSent,
        ),
        (
            demo.addr,
            Method::DELETE,
            "/close",
            true,
            RequestSent::MaybeSent,
        ),
    ];
    for (upstream, method, path, retryable, request_sent) in cases {
        let gw = gateway(upstream, GatewayErrorLayer::new(), None);
        let response = gw.send(request(method.clone(), path, "x")).await;
        let error = proxy_error(&response);
        assert_eq!(error.is_retryable(), retryable, "{method} {path}");
        assert_eq!(error.request_sent(), request_sent, "{method} {path}");
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let body = json_body(response).await;
        assert_eq!(body["retryable"], retryable, "{method} {path}: {body}");
        assert!(body.get("retry_after").is_none(), "{body}");
    }
}

#[tokio::test]
async fn the_method_set_and_the_rule_can_be_replaced() {
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    // PUT is no longer taken as idempotent.
    let layer = GatewayErrorLayer::new()
        .retry_hints(RetryHints::new().idempotent_methods([Method::GET, Method::HEAD]));
    let gw = gateway(demo.addr, layer, None);
    let put = gw.send(request(Method::PUT, "/close", "x")).await;
    assert!(!proxy_error(&put).is_retryable());
    let get = gw.send(request(Method::GET, "/close", "")).await;
    assert!(proxy_error(&get).is_retryable());

    // Stricter: only what never left the gateway.
    let layer = GatewayErrorLayer::new().retry_hints(
        RetryHints::new().rule(|facts: &RetryFacts| facts.request_sent == RequestSent::NotSent),
    );
    let gw = gateway(demo.addr, layer, Some(quick_policy()));
    let get = gw.send(request(Method::GET, "/close", "")).await;
    assert!(!proxy_error(&get).is_retryable());
    assert_eq!(gw.calls(), 1, "the policy follows the replaced rule");
    assert_eq!(json_body(get).await["retryable"], false);
}

#[tokio::test]
async fn retry_after_in_seconds_reaches_header_body_and_extension() {
    let closed = demo_upstream::closed_port();
    let layer = GatewayErrorLayer::new().retry_hints(
        RetryHints::new().retry_after_for_status(StatusCode::BAD_GATEWAY, Duration::from_secs(5)),
    );
    let gw = gateway(closed, layer, None);

    let response = gw.send(request(Method::GET, "/items", "")).await;

    assert_eq!(response.headers()[header::RETRY_AFTER], "5");
    assert_eq!(
        proxy_error(&response).retry_after(),
        Some(RetryAfter::Delay(Duration::from_secs(5)))
    );
    assert_eq!(json_body(response).await["retry_after"], 5);
}

#[tokio::test]
async fn retry_after_as_an_http_date() {
    let closed = demo_upstream::closed_port();
    let at = UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100-01-01T00:00:00Z
    let layer = GatewayErrorLayer::new()
        // The kind's setting wins over the status's.
        .retry_hints(
            RetryHints::new()
                .retry_after_for_status(StatusCode::BAD_GATEWAY, Duration::from_secs(5))
                .retry_after_for_kind(ProxyErrorKind::ConnectionRefused, at),
        );
    let gw = gateway(closed, layer, None);

    let response = gw.send(request(Method::GET, "/items", "")).await;

    let value = &response.headers()[header::RETRY_AFTER];
    assert_eq!(value, "Fri, 01 Jan 2100 00:00:00 GMT");
    assert_eq!(
        RetryAfter::parse(value.as_bytes()),
        Some(RetryAfter::At(at))
    );
    assert_eq!(
        proxy_error(&response).retry_after(),
        Some(RetryAfter::At(at))
    );
    // The body counts the seconds from now.
    let seconds = json_body(response).await["retry_after"]
        .as_u64()
        .expect("retry_after in seconds");
    let expected = at.duration_since(SystemTime::now()).unwrap().as_secs();
    assert!(seconds.abs_diff(expected) <= 2, "{seconds} vs {expected}");
}

#[tokio::test]
async fn an_origins_retry_after_is_always_preserved() {
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    // Forwarded untouched, even with a Retry-After configured for 503.
    let layer = GatewayErrorLayer::new().retry_hints(
        RetryHints::new()
            .retry_after_for_status(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(1)),
    );
    let gw = gateway(demo.addr, layer.clone(), None);
    let response = gw.send(request(Method::GET, "/origin-503", "")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "7");

    // Body replaced by a generated one: the origin's Retry-After is still the one sent, and the
    // generated body states the same delay.
    let gw = gateway(
        demo.addr,
        layer.failure_statuses([StatusCode::from_u16(503).unwrap()]),
        None,
    );
    let response = gw.send(request(Method::GET, "/origin-503", "")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response
            .headers()
            .get_all(header::RETRY_AFTER)
            .iter()
            .collect::<Vec<_>>(),
        ["7"]
    );
    let body = json_body(response).await;
    assert_eq!(body["status"], 503);
    assert_eq!(body["retry_after"], 7, "{body}");
}
