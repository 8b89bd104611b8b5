//! The request span and the decision event, as a tracing subscriber and an OpenTelemetry exporter
//! see them, for real failures on loopback.
//!
//! A small capturing `Layer` records every span (name, level, parent, fields, including those
//! recorded later, and whether it closed) and every event, for the test's thread only
//! (`set_default`; each test runs on its own current-thread runtime).

use crate::support::capture::{Captured, field};
use crate::support::demo_upstream;
use gateway_errors::Telemetry;
use gateway_errors::TimeLimits;
use gateway_errors::body::UploadBody;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use gateway_errors::GatewayErrorLayer;
use gateway_errors::body::GatewayBody;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

const STEP: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: still waiting after {STEP:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A capturing layer
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

type GatewayResponse = Response<GatewayBody<Incoming>>;

fn gateway(
    upstream: SocketAddr,
    layer: GatewayErrorLayer,
) -> impl Service<Request<Body>, Response = GatewayResponse, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    let client = Client::builder(TokioExecutor::new()).build_http::<UploadBody<Body>>();
    ServiceBuilder::new()
        .layer(layer)
        .map_request(move |mut request: Request<UploadBody<Body>>| {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = format!("http://{upstream}{path}")
                .parse::<Uri>()
                .expect("upstream uri");
            request
        })
        .service(client)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

async fn send<S>(service: S, request: Request<Body>) -> S::Response
where
    S: Service<Request<Body>, Error = Infallible>,
{
    within("request", service.oneshot(request))
        .await
        .unwrap_or_else(|never| match never {})
}

/// Everything the client can see of a response: status line, headers and body.
async fn visible_text(response: Response<GatewayBody<Incoming>>) -> String {
    let (parts, body) = response.into_parts();
    let body = within("body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    let mut text = format!("{}\n", parts.status);
    for (name, value) in &parts.headers {
        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("")));
    }
    text.push_str(&String::from_utf8_lossy(&body));
    text
}

// ---------------------------------------------------------------------------------------------
// Generated errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_connection_is_a_502_span_and_one_warn_event_with_the_whole_chain() {
    let capture = Captured::default();
    let _guard = capture.install();
    let closed = demo_upstream::closed_port();

    let response = send(
        gateway(closed, GatewayErrorLayer::new()),
        get("/items/42?q=1"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);

    let (index, span) = capture.gateway_span();
    assert_eq!(span.level, Level::INFO);
    assert_eq!(field(&span, "http.request.method"), Some("GET"));
    assert_eq!(field(&span, "url.path"), Some("/items/42"));
    assert_eq!(field(&span, "http.response.status_code"), Some("502"));
    assert_eq!(field(&span, "error.type"), Some("connection_refused"));
    assert_eq!(field(&span, "otel.status_code"), Some("ERROR"));
    assert_eq!(field(&span, "gateway.generated"), Some("true"));
    assert_eq!(field(&span, "gateway.retryable"), Some("true"));
    assert_eq!(field(&span, "gateway.phase"), Some("not_sent"));
    let upstream_ms: u64 = field(&span, "gateway.upstream_ms")
        .expect("upstream time recorded")
        .parse()
        .expect("milliseconds");
    assert!(upstream_ms < STEP.as_millis() as u64);
    assert_eq!(field(&span, "gateway.cancelled"), None);

    let events = capture.events_of(index);
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::WARN);
    assert_eq!(event.target, "gateway_errors");
    assert_eq!(
        event.fields.get("error.type").map(String::as_str),
        Some("connection_refused")
    );
    let chain = event.fields.get("error").expect("the error chain");
    // hyper-util's error, its connect error, and the OS error at the bottom of the chain.
    assert!(chain.contains("client error (Connect)"), "{chain}");
    assert!(chain.contains("tcp connect error"), "{chain}");
    assert!(chain.contains("os error 111"), "{chain}");
    assert!(chain.contains("Connection refused"), "{chain}");

    // None of it reaches the client.
    let visible = visible_text(response).await;
    for secret in [
        "os error",
        "Connection refused",
        "tcp connect",
        "client error",
    ] {
        assert!(!visible.contains(secret), "{secret:?} leaked: {visible}");
    }
    assert!(!visible.contains(&closed.port().to_string()), "{visible}");

    assert!(capture.span(index).closed);
}

