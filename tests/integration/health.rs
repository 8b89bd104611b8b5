//! Outages through the upstream health layer, on real sockets: upstreams on loopback that refuse,
//! accept and never answer, answer slowly, or come back, behind the gateway of the quick start
//! with `UpstreamHealthLayer` next to the client. What is checked is what a client and an operator
//! see: statuses, `Proxy-Status`, `Retry-After`, bodies, gRPC codes, the connections an upstream
//! receives (counted), events, span fields and metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
#[cfg(feature = "metrics")]
use gateway_errors::Telemetry;
use gateway_errors::TimeLimits;
use gateway_errors::body::GatewayBody;
use gateway_errors::health::UpstreamHealthLayer;
use gateway_errors::health::body::HealthBody;
use gateway_errors::retry::{RetryLayer, RetryPolicy};
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::support::capture::Captured;
use crate::support::{
    self, Expected, PROXY_NAME, assert_problem, call, read_body, request, start_upstream, within,
};

// ---------------------------------------------------------------------------------------------
// Upstreams that refuse, stay silent, answer, and come back, counting their connections
// ---------------------------------------------------------------------------------------------

/// A loopback port where nothing listens (bound, then released): every connect is refused until
/// an [`Origin`] binds it.
async fn refusing_port() -> SocketAddr {
    let listener = within("binding a port", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// How an [`Origin`] answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// `200 ok` at once.
    Ok,
    /// `200 ok` after this long.
    After(Duration),
    /// Accepts the connection, reads, and never answers.
    Never,
}

/// An upstream on a given loopback address that counts the connections it accepts; it stops
/// listening when dropped.
struct Origin {
    accepted: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    async fn on(addr: SocketAddr, answer: Answer) -> Origin {
        let listener = within("binding the origin", TcpListener::bind(addr))
            .await
            .expect("the port is free again");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_request: Request<Incoming>| async move {
                            match answer {
                                Answer::Ok => {}
                                Answer::After(delay) => tokio::time::sleep(delay).await,
                                Answer::Never => std::future::pending::<()>().await,
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"ok\n",
                            ))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            accepted,
            task: Some(task),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops listening, and waits until the port is free for another origin.
    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = within("stopping the origin", task).await;
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------

/// What the gateways here are.
trait HealthGateway:
    Service<
        Request<Body>,
        Response = Response<GatewayBody<HealthBody<Incoming>>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HealthGateway for S where
    S: Service<
            Request<Body>,
            Response = Response<GatewayBody<HealthBody<Incoming>>>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The quick start's gateway with the health layer next to the client: `layer`, then the request
/// pointed at `upstream`, then `health`, then a hyper-util client.
fn gateway(
    layer: GatewayErrorLayer,
    health: UpstreamHealthLayer,
    upstream: SocketAddr,
) -> impl HealthGateway {
    let authority = upstream.to_string();
    ServiceBuilder::new()
        .layer(layer)
        .map_request(move |request| support::to_upstream(&authority, request))
        .layer(health)
        .service(support::upstream_client())
}

/// The health layer with an open time of one second and no jitter, so that a test can wait it
/// out.
fn health() -> UpstreamHealthLayer {
    UpstreamHealthLayer::new()
        .open_time(Duration::from_secs(1))
        .jitter(0.0)
}

fn get(path: &str) -> Request<Body> {
    request("GET", path, None)
}

fn kind_of<B>(response: &Response<B>) -> Option<ProxyErrorKind> {
    response
        .extensions()
        .get::<ProxyError>()
        .and_then(ProxyError::kind)
}

fn retry_after<B>(response: &Response<B>) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("a Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds")
}

/// The answer a client gets while the upstream is marked unavailable, checked as a client
/// reads it: 503, `Proxy-Status`, the problem+json body (retryable, its `retry_after` the header's),
/// the extension. Returns the `Retry-After` seconds.
async fn assert_unavailable<B>(response: Response<B>) -> u64
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let seconds = retry_after(&response);
    assert!(seconds >= 1, "Retry-After is never 0");
    let proxy_status = format!("{PROXY_NAME}; error=destination_unavailable");
    let expected = Expected::kind(ProxyErrorKind::DestinationUnavailable, &proxy_status, true);
    let error = response.extensions().get::<ProxyError>().cloned();
    let json = assert_problem(response, &expected).await;
    assert_eq!(
        json["retry_after"], seconds,
        "the body states the header's delay"
    );
    let error = error.expect("the extension");
    assert_eq!(error.request_sent(), gateway_errors::RequestSent::NotSent);
    seconds
}

/// Sends `n` requests for `path` and returns their statuses.
async fn statuses<S: HealthGateway>(gateway: &S, path: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let response = call(gateway.clone(), get(path)).await;
        statuses.push(response.status().as_u16());
        read_body(response.into_body()).await;
    }
    statuses
}

