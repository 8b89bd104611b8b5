//! Brownouts through the adaptive concurrency limit, on real sockets: a loopback origin that
//! serves a few requests at a time and queues the rest (its latency grows with the load), behind
//! the gateway of the quick start with `UpstreamHealthLayer` and its adaptive limit next to the
//! client. What is checked is what a client sees: statuses, `Proxy-Status`, `Retry-After`,
//! bodies, gRPC codes, and how long each answer took.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use gateway_errors::ProxyErrorKind;
use gateway_errors::body::GatewayBody;
use gateway_errors::health::body::HealthBody;
use gateway_errors::health::{AdaptiveLimit, UpstreamHealthLayer};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

use crate::support::{self, Expected, PROXY_NAME, assert_problem, call, read_body, within};

/// An origin in a brownout: it serves `capacity` requests at a time, each for `service`, and
/// queues the rest, so that its latency grows with the load. Stops when dropped.
struct Brownout {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Brownout {
    async fn start(capacity: usize, service: Duration) -> Brownout {
        let listener = within("binding the origin", TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let workers = Arc::new(Semaphore::new(capacity));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let workers = workers.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                        let workers = workers.clone();
                        async move {
                            let _worker = workers.acquire().await.expect("never closed");
                            tokio::time::sleep(service).await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"ok\n",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Brownout { addr, task }
    }
}

impl Drop for Brownout {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The quick start's gateway with the health layer and its adaptive limit next to the client.
fn gateway(
    health: UpstreamHealthLayer,
    upstream: SocketAddr,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<GatewayBody<HealthBody<Incoming>>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let authority = upstream.to_string();
    ServiceBuilder::new()
        .layer(support::layer())
        .map_request(move |request| support::to_upstream(&authority, request))
        .layer(health)
        .service(support::upstream_client())
}

fn get() -> Request<Body> {
    support::request("GET", "/orders", None)
}

fn refusal() -> Expected<'static> {
    Expected::kind(
        ProxyErrorKind::ConnectionLimitReached,
        "edge-1; error=connection_limit_reached",
        true,
    )
}

#[tokio::test]
async fn a_request_above_the_limit_is_refused_at_once_and_never_trips_the_breaker() {
    assert_eq!(PROXY_NAME, "edge-1");
    let origin = Brownout::start(1, Duration::from_millis(400)).await;
    // A breaker that opens at the first failure: a refusal counted as one would open it.
    let health = UpstreamHealthLayer::new()
        .consecutive_failures(1)
        .adaptive_limit(AdaptiveLimit::new().initial(1).max(1));
    let gateway = gateway(health, origin.addr);
    let busy = tokio::spawn(call(gateway.clone(), get()));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let response = call(gateway.clone(), get()).await;
    let elapsed = started.elapsed();
    assert_eq!(response.headers()["retry-after"], "1");
    let body = assert_problem(response, &refusal()).await;
    assert_eq!(body["retry_after"], 1);
    assert!(elapsed < Duration::from_millis(100), "at once: {elapsed:?}");
    // A POST too: it was never sent.
    let response = call(gateway.clone(), support::request("POST", "/orders", None)).await;
    assert_problem(response, &refusal()).await;
    // A gRPC caller: UNAVAILABLE, with the delay as pushback.
    let grpc = Request::post("/demo.Demo/Ok")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::from(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("a valid request");
    let response = call(gateway.clone(), grpc).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "1000");

    let first = within("the request in flight", busy)
        .await
        .expect("not cancelled");
    assert_eq!(first.status(), StatusCode::OK);
    read_body(first.into_body()).await;
    // Three refusals, and the breaker that opens at one failure is still closed.
    let response = call(gateway.clone(), get()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(read_body(response.into_body()).await, "ok\n");
}

#[tokio::test]
async fn a_brownout_origin_gets_the_load_it_serves_and_the_rest_a_fast_503() {
    // Serves 2 at a time in 50 ms: 40 requests a second. Offered by 24 clients at once, without
    // a limit each request would wait some 600 ms in the origin's queue.
    let origin = Brownout::start(2, Duration::from_millis(50)).await;
    let health = UpstreamHealthLayer::new().adaptive_limit(
        AdaptiveLimit::new()
            .initial(2)
            .window(Duration::from_millis(50)),
    );
    let gateway = gateway(health, origin.addr);
    let until = Instant::now() + Duration::from_millis(2_000);
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    let response = call(gateway.clone(), get()).await;
                    let status = response.status();
                    let proxy_status = response
                        .headers()
                        .get("proxy-status")
                        .map(|value| value.to_str().unwrap_or_default().to_owned());
                    read_body(response.into_body()).await;
                    seen.push((status, started.elapsed(), proxy_status));
                    if status != StatusCode::OK {
                        // A refused client comes back a little later, as a real one would.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                seen
            })
        })
        .collect();
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(
            within("a client's loop", client)
                .await
                .expect("not cancelled"),
        );
    }
    let percentile = |mut latencies: Vec<Duration>, p: f64| -> Duration {
        latencies.sort();
        latencies[((latencies.len() - 1) as f64 * p) as usize]
    };
    let served: Vec<Duration> = seen
        .iter()
        .filter(|(status, ..)| *status == StatusCode::OK)
        .map(|(_, latency, _)| *latency)
        .collect();
    let refused: Vec<Duration> = seen
        .iter()
        .filter(|(status, ..)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .map(|(_, latency, _)| *latency)
        .collect();
    assert_eq!(
        served.len() + refused.len(),
        seen.len(),
        "only answers and refusals"
    );
    assert!(
        seen.iter()
            .filter(|(status, ..)| *status != StatusCode::OK)
            .all(|(.., proxy_status)| proxy_status.as_deref()
                == Some("edge-1; error=connection_limit_reached")),
        "every refusal is the limit's, never the breaker's"
    );
    // The origin kept busy: at least half its capacity (40 a second) over the 2 s.
    assert!(served.len() >= 40, "served {}", served.len());
    assert!(!refused.is_empty(), "the excess is refused");
    // The served wait little in the origin's queue; the refused are told at once.
    let served_p90 = percentile(served, 0.9);
    assert!(
        served_p90 < Duration::from_millis(300),
        "served p90 {served_p90:?}: without the limit, some 600 ms"
    );
    let refused_p90 = percentile(refused, 0.9);
    assert!(
        refused_p90 < Duration::from_millis(50),
        "refused p90 {refused_p90:?}"
    );
}

/// Every value recorded in a span's `gateway.concurrency_limit`.
#[cfg(feature = "metrics")]
#[derive(Clone, Default)]
struct SpanLimits(Arc<std::sync::Mutex<Vec<i64>>>);

#[cfg(feature = "metrics")]
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanLimits {
    fn on_record(
        &self,
        _span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit<'a>(&'a std::sync::Mutex<Vec<i64>>);
        impl tracing::field::Visit for Visit<'_> {
            fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
                if field.name() == "gateway.concurrency_limit" {
                    self.0.lock().expect("not poisoned").push(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        values.record(&mut Visit(&self.0));
    }
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn a_refusal_is_on_the_span_and_in_the_upstreams_metrics() {
    use gateway_errors::metrics::{
        UPSTREAM_CONCURRENCY_LIMIT, UPSTREAM_IN_FLIGHT, UPSTREAM_LIMIT_REFUSALS,
    };
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    use tracing_subscriber::layer::SubscriberExt;

    let spans = SpanLimits::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    // Callsites first met on another thread while no subscriber was set may have cached
    // "never": ask again now that this one is.
    tracing::callsite::rebuild_interest_cache();
    let exporter = InMemoryMetricExporter::default();
    let reader = PeriodicReader::builder(exporter.clone())
        .with_interval(Duration::from_secs(3600))
        .build();
    let provider = SdkMeterProvider::builder().with_reader(reader).build();

    let origin = Brownout::start(1, Duration::from_millis(300)).await;
    let health = UpstreamHealthLayer::new()
        .adaptive_limit(AdaptiveLimit::new().initial(1).max(1))
        .metrics(&provider.meter("gateway-errors"));
    let gateway = gateway(health, origin.addr);
    let busy = tokio::spawn(call(gateway.clone(), get()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        // Other tests meet the same callsites on other threads, without a subscriber.
        tracing::callsite::rebuild_interest_cache();
        let response = call(gateway.clone(), get()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        read_body(response.into_body()).await;
    }
    let first = within("the request in flight", busy)
        .await
        .expect("not cancelled");
    read_body(first.into_body()).await;
    assert_eq!(*spans.0.lock().expect("not poisoned"), [1, 1, 1]);

    within(
        "flushing the metrics",
        tokio::task::spawn_blocking(move || provider.force_flush()),
    )
    .await
    .expect("the flush task ran")
    .expect("the flush succeeded");
    let exports = exporter.get_finished_metrics().expect("exported");
    let metrics: Vec<_> = exports
        .last()
        .expect("an export")
        .scope_metrics()
        .flat_map(|scope| scope.metrics())
        .collect();
    let upstream = format!("http://{}", origin.addr);
    let value = |name: &str| -> (String, u64) {
        let metric = metrics
            .iter()
            .find(|metric| metric.name() == name)
            .unwrap_or_else(|| panic!("{name} exported"));
        let points: Vec<_> = match metric.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                .data_points()
                .map(|p| (p.attributes().cloned().collect::<Vec<_>>(), p.value()))
                .collect(),
            AggregatedMetrics::U64(MetricData::Gauge(gauge)) => gauge
                .data_points()
                .map(|p| (p.attributes().cloned().collect::<Vec<_>>(), p.value()))
                .collect(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(points.len(), 1, "{name}: one upstream");
        let (attributes, value) = points.into_iter().next().expect("a point");
        assert_eq!(attributes.len(), 1);
        assert_eq!(attributes[0].key.as_str(), "gateway.upstream");
        (attributes[0].value.to_string(), value)
    };
    assert_eq!(value(UPSTREAM_LIMIT_REFUSALS), (upstream.clone(), 3));
    // Recorded when the first request's answer closed a window.
    assert_eq!(value(UPSTREAM_CONCURRENCY_LIMIT), (upstream.clone(), 1));
    assert_eq!(value(UPSTREAM_IN_FLIGHT), (upstream, 0));
}

/// An event's level, and its `error.type` if it has one.
type Seen = (tracing::Level, Option<String>);

/// Every event, as [`Seen`].
#[derive(Clone, Default)]
struct Events(Arc<std::sync::Mutex<Vec<Seen>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Visit<'a>(&'a mut Option<String>);
        impl tracing::field::Visit for Visit<'_> {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "error.type" {
                    *self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut error_type = None;
        event.record(&mut Visit(&mut error_type));
        let level = *event.metadata().level();
        self.0
            .lock()
            .expect("not poisoned")
            .push((level, error_type));
    }
}

#[tokio::test]
async fn each_refusal_is_a_debug_event_not_a_line_at_info() {
    use tracing_subscriber::layer::SubscriberExt;

    let events = Events::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    tracing::callsite::rebuild_interest_cache();

    let origin = Brownout::start(1, Duration::from_secs(1)).await;
    let health = UpstreamHealthLayer::new().adaptive_limit(AdaptiveLimit::new().initial(1).max(1));
    let gateway = gateway(health, origin.addr);
    let busy = tokio::spawn(call(gateway.clone(), get()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..9 {
        // Other tests meet the same callsites on other threads, without a subscriber.
        tracing::callsite::rebuild_interest_cache();
        let response = call(gateway.clone(), get()).await;
        assert_problem(response, &refusal()).await;
    }
    let first = within("the request in flight", busy)
        .await
        .expect("not cancelled");
    assert_eq!(first.status(), StatusCode::OK);
    read_body(first.into_body()).await;

    let events = events.0.lock().expect("not poisoned").clone();
    let refusals: Vec<tracing::Level> = events
        .iter()
        .filter(|(_, error_type)| error_type.as_deref() == Some("connection_limit_reached"))
        .map(|(level, _)| *level)
        .collect();
    assert_eq!(refusals, [tracing::Level::DEBUG; 9], "{events:?}");
    let loud: Vec<_> = events
        .iter()
        .filter(|(level, _)| *level <= tracing::Level::INFO)
        .collect();
    assert!(loud.is_empty(), "{loud:?}");
}