#[tokio::test]
async fn the_span_name_never_holds_the_path() {
    let capture = Captured::default();
    let _guard = capture.install();
    let closed = demo_upstream::closed_port();
    let _ = send(
        gateway(closed, GatewayErrorLayer::new()),
        get("/users/12345/secret"),
    )
    .await;
    for span in &capture.spans() {
        assert!(!span.name.contains("/users"), "{}", span.name);
    }
}

#[tokio::test]
async fn an_upstream_timeout_is_a_504_span() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");
    let layer = GatewayErrorLayer::new()
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(50)));

    let response = send(gateway(demo.addr, layer), get("/slow")).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

    let (index, span) = capture.gateway_span();
    assert_eq!(field(&span, "http.response.status_code"), Some("504"));
    assert_eq!(field(&span, "error.type"), Some("http_response_timeout"));
    assert_eq!(field(&span, "otel.status_code"), Some("ERROR"));
    assert_eq!(field(&span, "gateway.phase"), Some("maybe_sent"));
    assert_eq!(field(&span, "gateway.retryable"), Some("true"));
    let events = capture.events_of(index);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].level, Level::WARN);
    let chain = &events[0].fields["error"];
    assert!(chain.contains("no response head within 50ms"), "{chain}");
}

#[tokio::test]
async fn a_generated_4xx_is_an_info_event_and_no_error_status() {
    use gateway_errors::classify::Classification;
    use gateway_errors::{ProxyError, ProxyErrorKind};
    let capture = Captured::default();
    let _guard = capture.install();
    // An inner service that refuses the request itself, as a body-size limit would.
    let refusing = tower::service_fn(|_request: Request<crate::support::Upload>| async {
        let too_large = Classification::new(ProxyErrorKind::HttpRequestError)
            .with_status(StatusCode::PAYLOAD_TOO_LARGE);
        Err::<Response<Body>, _>(ProxyError::from_classification(too_large))
    });
    let service = ServiceBuilder::new()
        .layer(GatewayErrorLayer::new())
        .service(refusing);

    let response = within("request", service.oneshot(get("/upload"))).await;
    assert_eq!(response.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);

    let (index, span) = capture.gateway_span();
    assert_eq!(field(&span, "error.type"), Some("http_request_error"));
    assert_eq!(field(&span, "otel.status_code"), None);
    let events = capture.events_of(index);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].level, Level::INFO);
}

#[tokio::test]
async fn a_stale_answer_is_no_error_span_but_names_the_hidden_failure_and_warns() {
    use gateway_errors::stale;
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");
    // One store, two gateways: one whose upstream answers, then one whose upstream refuses.
    let store = stale::Store::new().default_window(Duration::from_secs(60));
    let layer = GatewayErrorLayer::new().serve_stale(store.clone());
    let response = send(gateway(demo.addr, layer.clone()), get("/ok")).await;
    within("body", response.into_body().collect())
        .await
        .expect("the origin's body");
    assert_eq!(store.len(), 1);

    let closed = demo_upstream::closed_port();
    let response = send(gateway(closed, layer), get("/ok")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // The stale answer's span is the last one.
    let index = {
        let spans = capture.spans();
        let spans = spans.iter().enumerate();
        let mut gateway_spans = spans.filter(|(_, s)| s.name == "gateway.request");
        gateway_spans.next_back().expect("a gateway.request span").0
    };
    let span = capture.span(index);
    assert_eq!(field(&span, "http.response.status_code"), Some("200"));
    assert_eq!(field(&span, "error.type"), Some("connection_refused"));
    assert_eq!(field(&span, "gateway.stale"), Some("true"));
    assert_eq!(field(&span, "gateway.stale.age_s"), Some("1"));
    assert_eq!(field(&span, "gateway.generated"), Some("false"));
    assert_eq!(
        field(&span, "otel.status_code"),
        None,
        "the client got an answer"
    );
    assert_eq!(field(&span, "gateway.retryable"), None);

    let events = capture.events_of(index);
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.level, Level::WARN);
    assert_eq!(
        event.fields.get("message").map(String::as_str),
        Some("upstream request failed; answered with a stale copy")
    );
    assert_eq!(
        event.fields.get("error.type").map(String::as_str),
        Some("connection_refused")
    );
    assert_eq!(
        event.fields.get("gateway.stale.age_s").map(String::as_str),
        Some("1")
    );
    let chain = event.fields.get("error").expect("the error chain");
    assert!(chain.contains("Connection refused"), "{chain}");
    // The chain stays in the event: the client gets the stored page and nothing of it.
    let visible = visible_text(response).await;
    assert!(visible.contains(demo_upstream::OK_BODY), "{visible}");
    assert!(!visible.contains("os error"), "{visible}");
}

