//! The whole stack, composed as a user composes it, against loopback upstreams that refuse and
//! stall:
//!
//! ```text
//! RetryLayer → GatewayErrorLayer (with a stale copy store) → route by path →
//!     UpstreamHealthLayer → hyper-util client
//! ```
//!
//! What a user checks: a retried request is one request to spans, logs and metrics; one deadline
//! bounds all its attempts; and each piece placed in the wrong order says so once.
//!
//! Events and spans are captured for the test's thread only (`set_default`; each test runs on its
//! own current-thread runtime, where hyper-util's connection tasks run too).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
#[cfg(feature = "metrics")]
use gateway_errors::Telemetry;
use gateway_errors::body::GatewayBody;
use gateway_errors::health::UpstreamHealthLayer;
use gateway_errors::health::body::HealthBody;
use gateway_errors::retry::{RetryLayer, RetryPolicy};
use gateway_errors::stale;
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, TimeLimits};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing::Level;

use crate::support::capture::Captured;
use crate::support::{self, Upload, demo_upstream, read_body, to_upstream, within};

// ---------------------------------------------------------------------------------------------
// What the test captures
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Upstreams and the stack
// ---------------------------------------------------------------------------------------------

/// An origin that accepts connections, reads, and never answers; it counts the connections.
struct Stalling {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stalling() -> Stalling {
    let listener = within("binding", TcpListener::bind("127.0.0.1:0"))
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    Stalling {
        addr,
        accepted,
        task,
    }
}

/// Where each path prefix goes, and how many requests the router sent (attempts included).
#[derive(Clone)]
struct Routes {
    refusing: SocketAddr,
    stalling: SocketAddr,
    sent: Arc<AtomicUsize>,
}

impl Routes {
    fn new(refusing: SocketAddr, stalling: SocketAddr) -> Self {
        Routes {
            refusing,
            stalling,
            sent: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Points `request` at the upstream its path names.
    fn route(&self, request: Request<Upload>) -> Request<Upload> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let upstream = if request.uri().path().starts_with("/stalling/") {
            self.stalling
        } else {
            self.refusing
        };
        to_upstream(&upstream.to_string(), request)
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }
}

/// Quick retries: milliseconds of backoff, three attempts.
fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(3)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20))
}

fn layer() -> GatewayErrorLayer {
    support::layer().serve_stale(stale::Store::new())
}

/// The stack in the order it belongs.
fn stack(
    layer: GatewayErrorLayer,
    routes: &Routes,
) -> impl Service<
    Request<Body>,
    Response = Response<GatewayBody<HealthBody<Incoming>>>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let routes = routes.clone();
    ServiceBuilder::new()
        .layer(RetryLayer::new(policy()))
        .layer(layer)
        .map_request(move |request| routes.route(request))
        .layer(UpstreamHealthLayer::new())
        .service(support::upstream_client())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("accept", "application/problem+json")
        .body(Body::empty())
        .expect("request")
}

fn kind_of<B>(response: &Response<B>) -> Option<ProxyErrorKind> {
    response
        .extensions()
        .get::<ProxyError>()
        .and_then(ProxyError::kind)
}

/// The count of `gateway.errors.generated` and of `http.server.request.duration`, in all.
#[cfg(feature = "metrics")]
mod counted {
    use std::time::Duration;

    use gateway_errors::metrics::{ERRORS_GENERATED, REQUEST_DURATION};
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    use crate::support::within;

    pub struct Pipeline {
        provider: SdkMeterProvider,
        exporter: InMemoryMetricExporter,
    }

    impl Pipeline {
        pub fn new() -> Self {
            let exporter = InMemoryMetricExporter::default();
            let reader = PeriodicReader::builder(exporter.clone())
                .with_interval(Duration::from_secs(3600))
                .build();
            let provider = SdkMeterProvider::builder().with_reader(reader).build();
            Pipeline { provider, exporter }
        }

        pub fn meter(&self) -> opentelemetry::metrics::Meter {
            self.provider.meter("gateway-errors")
        }