// ---------------------------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_upstream_is_marked_unavailable_after_five_failures() {
    let port = refusing_port().await;
    let gateway = gateway(support::layer(), UpstreamHealthLayer::new(), port);
    for _ in 0..5 {
        let response = call(gateway.clone(), get("/orders")).await;
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
        read_body(response.into_body()).await;
    }
    let response = call(gateway.clone(), get("/orders")).await;
    let seconds = assert_unavailable(response).await;
    assert!(
        (9..=10).contains(&seconds),
        "{seconds}: the default open time, 10 s"
    );
    // A POST too: it was never sent, so it is safe to retry.
    let response = call(gateway.clone(), request("POST", "/orders", None)).await;
    assert_unavailable(response).await;
}

#[tokio::test]
async fn a_silent_upstream_costs_the_timeout_n_times_then_answers_at_once() {
    let port = refusing_port().await;
    let silent = Origin::on(port, Answer::Never).await;
    let timeout = Duration::from_millis(500);
    let gateway = gateway(
        support::layer().time_limits(TimeLimits::new().upstream_timeout(timeout)),
        UpstreamHealthLayer::new().consecutive_failures(3),
        port,
    );
    for _ in 0..3 {
        let started = Instant::now();
        let response = call(gateway.clone(), get("/slow")).await;
        assert_eq!(
            kind_of(&response),
            Some(ProxyErrorKind::HttpResponseTimeout)
        );
        assert!(started.elapsed() >= timeout);
    }
    let accepted = silent.accepted();
    assert_eq!(accepted, 3);
    for _ in 0..20 {
        let started = Instant::now();
        let response = call(gateway.clone(), get("/slow")).await;
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            took < Duration::from_millis(100),
            "{took:?}: well under the {timeout:?} timeout"
        );
    }
    assert_eq!(silent.accepted(), accepted, "no connection while open");
}

#[tokio::test]
async fn the_origins_own_errors_never_mark_it_unavailable() {
    let upstream = start_upstream().await;
    let gateway = gateway(support::layer(), UpstreamHealthLayer::new(), upstream.addr);
    for path in ["/origin-500", "/origin-503", "/origin-502"] {
        let expected = &path[8..];
        for status in statuses(&gateway, path, 20).await {
            assert_eq!(status.to_string(), expected, "{path}");
        }
    }
    assert_eq!(statuses(&gateway, "/ok", 1).await, [200]);
}

