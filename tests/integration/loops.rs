//! Forwarding loops (RFC 8586 `CDN-Loop`, RFC 9209 `proxy_loop_detected`): the example gateway
//! pointed at itself, two gateways pointed at each other, what the layer writes into `CDN-Loop`,
//! and hostile values of it. Real sockets on loopback; every gateway counts the requests that
//! reach it, so a test sees how many turns a loop took.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::LoopDetection;
use gateway_errors::headers::{CDN_LOOP, PROXY_STATUS};
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, ProxyName};
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::proxy::{self, Proxy, ServeOptions};
use crate::support::{
    self, RunningServer, call, gateway_to, http_client, read_body, request, within,
};

/// Binds a loopback port first, so that a gateway can be pointed at an address before it serves.
async fn bind() -> (TcpListener, SocketAddr) {
    let listener = within("binding", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// The example gateway (its proxy and server loop), named `name`, forwarding to `upstream`,
/// served on `listener`; the counter counts the requests that reach it.
fn example_gateway(
    listener: TcpListener,
    name: &'static str,
    upstream: SocketAddr,
    layer: GatewayErrorLayer,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let uri: Uri = format!("http://{upstream}")
        .parse()
        .expect("an upstream URI");
    let proxy = Proxy::new(&uri, name, 1024 * 1024).expect("a proxy");
    let arrived = Arc::new(AtomicUsize::new(0));
    let counted = arrived.clone();
    let service = ServiceBuilder::new()
        .map_request(move |request| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
        })
        .layer(layer.proxy_name(ProxyName::from_static(name)))
        .service(proxy);
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    ));
    (arrived, task)
}

async fn get(addr: SocketAddr) -> Response<Bytes> {
    let client = http_client();
    let request = Request::get(format!("http://{addr}/orders"))
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())
        .expect("a request");
    let response = within("the request", client.request(request))
        .await
        .expect("a response");
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, read_body(body).await)
}

fn assert_loop_answer(response: &Response<Bytes>, name: &str) {
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()[&PROXY_STATUS],
        format!("{name}; error=proxy_loop_detected").as_str()
    );
    let problem: serde_json::Value =
        serde_json::from_slice(response.body()).expect("a problem+json body");
    assert_eq!(problem["error_type"], "proxy_loop_detected");
    assert_eq!(problem["status"], 502);
    assert_eq!(
        problem["retryable"], false,
        "another attempt would loop again"
    );
    assert_eq!(problem["detail"], "The gateway detected a forwarding loop.");
}

#[tokio::test]
async fn the_example_gateway_pointed_at_itself_answers_at_the_first_return() {
    let (listener, addr) = bind().await;
    let (arrived, task) = example_gateway(listener, "edge-1", addr, support::layer());

    let response = get(addr).await;
    assert_loop_answer(&response, "edge-1");
    // The client's request, and the one the gateway sent itself: refused there, not forwarded.
    assert_eq!(arrived.load(Ordering::SeqCst), 2);
    task.abort();
}

#[tokio::test]
async fn two_gateways_pointed_at_each_other_stop_after_one_turn() {
    let (listener_a, a) = bind().await;
    let (listener_b, b) = bind().await;
    let (arrived_a, task_a) = example_gateway(listener_a, "edge-a", b, support::layer());
    let (arrived_b, task_b) = example_gateway(listener_b, "edge-b", a, support::layer());

    let response = get(a).await;
    // The gateway that saw its own name answered; the other passed that answer back untouched.
    assert_loop_answer(&response, "edge-a");
    assert_eq!(arrived_a.load(Ordering::SeqCst), 2);
    assert_eq!(arrived_b.load(Ordering::SeqCst), 1);
    task_a.abort();
    task_b.abort();
}

/// An upstream that answers 200 and keeps the `CDN-Loop` field lines of every request.
async fn recording_upstream() -> (RunningServer, Arc<Mutex<Vec<Vec<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = support::serve(tower::service_fn(move |request: Request<Body>| {
        let lines = request
            .headers()
            .get_all(&CDN_LOOP)
            .iter()
            .map(|v| v.to_str().expect("ASCII").to_owned())
            .collect();
        record.lock().expect("not poisoned").push(lines);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    }))
    .await;
    (server, seen)
}

#[tokio::test]
async fn the_gateway_appends_its_name_after_the_members_already_there() {
    let (upstream, seen) = recording_upstream().await;
    let gateway = gateway_to(support::layer(), upstream.addr);

    let plain = call(gateway.clone(), request("GET", "/", None)).await;
    assert_eq!(plain.status(), StatusCode::OK);
    let mut behind_a_cdn = request("GET", "/", None);
    behind_a_cdn
        .headers_mut()
        .append(&CDN_LOOP, "cdn-x; v=\"1, 2\", other".parse().unwrap());
    behind_a_cdn
        .headers_mut()
        .append(&CDN_LOOP, "third".parse().unwrap());
    let forwarded = call(gateway, behind_a_cdn).await;
    assert_eq!(forwarded.status(), StatusCode::OK);

    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(
        seen,
        [
            vec!["edge-1".to_owned()],
            vec![
                "cdn-x; v=\"1, 2\", other".to_owned(),
                "third".to_owned(),
                "edge-1".to_owned()
            ]
        ]
    );
}