        /// (generated errors, recorded durations), as exported now.
        pub async fn counts(&self) -> (u64, u64) {
            let provider = self.provider.clone();
            within(
                "flushing the metrics",
                tokio::task::spawn_blocking(move || provider.force_flush()),
            )
            .await
            .expect("the flush task ran")
            .expect("the flush succeeded");
            let exports = self.exporter.get_finished_metrics().expect("exported");
            let Some(last) = exports.last() else {
                return (0, 0);
            };
            let (mut errors, mut durations) = (0, 0);
            for metric in last.scope_metrics().flat_map(|scope| scope.metrics()) {
                match (metric.name(), metric.data()) {
                    (name, AggregatedMetrics::U64(MetricData::Sum(sum)))
                        if name == ERRORS_GENERATED =>
                    {
                        errors += sum.data_points().map(|p| p.value()).sum::<u64>();
                    }
                    (name, AggregatedMetrics::F64(MetricData::Histogram(histogram)))
                        if name == REQUEST_DURATION =>
                    {
                        durations += histogram.data_points().map(|p| p.count()).sum::<u64>();
                    }
                    _ => {}
                }
            }
            (errors, durations)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The right order
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_get_retried_three_times_is_one_request_to_spans_logs_and_metrics() {
    let captured = Captured::default();
    let _guard = captured.install();
    let stall = stalling().await;
    let routes = Routes::new(demo_upstream::closed_port(), stall.addr);
    #[cfg(feature = "metrics")]
    let pipeline = counted::Pipeline::new();
    #[cfg(feature = "metrics")]
    let layer = layer().telemetry(Telemetry::new().metrics(&pipeline.meter()));
    #[cfg(not(feature = "metrics"))]
    let layer = layer();
    let gateway = stack(layer, &routes);

    let response = within("a request", gateway.oneshot(get("/refusing/orders")))
        .await
        .unwrap_or_else(|never| match never {});

    // Three attempts reached the upstream; the client got the last one's answer.
    assert_eq!(routes.sent(), 3);
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    assert!(
        response
            .extensions()
            .get::<ProxyError>()
            .unwrap()
            .is_retryable()
    );
    read_body(response.into_body()).await;

    // One span, which says the request was sent again twice.
    let spans = captured.gateway_spans();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.fields["http.request.resend_count"], "2", "{span:#?}");
    assert_eq!(span.fields["error.type"], "connection_refused");
    assert_eq!(span.fields["http.response.status_code"], "502");

    // One WARN for the one failure the client saw; each retry a DEBUG event.
    let warnings = captured.events_at(Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].message(), "upstream request failed");
    let retries: Vec<_> = captured
        .events_at(Level::DEBUG)
        .into_iter()
        .filter(|e| e.message() == "retrying the upstream request")
        .collect();
    assert_eq!(retries.len(), 2, "{retries:#?}");
    assert_eq!(retries[0].fields["http.request.resend_count"], "1");
    assert_eq!(retries[1].fields["http.request.resend_count"], "2");