#[tokio::test]
async fn a_body_that_breaks_after_the_head_counts_as_a_failure() {
    let upstream = start_upstream().await;
    let gateway = gateway(
        support::layer()
            .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300))),
        UpstreamHealthLayer::new().consecutive_failures(3),
        upstream.addr,
    );
    // Head, half the body, close: the client sees a broken body each time.
    for _ in 0..2 {
        let response = call(gateway.clone(), get("/cut")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = within(
            "reading /cut",
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await;
        assert!(body.is_err());
    }
    // Head, 10 bytes, silence: cut at the read timeout.
    let response = call(gateway.clone(), get("/stall-body")).await;
    let body = within(
        "reading /stall-body",
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await;
    assert!(body.is_err());
    let response = call(gateway.clone(), get("/ok")).await;
    assert_unavailable(response).await;
}

// ---------------------------------------------------------------------------------------------
// While open, half-open, the probe
// ---------------------------------------------------------------------------------------------

/// Marks the upstream at `port` (refusing) unavailable through `gateway`; returns the open time.
async fn trip<S: HealthGateway>(gateway: &S, failures: usize) -> Duration {
    for _ in 0..failures {
        let response = call(gateway.clone(), get("/orders")).await;
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    }
    let response = call(gateway.clone(), get("/orders")).await;
    Duration::from_secs(assert_unavailable(response).await)
}

#[tokio::test]
async fn while_open_an_upstream_that_came_back_gets_no_connection_then_one_probe() {
    let port = refusing_port().await;
    let gateway = gateway(support::layer(), health(), port);
    let open = trip(&gateway, 5).await;
    assert_eq!(open, Duration::from_secs(1));
    // It is back, but marked unavailable: not one connection.
    let origin = Origin::on(port, Answer::Ok).await;
    for status in statuses(&gateway, "/orders", 20).await {
        assert_eq!(status, 503);
    }
    assert_eq!(origin.accepted(), 0);
    // The open time over, the probe goes through and traffic flows again.
    tokio::time::sleep(open).await;
    assert_eq!(statuses(&gateway, "/orders", 1).await, [200]);
    assert_eq!(origin.accepted(), 1, "the probe");
    assert_eq!(statuses(&gateway, "/orders", 10).await, [200; 10]);
}

#[tokio::test]
async fn in_half_open_exactly_one_of_ten_concurrent_requests_reaches_the_origin() {
    let port = refusing_port().await;
    let gateway = gateway(support::layer(), health(), port);
    let open = trip(&gateway, 5).await;
    let origin = Origin::on(port, Answer::After(Duration::from_millis(300))).await;
    tokio::time::sleep(open).await;
    let calls: Vec<_> = (0..10)
        .map(|_| tokio::spawn(call(gateway.clone(), get("/orders"))))
        .collect();
    let mut answered = 0;
    let mut refused = 0;
    for call in calls {
        let response = within("a concurrent request", call).await.unwrap();
        match response.status() {
            StatusCode::OK => answered += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(retry_after(&response), 1, "a probe is in flight");
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!((answered, refused), (1, 9));
    assert_eq!(origin.accepted(), 1);
}

#[tokio::test]
async fn a_failed_probe_marks_it_unavailable_for_longer() {
    let port = refusing_port().await;
    let gateway = gateway(support::layer(), health(), port);
    let open = trip(&gateway, 5).await;
    assert_eq!(open, Duration::from_secs(1));
    tokio::time::sleep(open).await;
    // The probe is refused too: the second trip in a row doubles the open time.
    let response = call(gateway.clone(), get("/orders")).await;
    assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    let response = call(gateway.clone(), get("/orders")).await;
    assert_eq!(assert_unavailable(response).await, 2);
}

#[tokio::test]
async fn a_probe_whose_client_went_away_does_not_stick() {
    let port = refusing_port().await;
    let gateway = gateway(support::layer(), health(), port);
    let open = trip(&gateway, 5).await;
    let silent = Origin::on(port, Answer::Never).await;
    tokio::time::sleep(open).await;
    // The probe reaches the silent upstream, and its client gives up.
    let probe = gateway.clone().oneshot(get("/orders"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), probe)
            .await
            .is_err()
    );
    assert_eq!(silent.accepted(), 1);
    silent.stop().await;
    // The upstream is back for real: the next request probes, and closes it.
    let origin = Origin::on(port, Answer::Ok).await;
    assert_eq!(statuses(&gateway, "/orders", 1).await, [200]);
    assert_eq!(origin.accepted(), 1, "the next request probed");
    assert_eq!(
        statuses(&gateway, "/orders", 3).await,
        [200; 3],
        "and closed it"
    );
}

#[tokio::test]
async fn forwarding_anyway_keeps_trying_and_the_first_answer_closes_it() {
    let port = refusing_port().await;
    let gateway = gateway(
        support::layer(),
        health().forward_when_unavailable(true),
        port,
    );
    for _ in 0..10 {
        let response = call(gateway.clone(), get("/orders")).await;
        // Forwarded, and refused by the upstream itself.
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    }
    let origin = Origin::on(port, Answer::Ok).await;
    assert_eq!(statuses(&gateway, "/orders", 1).await, [200]);
    assert_eq!(
        origin.accepted(),
        1,
        "the first forwarded request found it back"
    );
    assert_eq!(statuses(&gateway, "/orders", 3).await, [200; 3]);
}

// ---------------------------------------------------------------------------------------------
// Shared state, keys, routers, hostile keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_axum_router_shares_one_state_per_upstream_across_its_clones() {
    let down = refusing_port().await;
    let up = start_upstream().await;
    // A router that picks among two upstreams by path, as the quick start points requests.
    let (down_authority, up_authority) = (down.to_string(), up.addr.to_string());
    let gateway = ServiceBuilder::new()
        .layer(support::layer())
        .map_request(move |request: Request<support::Upload>| {
            let authority = if request.uri().path().starts_with("/down") {
                &down_authority
            } else {
                &up_authority
            };
            support::to_upstream(authority, request)
        })
        .layer(health())
        .service(support::upstream_client());
    // axum clones the service for every request.
    let app = axum::Router::new().fallback_service(gateway);
    let served = support::serve_router(app).await;
    let client = support::http_client();
    let statuses = |path: &'static str, n: usize| {
        let client = client.clone();
        let uri: http::Uri = format!("http://{}{path}", served.addr).parse().unwrap();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                let response = within(path, client.get(uri.clone())).await.unwrap();
                statuses.push(response.status().as_u16());
                read_body(response.into_body()).await;
            }
            statuses
        }
    };
    assert_eq!(
        statuses("/down", 7).await,
        [502, 502, 502, 502, 502, 503, 503]
    );
    assert_eq!(
        statuses("/ok", 5).await,
        [200; 5],
        "the other upstream is its own"
    );
}