#[tokio::test]
async fn a_loop_is_answered_without_calling_the_inner_service() {
    let called = Arc::new(AtomicUsize::new(0));
    let counted = called.clone();
    let inner = tower::service_fn(move |_request: Request<crate::support::Upload>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let gateway = ServiceBuilder::new().layer(support::layer()).service(inner);

    let mut looped = request("POST", "/orders", Some("text/plain"));
    looped
        .headers_mut()
        .insert(&CDN_LOOP, "cdn-x, EDGE-1; seen=1".parse().unwrap());
    let response = call(gateway.clone(), looped).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = response
        .extensions()
        .get::<ProxyError>()
        .expect("the error");
    assert_eq!(error.kind(), Some(ProxyErrorKind::ProxyLoopDetected));
    assert!(!error.is_retryable());
    let body = read_body(response.into_body()).await;
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.contains("Sending the same request again will not help."),
        "{text}"
    );
    assert_eq!(called.load(Ordering::SeqCst), 0);

    // A gRPC caller gets its error the gRPC way.
    let mut grpc = Request::post("/orders.Orders/Get")
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(Body::empty())
        .unwrap();
    grpc.headers_mut()
        .insert(&CDN_LOOP, "edge-1".parse().unwrap());
    let response = call(gateway, grpc).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "13");
    assert_eq!(called.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_loop_detection_off_cdn_loop_is_neither_read_nor_written() {
    let (upstream, seen) = recording_upstream().await;
    let gateway = gateway_to(
        support::layer().loop_detection(LoopDetection::off()),
        upstream.addr,
    );

    assert_eq!(
        call(gateway.clone(), request("GET", "/", None))
            .await
            .status(),
        StatusCode::OK
    );
    let mut ours = request("GET", "/", None);
    ours.headers_mut()
        .insert(&CDN_LOOP, "edge-1".parse().unwrap());
    assert_eq!(call(gateway, ours).await.status(), StatusCode::OK);

    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(seen, [vec![], vec!["edge-1".to_owned()]]);
}

#[tokio::test]
async fn a_raised_threshold_lets_a_request_come_back_once() {
    let (upstream, seen) = recording_upstream().await;
    let gateway = gateway_to(
        support::layer().loop_detection(LoopDetection::after(2)),
        upstream.addr,
    );

    let mut once = request("GET", "/", None);
    once.headers_mut()
        .insert(&CDN_LOOP, "edge-1".parse().unwrap());
    assert_eq!(call(gateway.clone(), once).await.status(), StatusCode::OK);

    let mut twice = request("GET", "/", None);
    twice
        .headers_mut()
        .insert(&CDN_LOOP, "edge-1, cdn-x, edge-1".parse().unwrap());
    let response = call(gateway, twice).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(seen.lock().expect("not poisoned").len(), 1);
}

#[tokio::test]
async fn hostile_cdn_loop_values_are_never_taken_for_our_name() {
    let (upstream, seen) = recording_upstream().await;
    let gateway = gateway_to(support::layer(), upstream.addr);
    let thousands = "cdn-x, ".repeat(8_000) + "edge-10";
    let long_quote = format!("cdn-x; note=\"{}", "edge-1, ".repeat(4_000));
    let hostile = [
        "\"edge-1\"",
        "edge-1;",
        "edge-1 ; =1",
        "edge-1; a=\"unterminated, edge-1",
        "x-edge-1, edge-1x, edge-1/2",
        "cdn-x; via=edge-1",
        ",,,;;;,,, \t ,",
        thousands.as_str(),
        long_quote.as_str(),
    ];
    for value in hostile {
        let mut hostile = request("GET", "/", None);
        hostile
            .headers_mut()
            .insert(&CDN_LOOP, value.parse().expect("a header value"));
        let response = call(gateway.clone(), hostile).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            &value[..value.len().min(60)]
        );
    }
    assert_eq!(seen.lock().expect("not poisoned").len(), hostile.len());
}

#[tokio::test]
async fn a_stored_copy_never_hides_a_loop() {
    let (upstream, seen) = recording_upstream().await;
    let store =
        gateway_errors::stale::Store::new().default_window(std::time::Duration::from_secs(3600));
    let gateway = gateway_to(support::layer().serve_stale(store.clone()), upstream.addr);
    let get = || {
        let mut request = request("GET", "/orders", None);
        request
            .headers_mut()
            .insert(header::HOST, "shop.test".parse().unwrap());
        request
    };

    let first = call(gateway.clone(), get()).await;
    assert_eq!(first.status(), StatusCode::OK);
    read_body(first.into_body()).await;
    assert_eq!(store.len(), 1, "the page is kept");

    let mut looped = get();
    looped
        .headers_mut()
        .insert(&CDN_LOOP, "edge-1".parse().unwrap());
    let response = call(gateway, looped).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()[&PROXY_STATUS],
        "edge-1; error=proxy_loop_detected"
    );
    assert_eq!(seen.lock().expect("not poisoned").len(), 1);
}