// ---------------------------------------------------------------------------------------------
// Forwarded responses and the life of the span
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_forwarded_503_is_an_error_span_with_the_status_as_error_type() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    let response = send(
        gateway(demo.addr, GatewayErrorLayer::new()),
        get("/origin-503"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let (index, span) = capture.gateway_span();
    assert_eq!(field(&span, "http.response.status_code"), Some("503"));
    assert_eq!(field(&span, "error.type"), Some("503"));
    assert_eq!(field(&span, "otel.status_code"), Some("ERROR"));
    assert_eq!(field(&span, "gateway.generated"), Some("false"));
    // Retry hints belong to generated errors only.
    assert_eq!(field(&span, "gateway.retryable"), None);
    assert_eq!(field(&span, "gateway.phase"), None);
    // The span lives as long as the body does.
    assert!(!span.closed, "closed before the body was read");

    let body = within("body", response.into_body().collect())
        .await
        .expect("the origin's body")
        .to_bytes();
    assert_eq!(body, demo_upstream::ORIGIN_503_BODY.as_bytes());
    let span = capture.span(index);
    assert!(span.closed, "open after the body ended");
    assert_eq!(field(&span, "gateway.cancelled"), None);
    assert_eq!(field(&span, "error.type"), Some("503"));
}

#[tokio::test]
async fn a_body_cut_mid_stream_is_recorded_on_the_span_after_the_head() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    let response = send(gateway(demo.addr, GatewayErrorLayer::new()), get("/cut")).await;
    // The head was fine: 200, nothing wrong yet.
    assert_eq!(response.status(), StatusCode::OK);
    let (index, span) = capture.gateway_span();
    assert_eq!(field(&span, "http.response.status_code"), Some("200"));
    assert_eq!(field(&span, "error.type"), None);
    assert_eq!(field(&span, "otel.status_code"), None);

    // Then the body fails: the client sees an error, never a short body that looks complete.
    let result = within("body", response.into_body().collect()).await;
    assert!(result.is_err(), "a cut body must fail");

    let span = capture.span(index);
    assert_eq!(field(&span, "error.type"), Some("http_response_incomplete"));
    assert_eq!(field(&span, "otel.status_code"), Some("ERROR"));
    assert_eq!(field(&span, "gateway.cancelled"), None);
    assert_eq!(field(&span, "http.response.status_code"), Some("200"));
    assert!(span.closed);
    let events = capture.events_of(index);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].level, Level::WARN);
    assert_eq!(events[0].fields["error.type"], "http_response_incomplete");
}

#[tokio::test]
async fn a_body_that_stalls_is_recorded_as_a_read_timeout_after_the_head() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    let layer = GatewayErrorLayer::new()
        .time_limits(TimeLimits::new().read_timeout(Duration::from_millis(200)));
    let response = send(gateway(demo.addr, layer), get("/stall-body")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let result = within("body", response.into_body().collect()).await;
    assert!(result.is_err(), "a stalled body must fail, not end");

    let (index, span) = capture.gateway_span();
    assert_eq!(field(&span, "http.response.status_code"), Some("200"));
    assert_eq!(field(&span, "error.type"), Some("connection_read_timeout"));
    assert_eq!(field(&span, "otel.status_code"), Some("ERROR"));
    assert_eq!(field(&span, "gateway.head_sent"), Some("true"));
    let sent = demo_upstream::STALL_SENT.to_string();
    assert_eq!(field(&span, "http.response.body.size"), Some(sent.as_str()));
    assert_eq!(field(&span, "gateway.cancelled"), None);
    assert!(span.closed);
    let events = capture.events_of(index);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].level, Level::WARN);
    assert_eq!(events[0].fields["error.type"], "connection_read_timeout");
    assert!(events[0].fields["error"].contains("read timeout"));
}

#[tokio::test]
async fn a_complete_body_records_its_size() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    let response = send(
        gateway(demo.addr, GatewayErrorLayer::new()),
        get("/large?bytes=100000"),
    )
    .await;
    let body = within("body", response.into_body().collect())
        .await
        .expect("a whole body");
    assert_eq!(body.to_bytes().len(), 100_000);
    let (_, span) = capture.gateway_span();
    assert_eq!(field(&span, "http.response.body.size"), Some("100000"));
    assert_eq!(field(&span, "gateway.head_sent"), None);
    assert_eq!(field(&span, "error.type"), None);
}