#[tokio::test]
async fn a_stream_of_distinct_keys_is_answered_correctly_and_the_table_stays_bounded() {
    let port = refusing_port().await;
    let authority = port.to_string();
    // Keyed by a header a client controls: the worst case for the table.
    let health = health()
        .max_upstreams(64)
        .key_by(|request: &Request<support::Upload>| {
            request
                .headers()
                .get("x-upstream")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        });
    let gateway = ServiceBuilder::new()
        .layer(support::layer())
        .map_request(move |request| support::to_upstream(&authority, request))
        .layer(health)
        .service(support::upstream_client());
    for key in 0..2000u64 {
        let mut request = get("/");
        request
            .headers_mut()
            .insert("x-upstream", key.to_string().parse().unwrap());
        let response = call(gateway.clone(), request).await;
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    }
    // Every slot holds an upstream with a failure to remember now: a new key is not tracked. Its
    // requests are forwarded and answered for what they are, however many fail.
    for _ in 0..10 {
        let mut request = get("/");
        request
            .headers_mut()
            .insert("x-upstream", "999999".parse().unwrap());
        let response = call(gateway.clone(), request).await;
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    }
}

// ---------------------------------------------------------------------------------------------
// With RetryLayer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_policy_does_not_retry_into_an_unavailable_upstream() {
    let port = refusing_port().await;
    let authority = port.to_string();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let gateway = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::new()
                .max_attempts(3)
                .base_delay(Duration::from_millis(1)),
        ))
        .layer(support::layer())
        .map_request(move |request| support::to_upstream(&authority, request))
        .layer(health())
        // What reaches the client: the attempts the health layer let through.
        .map_request(move |request: Request<support::Upload>| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
        })
        .service(support::upstream_client());
    // Three attempts, all refused.
    let response = call(gateway.clone(), get("/orders")).await;
    assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    // Two more failures mark it unavailable; the third attempt is refused, and not retried.
    let response = call(gateway.clone(), get("/orders")).await;
    assert_eq!(
        kind_of(&response),
        Some(ProxyErrorKind::DestinationUnavailable)
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 5);
    // From now on, one refusal per request: no retry, no connection.
    for _ in 0..5 {
        let response = call(gateway.clone(), get("/orders")).await;
        assert_eq!(
            kind_of(&response),
            Some(ProxyErrorKind::DestinationUnavailable)
        );
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 5);
}

// ---------------------------------------------------------------------------------------------
// gRPC callers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_grpc_caller_gets_unavailable_with_the_delay_as_pushback() {
    use crate::grpc_demo::{DemoClient, OK};

    let port = refusing_port().await;
    let authority = port.to_string();
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<support::Upload>();
    let gateway = ServiceBuilder::new()
        .layer(support::layer())
        .map_request(move |request| support::to_upstream(&authority, request))
        .layer(UpstreamHealthLayer::new())
        .service(h2);
    let served = serve_h2c(gateway).await;
    let mut client = within("connecting", DemoClient::connect(served.addr))
        .await
        .unwrap();
    for _ in 0..5 {
        let status = within("a call", client.unary(OK, "hi", None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), ProxyErrorKind::ConnectionRefused.detail());
    }
    let status = within("a call", client.unary(OK, "hi", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        ProxyErrorKind::DestinationUnavailable.detail()
    );
    let metadata = status.metadata();
    assert_eq!(
        metadata.get("proxy-status").unwrap(),
        "edge-1; error=destination_unavailable"
    );
    let seconds: u64 = metadata
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&seconds), "{seconds}");
    let pushback: u64 = metadata
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pushback, seconds * 1000);
}

