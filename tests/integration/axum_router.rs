//! The layer in an axum app: around a `Router` whose handlers return `ProxyError`, around a
//! hand-written proxy handler, nested, as the router's fallback service, and intercepting the
//! origin's own error bodies.

use std::error::Error;
use std::fmt;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::{any, get};
use bytes::Bytes;
use gateway_errors::headers::PROXY_STATUS;
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, ProxyName};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::{ServiceBuilder, service_fn};

use crate::support::demo_upstream::{
    self, OK_BODY, ORIGIN_500_BODY, ORIGIN_502_BODY, ORIGIN_503_BODY,
};
use crate::support::{
    Expected, assert_generated_headers, assert_problem, assert_problem_body, call, gateway_to,
    layer, raw_exchange, read_body, request, serve_router, start_upstream, statuses, to_upstream,
};

fn destination_unavailable() -> Expected<'static> {
    Expected::kind(
        ProxyErrorKind::DestinationUnavailable,
        "edge-1; error=destination_unavailable",
        true,
    )
}

/// A handler that knows the upstream is down (an open circuit breaker, failed health checks).
async fn upstream_marked_down() -> Result<String, ProxyError> {
    Err(ProxyError::new(ProxyErrorKind::DestinationUnavailable))
}

#[derive(Debug)]
struct CircuitOpen;

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit open")
    }
}

impl Error for CircuitOpen {}

#[tokio::test]
async fn handler_proxy_error_renders_exactly_like_an_inner_service_error() {
    let app = Router::new()
        .route("/orders", any(upstream_marked_down))
        .layer(layer());
    let failing = service_fn(|_request: http::Request<crate::support::Upload>| async {
        Err::<Response<Full<Bytes>>, _>(CircuitOpen)
    });
    let service = ServiceBuilder::new()
        .layer(layer().classifier(|error: &(dyn Error + 'static)| {
            error
                .is::<CircuitOpen>()
                .then_some(ProxyErrorKind::DestinationUnavailable)
        }))
        .service(failing);

    let from_handler = call(app, request("POST", "/orders", None)).await;
    let from_service = call(service, request("POST", "/orders", None)).await;

    let (handler_parts, handler_body) = from_handler.into_parts();
    let (service_parts, service_body) = from_service.into_parts();
    let handler_body = read_body(handler_body).await;
    let service_body = read_body(service_body).await;
    assert_eq!(handler_parts.status, service_parts.status);
    assert_eq!(handler_parts.headers, service_parts.headers);
    assert_eq!(handler_body, service_body);

    let handler_response = Response::from_parts(handler_parts, Full::new(handler_body));
    assert_problem(handler_response, &destination_unavailable()).await;
}

/// A handler that returns `impl IntoResponse`: `ProxyError::into_response` is axum's, with
/// nothing of the crate's own to shadow it.
async fn impl_into_response(down: bool) -> impl axum::response::IntoResponse {
    use axum::response::IntoResponse;
    if down {
        ProxyError::new(ProxyErrorKind::DestinationUnavailable).into_response()
    } else {
        "up".into_response()
    }
}

#[tokio::test]
async fn a_handler_returning_impl_into_response_can_answer_with_a_proxy_error() {
    let app = Router::new()
        .route("/down", any(|| impl_into_response(true)))
        .route("/up", any(|| impl_into_response(false)))
        .layer(layer());
    let down = call(app.clone(), request("GET", "/down", None)).await;
    assert_problem(down, &destination_unavailable()).await;
    let up = call(app, request("GET", "/up", None)).await;
    assert_eq!(up.status(), StatusCode::OK);
}

#[derive(Clone)]
struct ByHand {
    client: Client<HttpConnector, Body>,
    upstream: String,
}

/// Proxies by hand, as in axum's reverse-proxy example, but maps failures to `ProxyError`.
async fn proxy_by_hand(
    State(state): State<ByHand>,
    request: Request,
) -> Result<Response<Incoming>, ProxyError> {
    let request = to_upstream(&state.upstream, request);
    state
        .client
        .request(request)
        .await
        .map_err(ProxyError::from_error)
}

#[tokio::test]
async fn handler_proxying_by_hand_gets_connection_refused_for_a_closed_port() {
    let state = ByHand {
        // The handler sends axum's own body: the layer is around the router, not the client.
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        upstream: demo_upstream::closed_port().to_string(),
    };
    let app = Router::new()
        .route("/orders", any(proxy_by_hand))
        .with_state(state)
        .layer(layer());

    let response = call(app, request("POST", "/orders", None)).await;

    let expected = Expected::kind(
        ProxyErrorKind::ConnectionRefused,
        "edge-1; error=connection_refused",
        true,
    );
    assert_problem(response, &expected).await;
}