#[tokio::test]
async fn a_client_that_drops_the_body_early_is_cancelled_not_an_error() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    let response = send(
        gateway(demo.addr, GatewayErrorLayer::new()),
        get("/large?bytes=4194304"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = Box::pin(response.into_body());
    let first = within("first frame", body.frame()).await;
    assert!(matches!(first, Some(Ok(_))));
    drop(body);

    let (index, span) = capture.gateway_span();
    assert!(span.closed);
    assert_eq!(field(&span, "gateway.cancelled"), Some("true"));
    assert_eq!(field(&span, "otel.status_code"), None);
    assert_eq!(field(&span, "error.type"), None);
    assert!(capture.events_of(index).is_empty());
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_head_is_cancelled_not_an_error() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");

    // No upstream timeout: only the client's giving up ends the wait.
    let service = gateway(demo.addr, GatewayErrorLayer::new());
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), service.oneshot(get("/slow"))).await;
    assert!(gave_up.is_err(), "/slow never answers");

    let (index, span) = capture.gateway_span();
    assert!(span.closed);
    assert_eq!(field(&span, "gateway.cancelled"), Some("true"));
    assert_eq!(field(&span, "http.response.status_code"), None);
    assert_eq!(field(&span, "otel.status_code"), None);
    assert_eq!(field(&span, "error.type"), None);
    assert!(capture.events_of(index).is_empty());
}