/// A gateway served with HTTP/1.1 and h2c on one loopback port.
struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_h2c<S, B>(service: S) -> Served
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = within("binding", TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    service.clone().oneshot(request.map(Body::new))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(stream), service)
                .await;
            });
        }
    });
    Served { addr, task }
}

// ---------------------------------------------------------------------------------------------
// Events and span fields
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_transition_is_a_warn_event_with_the_key_and_the_reason() {
    let captured = Captured::default();
    let _guard = captured.install();

    let port = refusing_port().await;
    let gateway = gateway(support::layer(), health(), port);
    let open = trip(&gateway, 5).await;
    let origin = Origin::on(port, Answer::Ok).await;
    tokio::time::sleep(open).await;
    assert_eq!(statuses(&gateway, "/orders", 1).await, [200]);
    assert_eq!(origin.accepted(), 1);
    assert_eq!(statuses(&gateway, "/orders", 1).await, [200]);

    let key = format!("http://{port}");
    let transitions: Vec<(String, String, String)> = captured
        .events()
        .iter()
        .filter(|event| event.fields.contains_key("gateway.upstream_state"))
        .map(|event| {
            assert_eq!(event.level, tracing::Level::WARN);
            assert_eq!(event.fields["gateway.upstream"], key);
            (
                event.fields["message"].clone(),
                event.fields["gateway.upstream_state"].clone(),
                event.fields["reason"].clone(),
            )
        })
        .collect();
    let expected = [
        (
            "upstream marked unavailable",
            "open",
            "5 consecutive failures, the last connection_refused",
        ),
        (
            "upstream open time over: probing",
            "half_open",
            "the open time is over: one request goes through as a probe",
        ),
        ("upstream available again", "closed", "the probe succeeded"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(m, s, r)| ((*m).to_owned(), (*s).to_owned(), (*r).to_owned()))
        .collect();
    assert_eq!(transitions, expected);
    // The refused request's span says why; the probe's says what it was.
    let states: Vec<String> = captured
        .gateway_spans()
        .iter()
        .filter_map(|span| span.fields.get("gateway.upstream_state").cloned())
        .collect();
    assert_eq!(states, ["open", "probe"]);
}

#[tokio::test]
async fn while_unavailable_each_refusal_is_a_debug_event_and_only_the_opening_a_warning() {
    let captured = Captured::default();
    let _guard = captured.install();

    let port = refusing_port().await;
    let gateway = gateway(support::layer(), health(), port);
    for _ in 0..5 {
        let response = call(gateway.clone(), get("/orders")).await;
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    }
    let failures = captured.events().len();
    for _ in 0..9 {
        // Other tests meet the same callsites on other threads, without a subscriber.
        tracing::callsite::rebuild_interest_cache();
        let response = call(gateway.clone(), get("/orders")).await;
        assert_unavailable(response).await;
    }

    let events = captured.events();
    let level_of = |message: &str| -> Vec<tracing::Level> {
        events
            .iter()
            .filter(|event| event.fields.get("message").is_some_and(|m| m == message))
            .map(|event| event.level)
            .collect()
    };
    assert_eq!(
        level_of("upstream marked unavailable"),
        [tracing::Level::WARN],
        "the outage is told once, when it begins"
    );
    let refusals: Vec<tracing::Level> = events
        .iter()
        .filter(|event| {
            event
                .fields
                .get("error.type")
                .is_some_and(|t| t == "destination_unavailable")
        })
        .map(|event| event.level)
        .collect();
    assert_eq!(refusals, [tracing::Level::DEBUG; 9], "{events:?}");
    // Once it is marked unavailable, nothing at INFO or above: a log at INFO stays quiet for
    // the whole outage.
    let loud: Vec<_> = events[failures..]
        .iter()
        .filter(|event| event.level <= tracing::Level::INFO)
        .collect();
    assert!(loud.is_empty(), "{loud:?}");
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_count_transitions_and_unavailable_upstreams() {
    use gateway_errors::metrics::{REQUEST_DURATION, UPSTREAM_TRANSITIONS, UPSTREAMS_UNAVAILABLE};
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    let exporter = InMemoryMetricExporter::default();
    let reader = PeriodicReader::builder(exporter.clone())
        .with_interval(Duration::from_secs(3600))
        .build();
    let provider = SdkMeterProvider::builder().with_reader(reader).build();
    let meter = provider.meter("gateway-errors");

    let port = refusing_port().await;
    let gateway = gateway(
        support::layer().telemetry(Telemetry::new().metrics(&meter)),
        health().metrics(&meter),
        port,
    );
    let open = trip(&gateway, 5).await;

    // The exported points of `name`, by their attributes as `key=value` text.
    let read = |name: &'static str| {
        let provider = provider.clone();
        let exporter = exporter.clone();
        async move {
            within(
                "flushing",
                tokio::task::spawn_blocking(move || provider.force_flush()),
            )
            .await
            .unwrap()
            .unwrap();
            let exports = exporter.get_finished_metrics().unwrap();
            let last = exports.last().unwrap();
            let metric = last
                .scope_metrics()
                .flat_map(|scope| scope.metrics())
                .find(|metric| metric.name() == name)
                .unwrap_or_else(|| panic!("{name} exported"));
            let mut points = Vec::new();
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for point in sum.data_points() {
                        let attributes: Vec<String> = point
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        points.push((attributes.join(","), point.value() as i64));
                    }
                }
                AggregatedMetrics::I64(MetricData::Sum(sum)) => {
                    for point in sum.data_points() {
                        points.push((String::new(), point.value()));
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                    for point in histogram.data_points() {
                        let mut attributes: Vec<String> = point
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        attributes.sort();
                        points.push((attributes.join(","), point.count() as i64));
                    }
                }
                _ => panic!("{name}: an unexpected kind of metric"),
            }
            points.sort();
            points
        }
    };
    assert_eq!(
        read(UPSTREAM_TRANSITIONS).await,
        [("gateway.upstream_state=open".to_owned(), 1)]
    );
    assert_eq!(read(UPSTREAMS_UNAVAILABLE).await, [(String::new(), 1)]);
    let durations = read(REQUEST_DURATION).await;
    assert!(
        durations.contains(&(
            "error.type=destination_unavailable,gateway.fault=upstream,http.request.method=GET,http.response.status_code=503"
                .to_owned(),
            1
        )),
        "{durations:?}"
    );

    let _origin = Origin::on(port, Answer::Ok).await;
    tokio::time::sleep(open).await;
    assert_eq!(statuses(&gateway, "/orders", 1).await, [200]);
    assert_eq!(
        read(UPSTREAM_TRANSITIONS).await,
        [
            ("gateway.upstream_state=closed".to_owned(), 1),
            ("gateway.upstream_state=half_open".to_owned(), 1),
            ("gateway.upstream_state=open".to_owned(), 1),
        ]
    );
    assert_eq!(read(UPSTREAMS_UNAVAILABLE).await, [(String::new(), 0)]);
}

