//! The layer around a reqwest client (the `reqwest` feature): reqwest's errors classified like
//! hyper-util's, against the same real faults on loopback.
#![cfg(feature = "reqwest")]

use std::time::Duration;

use crate::support::{self, Expected, assert_problem, call, demo_upstream, layer, start_upstream};
use gateway_errors::ProxyErrorKind;
use http::{Request, Response};
use tower::ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

use gateway_errors::body::UploadBody;

/// A reqwest client as a tower service over `http` types, aimed at one upstream: the shape a
/// gateway built on reqwest has.
fn reqwest_gateway(
    upstream: std::net::SocketAddr,
    client: reqwest::Client,
) -> impl tower::Service<
    Request<reqwest::Body>,
    Response = Response<gateway_errors::body::GatewayBody<reqwest::Body>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    let forward = tower::service_fn(move |request: Request<UploadBody<reqwest::Body>>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("http://{upstream}{path}").parse()?;
            // A body at its end is sent as it is; an upload goes on being watched.
            let body = if http_body::Body::is_end_stream(&body) {
                body.into_inner()
            } else {
                reqwest::Body::wrap(body)
            };
            let request = reqwest::Request::try_from(Request::from_parts(parts, body))?;
            let response = client.execute(request).await?;
            Ok::<_, BoxError>(Response::<reqwest::Body>::from(response))
        }
    });
    ServiceBuilder::new().layer(layer()).service(forward)
}

fn get(path: &str) -> Request<reqwest::Body> {
    Request::get(path)
        .body(reqwest::Body::from(""))
        .expect("valid request")
}

#[tokio::test]
async fn refused_connection_through_reqwest_is_502_connection_refused() {
    let gateway = reqwest_gateway(demo_upstream::closed_port(), reqwest::Client::new());
    let response = call(gateway, get("/")).await;
    let expected = Expected::kind(
        ProxyErrorKind::ConnectionRefused,
        "edge-1; error=connection_refused",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn reqwest_timeout_is_504_http_response_timeout() {
    let upstream = start_upstream().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let gateway = reqwest_gateway(upstream.addr, client);
    let response = call(gateway, get("/slow")).await;
    let expected = Expected::kind(
        ProxyErrorKind::HttpResponseTimeout,
        "edge-1; error=http_response_timeout",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn garbage_through_reqwest_is_502_http_protocol_error() {
    let upstream = start_upstream().await;
    let gateway = reqwest_gateway(upstream.addr, reqwest::Client::new());
    let response = call(gateway, get("/garbage")).await;
    let expected = Expected::kind(
        ProxyErrorKind::HttpProtocolError,
        "edge-1; error=http_protocol_error",
        true,
    );
    assert_problem(response, &expected).await;
}

#[tokio::test]
async fn origin_error_through_reqwest_passes_unchanged() {
    let upstream = start_upstream().await;
    let gateway = reqwest_gateway(upstream.addr, reqwest::Client::new());
    let response = call(gateway, get("/origin-500")).await;
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-origin"], "yes");
    assert!(response.headers().get("proxy-status").is_none());
    let body = support::read_body(response.into_body()).await;
    assert_eq!(body, demo_upstream::ORIGIN_500_BODY);
}