/// Serves `service` with hyper on loopback, as a real gateway would.
async fn serve<S>(service: S) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    S: Service<Request<Incoming>, Response = GatewayResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_response_served_in_full_by_hyper_is_not_cancelled() {
    let capture = Captured::default();
    let _guard = capture.install();
    let demo = demo_upstream::spawn().await.expect("demo upstream");
    let upstream = demo.addr;
    let client = Client::builder(TokioExecutor::new()).build_http::<UploadBody<Incoming>>();
    let proxy = ServiceBuilder::new()
        .layer(GatewayErrorLayer::new())
        .map_request(move |mut request: Request<UploadBody<Incoming>>| {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = format!("http://{upstream}{path}").parse().unwrap();
            request
        })
        .service(client);
    let (addr, server) = serve(proxy).await;

    let downstream = Client::builder(TokioExecutor::new()).build_http::<Body>();
    for (method, path, expect_body) in [
        (Method::GET, "/ok", demo_upstream::OK_BODY),
        (Method::GET, "/large?bytes=100000", ""),
        (Method::HEAD, "/ok", ""),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{addr}{path}"))
            .body(Body::empty())
            .unwrap();
        let response = within("request", downstream.request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = within("body", response.into_body().collect())
            .await
            .expect("complete body")
            .to_bytes();
        if !expect_body.is_empty() {
            assert_eq!(body, expect_body.as_bytes());
        }

        // The server finishes the response, then drops the body: the span closes soon after.
        let index = within("span closed", async {
            loop {
                let closed = {
                    capture.spans().iter().rposition(|s| {
                        s.name == "gateway.request"
                            && s.closed
                            && s.fields.get("url.path").map(String::as_str)
                                == Some(path.split('?').next().unwrap())
                            && s.fields.get("http.request.method").map(String::as_str)
                                == Some(method.as_str())
                    })
                };
                if let Some(index) = closed {
                    break index;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let span = capture.span(index);
        assert_eq!(
            field(&span, "gateway.cancelled"),
            None,
            "{method} {path}: a complete response is not a cancellation"
        );
        assert_eq!(field(&span, "otel.status_code"), None);
    }
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// Levels and nesting
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_span_level_is_configurable_and_the_warn_event_survives_a_filter() {
    let closed = demo_upstream::closed_port();
    let layer = GatewayErrorLayer::new().telemetry(Telemetry::new().span_level(Level::DEBUG));

    let capture = Captured::default();
    {
        let _guard = capture.install();
        let _ = send(gateway(closed, layer.clone()), get("/items")).await;
    }
    assert_eq!(capture.gateway_span().1.level, Level::DEBUG);

    // Under an INFO filter the DEBUG span is off; the WARN event is still emitted.
    let filtered = Captured::default();
    {
        let subscriber =
            tracing_subscriber::registry().with(filtered.clone().with_filter(LevelFilter::INFO));
        let _guard = tracing::subscriber::set_default(subscriber);
        // Callsites first met on another thread while no subscriber was set may have cached
        // "never": ask again now that this one is.
        tracing::callsite::rebuild_interest_cache();
        let response = send(gateway(closed, layer), get("/items")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }
    assert!(filtered.spans().is_empty());
    let events = filtered.events();
    let warn: Vec<_> = events.iter().filter(|e| e.level == Level::WARN).collect();
    assert_eq!(warn.len(), 1, "{events:#?}");
    assert_eq!(warn[0].fields["error.type"], "connection_refused");
}

#[tokio::test]
async fn the_span_nests_under_tower_https_trace_layer() {
    let capture = Captured::default();
    let _guard = capture.install();
    let closed = demo_upstream::closed_port();
    let service = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .service(gateway(closed, GatewayErrorLayer::new()));

    let response = within("request", service.oneshot(get("/items")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);

    let (index, span) = capture.gateway_span();
    let parent = capture.span(span.parent.expect("a parent span"));
    assert_eq!(parent.name, "request");
    assert!(parent.target.starts_with("tower_http"), "{}", parent.target);
    // The decision event belongs to our span, not to TraceLayer's.
    assert_eq!(capture.events_of(index).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// OpenTelemetry, through tracing-opentelemetry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn opentelemetry_exports_the_attributes_and_error_status() {
    use opentelemetry::Value;
    use opentelemetry::trace::{Status, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("spans-test"));
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(otel));
    // Callsites first met on another thread while no subscriber was set may have cached
    // "never": ask again now that this one is.
    tracing::callsite::rebuild_interest_cache();

    let demo = demo_upstream::spawn().await.expect("demo upstream");
    let closed = demo_upstream::closed_port();
    let layer = GatewayErrorLayer::new()
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(50)));

    let refused = send(gateway(closed, layer.clone()), get("/refused")).await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    let timed_out = send(gateway(demo.addr, layer.clone()), get("/slow")).await;
    assert_eq!(timed_out.status(), StatusCode::GATEWAY_TIMEOUT);
    let forwarded = send(gateway(demo.addr, layer.clone()), get("/origin-503")).await;
    assert_eq!(forwarded.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A forwarded response's span ends with its body.
    within("body", forwarded.into_body().collect())
        .await
        .expect("body");
    drop((refused, timed_out));

    let spans = exporter.get_finished_spans().expect("finished spans");
    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    let cases = [
        ("/refused", 502, "connection_refused"),
        ("/slow", 504, "http_response_timeout"),
        ("/origin-503", 503, "503"),
    ];
    for (path, status, error_type) in cases {
        let span = spans
            .iter()
            .find(|s| attribute(s, "url.path") == Some(Value::from(path)))
            .unwrap_or_else(|| panic!("no exported span for {path}: {spans:#?}"));
        assert_eq!(span.name, "gateway.request");
        assert_eq!(
            attribute(span, "http.request.method"),
            Some(Value::from("GET"))
        );
        assert_eq!(
            attribute(span, "http.response.status_code"),
            Some(Value::I64(status))
        );
        assert_eq!(attribute(span, "error.type"), Some(Value::from(error_type)));
        assert!(
            matches!(span.status, Status::Error { .. }),
            "{path}: {:?}",
            span.status
        );
        // The status is the span's status, not an attribute.
        assert_eq!(attribute(span, "otel.status_code"), None);
    }
    let generated = spans
        .iter()
        .find(|s| attribute(s, "url.path") == Some(Value::from("/refused")))
        .unwrap();
    assert_eq!(
        attribute(generated, "gateway.phase"),
        Some(Value::from("not_sent"))
    );
    assert_eq!(
        attribute(generated, "gateway.retryable"),
        Some(Value::Bool(true))
    );
    // The decision event travels as a span event, with the chain.
    let event = generated
        .events
        .iter()
        .find(|e| e.name == "upstream request failed")
        .unwrap_or_else(|| panic!("no decision event: {:#?}", generated.events));
    let chain = event
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "error")
        .map(|kv| kv.value.to_string())
        .expect("error attribute");
    assert!(chain.contains("Connection refused"), "{chain}");
    let _ = provider.shutdown();
}