// ---------------------------------------------------------------------------------------------
// With the last good copy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unavailable_upstream_is_answered_from_the_last_good_copy_at_once() {
    let port = refusing_port().await;
    let origin = Origin::on(port, Answer::Ok).await;
    let store = gateway_errors::stale::Store::new().default_window(Duration::from_secs(3600));
    // A client that keeps no idle connection: once the origin stops listening, every request
    // meets the closed port.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let authority = port.to_string();
    let gateway = ServiceBuilder::new()
        .layer(support::layer().serve_stale(store.clone()))
        .map_request(move |request| support::to_upstream(&authority, request))
        .layer(health())
        .service(client);
    let page = || {
        let mut request = get("/page");
        request
            .headers_mut()
            .insert(http::header::HOST, "shop.test".parse().unwrap());
        request
    };

    let first = call(gateway.clone(), page()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(read_body(first.into_body()).await, "ok\n");
    assert_eq!(store.len(), 1);
    origin.stop().await;

    // Five refusals, each hidden by the copy, mark the upstream unavailable all the same.
    for _ in 0..5 {
        let response = call(gateway.clone(), page()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[&gateway_errors::headers::PROXY_STATUS],
            format!("{PROXY_NAME}; error=connection_refused").as_str()
        );
        read_body(response.into_body()).await;
    }
    // The upstream is back, but marked unavailable: the copy answers without a connection.
    let back = Origin::on(port, Answer::Ok).await;
    let response = call(gateway.clone(), page()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[&gateway_errors::headers::PROXY_STATUS],
        format!("{PROXY_NAME}; error=destination_unavailable").as_str()
    );
    let cache_status = response.headers()[&gateway_errors::headers::CACHE_STATUS]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache_status.contains("fwd=stale"), "{cache_status}");
    assert_eq!(read_body(response.into_body()).await, "ok\n");
    assert_eq!(
        back.accepted(),
        0,
        "no connection while it is marked unavailable"
    );
    // A page with no copy gets the 503 itself.
    let response = call(gateway, get("/other")).await;
    assert_unavailable(response).await;
}