    // One count in the metrics.
    #[cfg(feature = "metrics")]
    assert_eq!(pipeline.counts().await, (1, 1), "(errors, durations)");
}

#[tokio::test]
async fn one_deadline_bounds_every_attempt_of_a_request() {
    let stall = stalling().await;
    let routes = Routes::new(demo_upstream::closed_port(), stall.addr);
    let gateway = stack(
        layer().time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300))),
        &routes,
    );

    let started = Instant::now();
    let response = within("a request", gateway.oneshot(get("/stalling/orders")))
        .await
        .unwrap_or_else(|never| match never {});
    let elapsed = started.elapsed();

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        kind_of(&response),
        Some(ProxyErrorKind::HttpResponseTimeout)
    );
    // The upstream timeout is the whole request's: no attempt after it ran out, and 300 ms, not
    // three times that.
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(600),
        "{elapsed:?}"
    );
    assert_eq!(routes.sent(), 1);
    assert_eq!(stall.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_later_attempt_gets_what_is_left_of_the_upstream_timeout() {
    // Refused at once twice, 100 ms apart, then the third attempt stalls: it is cut when the
    // request's 300 ms are up, about 100 ms after it began, not 300 ms after.
    let stall = stalling().await;
    let refusing = demo_upstream::closed_port();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let stalling_at = stall.addr;
    let gateway = ServiceBuilder::new()
        .layer(RetryLayer::new(
            policy()
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_millis(100))
                .jitter(0.0),
        ))
        .layer(layer().time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300))))
        .map_request(move |request: Request<Upload>| {
            let attempt = counted.fetch_add(1, Ordering::SeqCst);
            let upstream = if attempt < 2 { refusing } else { stalling_at };
            to_upstream(&upstream.to_string(), request)
        })
        .service(support::upstream_client());

    let started = Instant::now();
    let response = within("a request", gateway.oneshot(get("/orders")))
        .await
        .unwrap_or_else(|never| match never {});
    let elapsed = started.elapsed();

    assert_eq!(sent.load(Ordering::SeqCst), 3);
    assert_eq!(
        kind_of(&response),
        Some(ProxyErrorKind::HttpResponseTimeout)
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(450),
        "{elapsed:?}"
    );
    assert_eq!(stall.accepted.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// The wrong orders
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_inside_the_layer_warns_once_and_the_request_is_still_answered() {
    let captured = Captured::default();
    let _guard = captured.install();
    let routes = Routes::new(demo_upstream::closed_port(), demo_upstream::closed_port());
    let inner_routes = routes.clone();
    // The client takes the caller's body as it came: the router unwraps it, and the retry sits
    // between the two, inside the layer.
    let gateway = ServiceBuilder::new()
        .layer(layer())
        .map_request(move |request| {
            inner_routes
                .route(request)
                .map(gateway_errors::body::UploadBody::into_inner)
        })
        .layer(RetryLayer::new(policy()))
        .service(support::http_client());

    for _ in 0..3 {
        let response = within(
            "a request",
            gateway.clone().oneshot(get("/refusing/orders")),
        )
        .await
        .unwrap_or_else(|never| match never {});
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
        read_body(response.into_body()).await;
    }
    // Sent once each: a retry service that no layer answers to cannot retry.
    assert_eq!(routes.sent(), 3);
    let misplaced: Vec<_> = captured
        .events_at(Level::WARN)
        .into_iter()
        .filter(|e| e.message().starts_with("RetryLayer sees requests"))
        .collect();
    assert_eq!(misplaced.len(), 1, "{misplaced:#?}");
    assert!(
        misplaced[0]
            .message()
            .contains("Place it outside GatewayErrorLayer"),
        "{}",
        misplaced[0].message()
    );
}

#[tokio::test]
async fn health_outside_the_layer_warns_once_and_retries_still_work() {
    let captured = Captured::default();
    let _guard = captured.install();
    let routes = Routes::new(demo_upstream::closed_port(), demo_upstream::closed_port());
    let inner_routes = routes.clone();
    let gateway = ServiceBuilder::new()
        .layer(RetryLayer::new(policy()))
        .layer(UpstreamHealthLayer::new())
        .layer(layer())
        .map_request(move |request| inner_routes.route(request))
        .service(support::upstream_client());

    for _ in 0..2 {
        let response = within(
            "a request",
            gateway.clone().oneshot(get("/refusing/orders")),
        )
        .await
        .expect("the health layer forwards the answer");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        read_body(response.into_body()).await;
    }
    // The retry still sees the layer: three attempts each.
    assert_eq!(routes.sent(), 6);
    let misplaced: Vec<_> = captured
        .events_at(Level::WARN)
        .into_iter()
        .filter(|e| {
            e.message()
                .starts_with("UpstreamHealthLayer is placed outside GatewayErrorLayer")
        })
        .collect();
    assert_eq!(misplaced.len(), 1, "{misplaced:#?}");
}