/// Every `Proxy-Status` field line, split into members.
fn proxy_status_members(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(&PROXY_STATUS)
        .iter()
        .flat_map(|value| value.to_str().expect("ASCII").split(','))
        .map(|member| member.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn nested_layers_around_a_handler_render_once() {
    let app = Router::new()
        .route("/orders", get(upstream_marked_down))
        .layer(layer())
        .layer(GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-outer")));

    let response = call(app, request("GET", "/orders", None)).await;

    assert_eq!(
        proxy_status_members(response.headers()),
        ["edge-1; error=destination_unavailable"]
    );
    assert_problem(response, &destination_unavailable()).await;
}

#[tokio::test]
async fn nested_layers_around_a_gateway_render_once() {
    let gateway = gateway_to(layer(), demo_upstream::closed_port());
    let app = Router::new()
        .route_service("/api/{*rest}", gateway)
        .layer(GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-outer")));

    let response = call(app, request("GET", "/api/orders", None)).await;

    assert_eq!(
        proxy_status_members(response.headers()),
        ["edge-1; error=connection_refused"]
    );
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionRefused,
        "edge-1; error=connection_refused",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn outer_intercepting_layer_leaves_an_inner_generated_error_alone() {
    // The inner layer already made this 502; to the outer one it is not an origin error.
    let gateway = gateway_to(layer(), demo_upstream::closed_port());
    let app = Router::new().route_service("/api/{*rest}", gateway).layer(
        GatewayErrorLayer::new()
            .proxy_name(ProxyName::from_static("edge-outer"))
            .failure_statuses(statuses(500..=599)),
    );

    let response = call(app, request("GET", "/api/orders", None)).await;

    assert_eq!(
        proxy_status_members(response.headers()),
        ["edge-1; error=connection_refused"],
        "BUG: an intercepting outer layer rendered the inner layer's error a second time \
         (its ProxyError and error_type are lost)"
    );
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionRefused,
        "edge-1; error=connection_refused",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn fallback_service_gateway_serves_over_a_real_socket() {
    let upstream = start_upstream().await;
    let app = Router::new()
        .route("/health", get(|| async { "up" }))
        .fallback_service(gateway_to(layer(), upstream.addr));
    let server = serve_router(app).await;

    let health = raw_exchange(server.addr, "GET", "/health", &[]).await;
    assert_eq!((health.status, health.body.as_slice()), (200, &b"up"[..]));

    let ok = raw_exchange(server.addr, "GET", "/ok", &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, OK_BODY.as_bytes());
    assert_eq!(ok.header("proxy-status"), None);

    let failed = raw_exchange(server.addr, "GET", "/garbage", &[]).await;
    let expected = Expected::kind(
        ProxyErrorKind::HttpProtocolError,
        "edge-1; error=http_protocol_error",
        true,
    );
    assert_eq!(failed.status, 502);
    assert_eq!(
        failed.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(failed.header("proxy-status"), Some(expected.proxy_status));
    assert_eq!(failed.header("cache-control"), Some("no-store"));
    assert_eq!(failed.header("vary"), Some("accept"));
    assert_eq!(failed.content_length(), Some(failed.body.len()));
    assert_problem_body(&failed.body, &expected);
}

/// A router whose fallback is the gateway in front of the demo upstream.
fn intercepting_app(upstream: std::net::SocketAddr, intercept: bool) -> Router {
    let layer = if intercept {
        layer().failure_statuses(statuses(500..=599))
    } else {
        layer()
    };
    Router::new().fallback_service(gateway_to(layer, upstream))
}

/// Checks an intercepted origin error: the origin's status, a generated problem body, and a
/// `Proxy-Status` that says which status was received.
async fn assert_intercepted(
    response: Response<Body>,
    status: StatusCode,
    proxy_status: &str,
    origin_body: &str,
) -> http::HeaderMap {
    let (parts, body) = response.into_parts();
    let body = read_body(body).await;
    let expected = Expected {
        status,
        proxy_status,
        kind: None,
        retryable: true,
    };
    assert_eq!(parts.status, status, "the origin's status is kept");
    assert_generated_headers(&parts.headers, &expected, body.len());
    assert_eq!(
        parts.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_problem_body(&body, &expected);
    assert!(
        !String::from_utf8_lossy(&body).contains(origin_body.trim()),
        "the origin's body is replaced"
    );
    parts.headers
}

#[tokio::test]
async fn intercept_replaces_the_origin_500_body_and_keeps_the_status() {
    let upstream = start_upstream().await;
    let app = intercepting_app(upstream.addr, true);

    let response = call(app, request("GET", "/origin-500", None)).await;

    assert_intercepted(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "edge-1; received-status=500",
        ORIGIN_500_BODY,
    )
    .await;
}

#[tokio::test]
async fn intercept_keeps_the_origin_retry_after() {
    let upstream = start_upstream().await;
    let app = intercepting_app(upstream.addr, true);

    let response = call(app, request("GET", "/origin-503", None)).await;

    let headers = assert_intercepted(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "edge-1; received-status=503",
        ORIGIN_503_BODY,
    )
    .await;
    assert_eq!(headers[header::RETRY_AFTER], "7");
}

#[tokio::test]
async fn intercept_appends_to_an_upstream_proxy_status() {
    let upstream = start_upstream().await;
    let app = intercepting_app(upstream.addr, true);

    let response = call(app, request("GET", "/origin-502", None)).await;

    // The member nearest the origin stays first (RFC 9209 §2).
    assert_intercepted(
        response,
        StatusCode::BAD_GATEWAY,
        "origin-lb; error=connection_refused, edge-1; received-status=502",
        ORIGIN_502_BODY,
    )
    .await;
}

#[tokio::test]
async fn without_intercept_origin_error_bodies_are_untouched() {
    let upstream = start_upstream().await;
    let app = intercepting_app(upstream.addr, false);

    for (path, status, body, proxy_status) in [
        ("/origin-500", 500, ORIGIN_500_BODY, None),
        ("/origin-503", 503, ORIGIN_503_BODY, None),
        (
            "/origin-502",
            502,
            ORIGIN_502_BODY,
            Some("origin-lb; error=connection_refused"),
        ),
    ] {
        let response = call(app.clone(), request("GET", path, None)).await;
        let (parts, received) = response.into_parts();
        assert_eq!(parts.status.as_u16(), status, "{path}");
        assert_eq!(
            parts.headers.get(&PROXY_STATUS),
            proxy_status.map(HeaderValue::from_static).as_ref(),
            "{path}"
        );
        assert_eq!(read_body(received).await, body.as_bytes(), "{path}");
    }
}