// ---------------------------------------------------------------------------------------------
// What a client controls never moves the breaker
// ---------------------------------------------------------------------------------------------

/// A gRPC call whose caller gives itself `grpc-timeout` (e.g. `1m`, one millisecond).
fn grpc_call(grpc_timeout: &str) -> Request<Body> {
    Request::post("/demo.Demo/Ok")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(Body::from(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("a valid request")
}

#[tokio::test]
async fn a_half_open_probe_ended_by_its_callers_deadline_does_not_keep_it_unavailable() {
    let port = refusing_port().await;
    let gateway = gateway(
        support::layer().time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1))),
        health(),
        port,
    );
    let open = trip(&gateway, 5).await;
    // Back, and healthy: it answers in 300 ms, well within the gateway's timeout.
    let origin = Origin::on(port, Answer::After(Duration::from_millis(300))).await;
    tokio::time::sleep(open).await;
    // The first request after the open time is the probe; its caller gave itself a millisecond.
    let response = call(gateway.clone(), grpc_call("1m")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(
        response.headers()["proxy-status"],
        format!("{PROXY_NAME}; error=http_response_timeout").as_str()
    );
    // The upstream is not marked unavailable again: the next request probes, and closes it.
    let started = Instant::now();
    assert_eq!(statuses(&gateway, "/orders", 1).await, [200]);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it reached the origin"
    );
    assert_eq!(statuses(&gateway, "/orders", 3).await, [200; 3]);
    assert!(origin.accepted() >= 1);
}

