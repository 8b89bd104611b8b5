//! What the origin says reaches the client unchanged: its own error statuses with their headers
//! and bodies, large bodies byte for byte, trailers, and successes without any gateway markers.

use std::convert::Infallible;

use bytes::Bytes;
use gateway_errors::ProxyError;
use gateway_errors::headers::PROXY_STATUS;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use crate::support::demo_upstream::{
    self, OK_BODY, ORIGIN_500_BODY, ORIGIN_502_BODY, ORIGIN_503_BODY,
};
use crate::support::{
    call, gateway_to, http_client, layer, raw_exchange, read_body, request, serve_gateway,
    start_upstream, to_upstream, within,
};

/// The status, headers and body the origin sends for `path`, fetched without the gateway.
async fn fetch_directly(
    upstream: std::net::SocketAddr,
    path: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let direct = to_upstream(&upstream.to_string(), request("GET", path, None));
    let response = within("direct fetch", http_client().oneshot(direct))
        .await
        .expect("the demo upstream answers");
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, read_body(body).await)
}

/// The headers without `Date`, which may tick between two fetches.
fn without_date(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(header::DATE);
    headers
}

/// Fetches `path` through the gateway and directly, and checks that the client sees exactly what
/// the origin sent. Returns what the gateway forwarded.
async fn assert_passes_through(
    path: &str,
    expected_status: StatusCode,
    expected_body: &str,
) -> HeaderMap {
    let upstream = start_upstream().await;
    let gateway = gateway_to(layer(), upstream.addr);
    let (origin_status, origin_headers, origin_body) = fetch_directly(upstream.addr, path).await;

    let response = call(gateway, request("GET", path, None)).await;
    let (parts, body) = response.into_parts();
    assert!(
        !body.is_generated(),
        "{path}: the origin's body is forwarded"
    );
    let body = read_body(body).await;

    assert_eq!(
        origin_status, expected_status,
        "{path}: the demo's own status"
    );
    assert_eq!(parts.status, origin_status, "{path}: status");
    assert_eq!(
        without_date(parts.headers.clone()),
        without_date(origin_headers),
        "{path}: every origin header, unchanged and nothing added"
    );
    assert_eq!(body, origin_body, "{path}: body bytes");
    assert_eq!(
        body,
        expected_body.as_bytes(),
        "{path}: the demo's own body"
    );
    assert!(
        parts.extensions.get::<ProxyError>().is_none(),
        "{path}: an origin response is not a gateway error"
    );
    parts.headers
}

#[tokio::test]
async fn origin_500_passes_through_unchanged() {
    let headers = assert_passes_through(
        "/origin-500",
        StatusCode::INTERNAL_SERVER_ERROR,
        ORIGIN_500_BODY,
    )
    .await;
    assert_eq!(headers["x-origin"], "yes");
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain");
    assert!(headers.get(&PROXY_STATUS).is_none());
    assert!(headers.get(header::CACHE_CONTROL).is_none());
}

#[tokio::test]
async fn origin_503_passes_through_with_its_retry_after() {
    let headers = assert_passes_through(
        "/origin-503",
        StatusCode::SERVICE_UNAVAILABLE,
        ORIGIN_503_BODY,
    )
    .await;
    assert_eq!(headers[header::RETRY_AFTER], "7");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
}

#[tokio::test]
async fn upstream_proxys_502_keeps_its_own_proxy_status() {
    let headers =
        assert_passes_through("/origin-502", StatusCode::BAD_GATEWAY, ORIGIN_502_BODY).await;
    let proxy_status: Vec<_> = headers.get_all(&PROXY_STATUS).iter().collect();
    assert_eq!(
        proxy_status,
        [&HeaderValue::from_static(
            "origin-lb; error=connection_refused"
        )],
        "the upstream proxy's member alone: this gateway did not fail"
    );
}

#[tokio::test]
async fn origin_200_carries_no_gateway_markers() {
    let headers = assert_passes_through("/ok", StatusCode::OK, OK_BODY).await;
    assert!(headers.get(&PROXY_STATUS).is_none());
    assert!(headers.get(header::VARY).is_none());
}

#[tokio::test]
async fn origin_error_passes_through_a_real_server_unchanged() {
    let upstream = start_upstream().await;
    let server = serve_gateway(layer(), upstream.addr).await;

    let response = raw_exchange(
        server.addr,
        "GET",
        "/origin-500",
        &[("accept", "text/html")],
    )
    .await;

    assert_eq!(response.status, 500);
    assert_eq!(response.body, ORIGIN_500_BODY.as_bytes());
    assert_eq!(response.content_length(), Some(ORIGIN_500_BODY.len()));
    assert_eq!(response.header("x-origin"), Some("yes"));
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.header("proxy-status"), None);
    assert!(!response.ended_with_error);
}

const LARGE: usize = 5_000_000;

#[tokio::test]
async fn large_body_is_forwarded_byte_for_byte() {
    let upstream = start_upstream().await;
    let gateway = gateway_to(layer(), upstream.addr);

    let response = call(
        gateway,
        request("GET", &format!("/large?bytes={LARGE}"), None),
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        LARGE.to_string().as_str()
    );
    let body = read_body(response.into_body()).await;
    assert!(
        body == demo_upstream::large_body(LARGE),
        "the {LARGE}-byte body differs (got {} bytes)",
        body.len()
    );
}

#[tokio::test]
async fn large_body_crosses_a_real_server_byte_for_byte() {
    let upstream = start_upstream().await;
    let server = serve_gateway(layer(), upstream.addr).await;

    let response = raw_exchange(server.addr, "GET", &format!("/large?bytes={LARGE}"), &[]).await;

    assert_eq!(response.status, 200);
    assert_eq!(response.content_length(), Some(LARGE));
    assert!(!response.ended_with_error);
    assert!(
        response.body == demo_upstream::large_body(LARGE),
        "the {LARGE}-byte body differs (got {} bytes)",
        response.body.len()
    );
}

#[tokio::test]
async fn trailers_pass_through_the_layer() {
    // A gRPC-style origin: data, then the outcome in trailers.
    let origin = service_fn(|_request: Request<crate::support::Upload>| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
        let body = Full::new(Bytes::from_static(b"payload"))
            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
        Ok::<_, Infallible>(Response::new(body))
    });
    let gateway = ServiceBuilder::new().layer(layer()).service(origin);

    let response = call(gateway, request("GET", "/stream", None)).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(&PROXY_STATUS).is_none());
    let collected = within("reading the body", response.into_body().collect())
        .await
        .expect("the body ends cleanly");
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "payload");
}