#[tokio::test]
async fn a_slow_reader_with_a_response_deadline_never_marks_it_unavailable() {
    let upstream = start_upstream().await;
    let layer = || {
        support::layer().time_limits(
            TimeLimits::new()
                .read_timeout(None)
                .response_deadline(Duration::from_millis(300)),
        )
    };
    let health = || UpstreamHealthLayer::new().consecutive_failures(3);
    let slow_reader = gateway(layer(), health(), upstream.addr);
    for _ in 0..3 {
        // A megabyte, read one frame at a time: the first at once, the next after the deadline.
        let response = call(slow_reader.clone(), get("/large?bytes=1048576")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = std::pin::pin!(response.into_body());
        let first = within("the first frame", http_body_util::BodyExt::frame(&mut body)).await;
        assert!(first.is_some_and(|frame| frame.is_ok()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The client still sees the cut, as before: the body ends with the deadline's error.
        let error = loop {
            match within("the next frame", http_body_util::BodyExt::frame(&mut body)).await {
                Some(Ok(_)) => continue,
                Some(Err(error)) => break error,
                None => panic!("the body ran past its response deadline"),
            }
        };
        let kind = error
            .downcast_ref::<ProxyError>()
            .and_then(ProxyError::kind);
        assert_eq!(kind, Some(ProxyErrorKind::HttpResponseTimeout));
    }
    assert_eq!(
        statuses(&slow_reader, "/ok", 1).await,
        [200],
        "the client's slowness is not the upstream's failure"
    );

    // The same deadline on an origin that stalls mid-body: the upstream's failure, as before.
    let stalled = gateway(layer(), health(), upstream.addr);
    for _ in 0..3 {
        let response = call(stalled.clone(), get("/stall-body")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = within(
            "reading /stall-body",
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await;
        assert!(body.is_err(), "cut at the deadline");
    }
    let response = call(stalled.clone(), get("/ok")).await;
    assert_unavailable(response).await;
}

// ---------------------------------------------------------------------------------------------
// Placed outside GatewayErrorLayer, durations as long as Duration::MAX
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn placed_outside_the_gateway_layer_it_says_so_once_with_the_fix() {
    let captured = Captured::default();
    let _guard = captured.install();

    let port = refusing_port().await;
    let warnings = || -> Vec<String> {
        captured
            .events()
            .iter()
            .filter(|event| event.level == tracing::Level::WARN)
            .map(|event| event.fields["message"].clone())
            .filter(|message| message.contains("UpstreamHealthLayer"))
            .collect()
    };
    // Requests as a server gets them (no authority: the layer has no key for them), and as a
    // router that points them at their upstream before every layer would send them.
    let absolute = format!("http://{port}/orders");
    for (shape, target) in [("origin-form", "/orders"), ("absolute", absolute.as_str())] {
        let authority = port.to_string();
        // The wrong order: the health layer sees only the answers GatewayErrorLayer makes.
        let misplaced = ServiceBuilder::new()
            .layer(UpstreamHealthLayer::new().consecutive_failures(3))
            .layer(support::layer())
            .map_request(move |request| support::to_upstream(&authority, request))
            .service(support::upstream_client());
        let before = warnings().len();
        for _ in 0..6 {
            let response = within("a request", misplaced.clone().oneshot(get(target)))
                .await
                .expect("GatewayErrorLayer answers every failure");
            // It never trips: every attempt reaches the closed port.
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{shape}");
        }
        let warnings = warnings();
        assert_eq!(
            warnings.len(),
            before + 1,
            "{shape}: once per layer: {warnings:?}"
        );
        let warning = warnings.last().unwrap();
        for says in [
            "outside GatewayErrorLayer",
            "never marks an upstream unavailable",
            "Place it inside GatewayErrorLayer, next to the client",
        ] {
            assert!(warning.contains(says), "{shape}: {says:?} in {warning}");
        }
    }

    // Placed right, it says nothing of the kind.
    let placed_right = captured.events().len();
    let gateway = gateway(
        support::layer(),
        UpstreamHealthLayer::new().consecutive_failures(3),
        port,
    );
    assert_eq!(statuses(&gateway, "/orders", 4).await, [502, 502, 502, 503]);
    let misplaced_warnings = captured
        .events()
        .iter()
        .skip(placed_right)
        .filter(|event| {
            event
                .fields
                .get("message")
                .is_some_and(|m| m.contains("outside GatewayErrorLayer"))
        })
        .count();
    assert_eq!(misplaced_warnings, 0);
}

#[tokio::test]
async fn every_duration_may_be_duration_max() {
    let port = refusing_port().await;
    let health = UpstreamHealthLayer::new()
        .consecutive_failures(3)
        .open_time(Duration::MAX)
        .max_open_time(Duration::MAX)
        .probe_timeout(Duration::MAX)
        .forget_after(Duration::MAX)
        .failure_ratio(0.5, Duration::MAX, 1000)
        .jitter(0.0);
    let gateway = gateway(support::layer(), health, port);
    assert_eq!(statuses(&gateway, "/orders", 3).await, [502; 3]);
    for _ in 0..3 {
        let response = call(gateway.clone(), get("/orders")).await;
        let seconds = assert_unavailable(response).await;
        assert!(
            seconds > 500 * 365 * 24 * 3600,
            "{seconds}: as long as the layer can count"
        );
    }
    // An upstream that answers, with GatewayErrorLayer's limits as long too.
    let upstream = start_upstream().await;
    let other = gateway_for_max(upstream.addr);
    assert_eq!(statuses(&other, "/ok", 3).await, [200; 3]);
}

/// A gateway whose every limit is `Duration::MAX`, to `upstream`.
fn gateway_for_max(upstream: SocketAddr) -> impl HealthGateway {
    gateway(
        support::layer().time_limits(
            TimeLimits::new()
                .upstream_timeout(Duration::MAX)
                .read_timeout(Duration::MAX)
                .response_deadline(Duration::MAX),
        ),
        UpstreamHealthLayer::new()
            .open_time(Duration::MAX)
            .max_open_time(Duration::MAX)
            .probe_timeout(Duration::MAX),
        upstream,
    )
}
