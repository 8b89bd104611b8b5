//! The OpenTelemetry metrics (feature `metrics`), as an exporter receives them, after real
//! failures of a loopback upstream: the exact count of every attribute set of
//! `http.server.request.duration` and of `gateway.errors.generated`, the instruments' units and
//! boundaries, and attributes whose number cannot grow with traffic.
//!
//! Each test has its own meter provider, with the SDK's in-memory exporter behind a periodic
//! reader whose interval is far longer than the test: the metrics reach the exporter only when
//! the test flushes them.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{
    self, call, demo_upstream, gateway_to, read_body, request, start_upstream, within,
};
use gateway_errors::GatewayErrorLayer;
use gateway_errors::Telemetry;
use gateway_errors::TimeLimits;
use gateway_errors::metrics::{DURATION_BOUNDARIES, ERRORS_GENERATED, REQUEST_DURATION};
use http::StatusCode;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData};
use opentelemetry_sdk::metrics::{
    InMemoryMetricExporter, PeriodicReader, SdkMeterProvider, Temporality,
};

/// How many requests of each kind the tests send.
const N: u64 = 3;

/// A meter provider whose metrics the test reads when it wants them.
struct Pipeline {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Pipeline {
    fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone())
            // Never on its own during a test: only `force_flush` exports.
            .with_interval(Duration::from_secs(3600))
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        Pipeline { provider, exporter }
    }

    /// The layer every test gateway uses, recording into this pipeline.
    fn layer(&self) -> GatewayErrorLayer {
        support::layer().telemetry(Telemetry::new().metrics(&self.provider.meter("gateway-errors")))
    }

    /// Exports what was recorded so far and reads the named metric as the exporter got it; `None`
    /// when nothing was recorded in it (the SDK then exports nothing).
    async fn exported<R>(&self, name: &str, read: impl FnOnce(&Metric) -> R) -> Option<R> {
        let provider = self.provider.clone();
        within(
            "flushing the metrics",
            tokio::task::spawn_blocking(move || provider.force_flush()),
        )
        .await
        .expect("the flush task ran")
        .expect("the flush succeeded");
        let exports = self.exporter.get_finished_metrics().expect("exported");
        let last = exports.last()?;
        let mut found = last
            .scope_metrics()
            .filter(|scope| scope.scope().name() == "gateway-errors")
            .flat_map(|scope| scope.metrics())
            .filter(|metric| metric.name() == name);
        let metric = found.next()?;
        assert!(found.next().is_none(), "{name} exported twice");
        Some(read(metric))
    }

    /// The duration histogram's points, as exported now.
    async fn durations(&self) -> BTreeMap<Attributes, DurationPoint> {
        let points = self.exported(REQUEST_DURATION, duration_points).await;
        points.unwrap_or_default()
    }

    /// The generated error counter's values, as exported now.
    async fn errors(&self) -> BTreeMap<Attributes, u64> {
        let counts = self.exported(ERRORS_GENERATED, error_counts).await;
        counts.unwrap_or_default()
    }
}

/// A data point's attributes, as `key=value` pairs in key order.
type Attributes = BTreeMap<String, String>;

fn attributes<'a>(pairs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Attributes {
    pairs
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

/// The attribute set a test expects: `(key, value)` pairs.
fn set(pairs: &[(&str, &str)]) -> Attributes {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// One histogram data point, reduced to what the tests check.
#[derive(Debug)]
struct DurationPoint {
    count: u64,
    sum: f64,
    bounds: Vec<f64>,
    bucket_counts: Vec<u64>,
}

/// The duration histogram's points by attribute set. Checks the instrument itself on the way:
/// seconds, cumulative, the advised boundaries on every point.
fn duration_points(metric: &Metric) -> BTreeMap<Attributes, DurationPoint> {
    assert_eq!(metric.unit(), "s");
    let AggregatedMetrics::F64(MetricData::Histogram(histogram)) = metric.data() else {
        panic!(
            "{} is not an f64 histogram: {:?}",
            metric.name(),
            metric.data()
        );
    };
    assert_eq!(histogram.temporality(), Temporality::Cumulative);
    let mut points = BTreeMap::new();
    for point in histogram.data_points() {
        let previous = points.insert(
            attributes(point.attributes()),
            DurationPoint {
                count: point.count(),
                sum: point.sum(),
                bounds: point.bounds().collect(),
                bucket_counts: point.bucket_counts().collect(),
            },
        );
        assert!(previous.is_none(), "an attribute set exported twice");
    }
    points
}

/// The error counter's values by attribute set. Checks it is a monotonic count of `{error}`.
fn error_counts(metric: &Metric) -> BTreeMap<Attributes, u64> {
    assert_eq!(metric.unit(), "{error}");
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
        panic!("{} is not a u64 sum: {:?}", metric.name(), metric.data());
    };
    assert!(sum.is_monotonic(), "a counter only goes up");
    sum.data_points()
        .map(|point| (attributes(point.attributes()), point.value()))
        .collect()
}

/// Sends `method path` through `gateway`, with a request id that must never become an attribute,
/// and reads the whole response.
async fn exchange(gateway: impl support::GatewayService, method: &str, path: &str) -> StatusCode {
    let mut request = request(method, path, Some("application/problem+json"));
    request
        .headers_mut()
        .insert("x-request-id", "req-7f3a9c".parse().unwrap());
    let response = call(gateway, request).await;
    let status = response.status();
    read_body(response.into_body()).await;
    status
}

/// Every attribute key and value of every point, for the checks that hold whatever was sent.
fn all_attributes(
    durations: &BTreeMap<Attributes, DurationPoint>,
    errors: &BTreeMap<Attributes, u64>,
) -> Vec<(String, String)> {
    durations
        .keys()
        .chain(errors.keys())
        .flat_map(|set| set.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

#[tokio::test]
async fn every_failure_kind_is_counted_with_exact_attributes() {
    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let layer = pipeline
        .layer()
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300)));
    let to_upstream = gateway_to(layer.clone(), upstream.addr);
    let to_closed_port = gateway_to(layer, demo_upstream::closed_port());

    // Sequential, so each upstream connection is used by one request at a time; /slow last,
    // concurrently, since each waits for the upstream timeout.
    let cases: [(&str, &str, StatusCode); 7] = [
        ("GET", "/ok?user=12345", StatusCode::OK),
        ("GET", "/origin-500", StatusCode::INTERNAL_SERVER_ERROR),
        ("GET", "/close", StatusCode::BAD_GATEWAY),
        ("GET", "/reset", StatusCode::BAD_GATEWAY),
        ("POST", "/close", StatusCode::BAD_GATEWAY),
        ("GET", "/garbage", StatusCode::BAD_GATEWAY),
        ("GET", "/huge-head", StatusCode::BAD_GATEWAY),
    ];
    for _ in 0..N {
        for (method, path, status) in cases {
            assert_eq!(
                exchange(to_upstream.clone(), method, path).await,
                status,
                "{method} {path}"
            );
        }
        assert_eq!(
            exchange(to_closed_port.clone(), "POST", "/orders/12345").await,
            StatusCode::BAD_GATEWAY
        );
    }
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..N {
        slow.spawn(exchange(to_upstream.clone(), "GET", "/slow"));
    }
    while let Some(status) = slow.join_next().await {
        assert_eq!(status.expect("no panic"), StatusCode::GATEWAY_TIMEOUT);
    }

    let durations = pipeline.durations().await;
    let errors = pipeline.errors().await;

    let method = "http.request.method";
    let status = "http.response.status_code";
    let error_type = "error.type";
    let fault = "gateway.fault";
    let expected_durations = BTreeMap::from([
        (set(&[(method, "GET"), (status, "200")]), N),
        (
            set(&[
                (method, "GET"),
                (status, "500"),
                (error_type, "500"),
                (fault, "upstream"),
            ]),
            N,
        ),
        (
            set(&[
                (method, "GET"),
                (status, "502"),
                (error_type, "connection_terminated"),
                (fault, "upstream"),
            ]),
            2 * N,
        ),
        (
            set(&[
                (method, "POST"),
                (status, "502"),
                (error_type, "connection_terminated"),
                (fault, "upstream"),
            ]),
            N,
        ),
        (
            set(&[
                (method, "GET"),
                (status, "502"),
                (error_type, "http_protocol_error"),
                (fault, "upstream"),
            ]),
            N,
        ),
        (
            set(&[
                (method, "GET"),
                (status, "502"),
                (error_type, "http_response_header_section_size"),
                (fault, "upstream"),
            ]),
            N,
        ),
        (
            set(&[
                (method, "POST"),
                (status, "502"),
                (error_type, "connection_refused"),
                (fault, "upstream"),
            ]),
            N,
        ),
        (
            set(&[
                (method, "GET"),
                (status, "504"),
                (error_type, "http_response_timeout"),
                (fault, "upstream"),
            ]),
            N,
        ),
    ]);
    let counts: BTreeMap<_, _> = durations
        .iter()
        .map(|(set, point)| (set.clone(), point.count))
        .collect();
    assert_eq!(counts, expected_durations);

    for (set, point) in &durations {
        assert_eq!(point.bounds, DURATION_BOUNDARIES, "{set:?}");
        assert_eq!(point.bucket_counts.len(), DURATION_BOUNDARIES.len() + 1);
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
    }
    // The timed-out requests waited at least the upstream timeout: none lands in a bucket that
    // ends at or below 0.25 s, and their sum is at least N × 0.3 s.
    let timeouts = &durations[&set(&[
        (method, "GET"),
        (status, "504"),
        (error_type, "http_response_timeout"),
        (fault, "upstream"),
    ])];
    let below_quarter_second = DURATION_BOUNDARIES
        .iter()
        .take_while(|bound| **bound <= 0.25)
        .count();
    assert!(
        timeouts.bucket_counts[..below_quarter_second]
            .iter()
            .all(|count| *count == 0),
        "{timeouts:?}"
    );
    assert!(timeouts.sum >= 0.3 * N as f64, "{timeouts:?}");

    let retryable = "gateway.retryable";
    let expected_errors = BTreeMap::from([
        // A GET may be sent again after a dropped connection; a POST that may have arrived may
        // not; a refused POST never left.
        (
            set(&[
                (error_type, "connection_terminated"),
                (fault, "upstream"),
                (retryable, "true"),
                (status, "502"),
            ]),
            2 * N,
        ),
        (
            set(&[
                (error_type, "connection_terminated"),
                (fault, "upstream"),
                (retryable, "false"),
                (status, "502"),
            ]),
            N,
        ),
        (
            set(&[
                (error_type, "http_protocol_error"),
                (fault, "upstream"),
                (retryable, "true"),
                (status, "502"),
            ]),
            N,
        ),
        (
            set(&[
                (error_type, "http_response_header_section_size"),
                (fault, "upstream"),
                (retryable, "true"),
                (status, "502"),
            ]),
            N,
        ),
        (
            set(&[
                (error_type, "connection_refused"),
                (fault, "upstream"),
                (retryable, "true"),
                (status, "502"),
            ]),
            N,
        ),
        (
            set(&[
                (error_type, "http_response_timeout"),
                (fault, "upstream"),
                (retryable, "true"),
                (status, "504"),
            ]),
            N,
        ),
    ]);
    assert_eq!(errors, expected_errors);

    // Nothing of the request that grows with traffic: no path, query, id or address.
    for (key, value) in all_attributes(&durations, &errors) {
        for leak in ["/", "12345", "req-7f3a9c", "127.0.0.1"] {
            assert!(!value.contains(leak), "{key}={value} holds {leak:?}");
        }
    }
}

#[tokio::test]
async fn methods_outside_the_known_set_fold_to_other() {
    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let gateway = gateway_to(pipeline.layer(), upstream.addr);

    for method in ["GET", "PURGE", "get", "PROPFIND", "PATCH"] {
        for _ in 0..N {
            assert_eq!(
                exchange(gateway.clone(), method, "/ok").await,
                StatusCode::OK,
                "{method}"
            );
        }
    }

    let durations = pipeline.durations().await;
    let counts: BTreeMap<_, _> = durations
        .iter()
        .map(|(set, point)| (set.clone(), point.count))
        .collect();
    let with_method = |name| {
        set(&[
            ("http.request.method", name),
            ("http.response.status_code", "200"),
        ])
    };
    assert_eq!(
        counts,
        BTreeMap::from([
            (with_method("GET"), N),
            (with_method("PATCH"), N),
            // PURGE, the lowercase `get` (methods are case-sensitive) and PROPFIND.
            (with_method("_OTHER"), 3 * N),
        ])
    );
}

#[tokio::test]
async fn an_intercepted_origin_error_counts_under_its_status() {
    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let layer = pipeline
        .layer()
        .failure_statuses([StatusCode::from_u16(500).unwrap()]);
    let gateway = gateway_to(layer, upstream.addr);

    for _ in 0..N {
        for (path, status) in [
            ("/origin-500", StatusCode::INTERNAL_SERVER_ERROR),
            ("/origin-503", StatusCode::SERVICE_UNAVAILABLE),
        ] {
            assert_eq!(exchange(gateway.clone(), "GET", path).await, status);
        }
    }

    let errors = pipeline.errors().await;
    // The replaced 500 was generated (no RFC 9209 type: the origin's status names it); the 503
    // went through untouched and is no generated error.
    assert_eq!(
        errors,
        BTreeMap::from([(
            set(&[
                ("error.type", "500"),
                ("gateway.fault", "upstream"),
                ("gateway.retryable", "true"),
                ("http.response.status_code", "500"),
            ]),
            N,
        )])
    );
    let durations = pipeline.durations().await;
    let counts: BTreeMap<_, _> = durations
        .iter()
        .map(|(set, point)| (set.clone(), point.count))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            (
                set(&[
                    ("error.type", "500"),
                    ("gateway.fault", "upstream"),
                    ("http.request.method", "GET"),
                    ("http.response.status_code", "500"),
                ]),
                N,
            ),
            (
                set(&[
                    ("error.type", "503"),
                    ("gateway.fault", "upstream"),
                    ("http.request.method", "GET"),
                    ("http.response.status_code", "503"),
                ]),
                N,
            ),
        ])
    );
}

#[tokio::test]
async fn an_origin_response_is_timed_to_the_end_of_its_body() {
    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let gateway = gateway_to(pipeline.layer(), upstream.addr);
    let ok = set(&[
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
    ]);

    // Heads first, bodies unread: nothing is recorded yet.
    let mut responses = Vec::new();
    for _ in 0..N {
        let response = call(gateway.clone(), request("GET", "/ok", None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        responses.push(response);
    }
    assert!(
        !pipeline.durations().await.contains_key(&ok),
        "recorded before the body ended"
    );

    // The client reads the bodies a while later: that time counts.
    let held = Duration::from_millis(300);
    tokio::time::sleep(held).await;
    for response in responses {
        read_body(response.into_body()).await;
    }
    // A body that fails after its head counts as an error of that response, with its status.
    for _ in 0..N {
        let response = call(gateway.clone(), request("GET", "/cut", None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let read = within(
            "reading /cut",
            http_body_util::BodyExt::collect(response.into_body()),
        );
        assert!(read.await.is_err(), "the cut body ends in an error");
    }

    let durations = pipeline.durations().await;
    let counts: BTreeMap<_, _> = durations
        .iter()
        .map(|(set, point)| (set.clone(), point.count))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            (ok.clone(), N),
            (
                set(&[
                    ("error.type", "http_response_incomplete"),
                    ("gateway.fault", "upstream"),
                    ("http.request.method", "GET"),
                    ("http.response.status_code", "200"),
                ]),
                N,
            ),
        ])
    );
    let held_bodies = &durations[&ok];
    assert!(
        held_bodies.sum >= held.as_secs_f64() * N as f64,
        "{held_bodies:?}"
    );
    let below_quarter_second = DURATION_BOUNDARIES
        .iter()
        .take_while(|bound| **bound <= 0.25)
        .count();
    assert!(
        held_bodies.bucket_counts[..below_quarter_second]
            .iter()
            .all(|count| *count == 0),
        "{held_bodies:?}"
    );
}

#[tokio::test]
async fn a_body_its_client_stops_reading_is_recorded_when_dropped() {
    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let gateway = gateway_to(pipeline.layer(), upstream.addr);

    for _ in 0..N {
        let response = call(
            gateway.clone(),
            request("GET", "/large?bytes=4194304", None),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = Box::pin(response.into_body());
        let first = within("the first chunk", http_body_util::BodyExt::frame(&mut body)).await;
        assert!(matches!(first, Some(Ok(_))), "a first chunk arrives");
        drop(body);
    }

    let counts: BTreeMap<_, _> = pipeline
        .durations()
        .await
        .into_iter()
        .map(|(set, point)| (set, point.count))
        .collect();
    // A client's hang-up is no error of the server's (no `error.type`), and says whose doing it
    // was, as nginx's 499 does.
    assert_eq!(
        counts,
        BTreeMap::from([(
            set(&[
                ("http.request.method", "GET"),
                ("http.response.status_code", "200"),
                ("gateway.fault", "client_gone"),
            ]),
            N,
        )])
    );
}

#[tokio::test]
async fn a_response_without_a_body_is_recorded_with_its_head() {
    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let gateway = gateway_to(pipeline.layer(), upstream.addr);

    // The responses stay alive, bodies untouched: a HEAD response has nothing more to send.
    let mut responses = Vec::new();
    for _ in 0..N {
        let response = call(gateway.clone(), request("HEAD", "/ok", None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        responses.push(response);
    }
    let counts: BTreeMap<_, _> = pipeline
        .durations()
        .await
        .into_iter()
        .map(|(set, point)| (set, point.count))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([(
            set(&[
                ("http.request.method", "HEAD"),
                ("http.response.status_code", "200"),
            ]),
            N,
        )])
    );
    drop(responses);
}

/// A body the read timeout cut counts as that error, timed to the cut.
#[tokio::test]
async fn a_body_cut_by_the_read_timeout_counts_as_connection_read_timeout() {
    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let read_timeout = Duration::from_millis(200);
    let gateway = gateway_to(
        pipeline
            .layer()
            .time_limits(TimeLimits::new().read_timeout(read_timeout)),
        upstream.addr,
    );
    for _ in 0..N {
        let response = call(gateway.clone(), request("GET", "/stall-body", None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let read = within(
            "reading /stall-body",
            http_body_util::BodyExt::collect(response.into_body()),
        );
        assert!(read.await.is_err(), "the stalled body ends in an error");
    }
    let durations = pipeline.durations().await;
    let stalled = set(&[
        ("error.type", "connection_read_timeout"),
        ("gateway.fault", "upstream"),
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
    ]);
    assert_eq!(
        durations.keys().cloned().collect::<Vec<_>>(),
        vec![stalled.clone()]
    );
    let point = &durations[&stalled];
    assert_eq!(point.count, N);
    assert!(
        point.sum >= read_timeout.as_secs_f64() * N as f64,
        "timed to the cut, after the read timeout: {point:?}"
    );
    // Nothing was generated: the head was the origin's.
    assert_eq!(pipeline.errors().await, BTreeMap::new());
}

/// A gRPC caller's error is timed and counted like any other, under the status it got (200, as
/// gRPC requires) and the kind's type.
#[tokio::test]
async fn a_grpc_callers_error_counts_under_the_status_it_got() {
    let pipeline = Pipeline::new();
    let gateway = gateway_to(pipeline.layer(), demo_upstream::closed_port());
    for _ in 0..N {
        let mut call_request = request("POST", "/demo.Demo/Ping", None);
        call_request
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        let response = call(gateway.clone(), call_request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        read_body(response.into_body()).await;
    }
    assert_eq!(
        pipeline.errors().await,
        BTreeMap::from([(
            set(&[
                ("error.type", "connection_refused"),
                ("gateway.fault", "upstream"),
                ("gateway.retryable", "true"),
                ("http.response.status_code", "200"),
            ]),
            N,
        )])
    );
    let durations = pipeline.durations().await;
    let counts: Vec<_> = durations
        .iter()
        .map(|(set, point)| (set.clone(), point.count))
        .collect();
    assert_eq!(
        counts,
        vec![(
            set(&[
                ("error.type", "connection_refused"),
                ("gateway.fault", "upstream"),
                ("http.request.method", "POST"),
                ("http.response.status_code", "200"),
            ]),
            N,
        )]
    );
}

/// The stale-answer counter's values by attribute set. Checks it is a monotonic count of
/// `{response}`.
fn stale_counts(metric: &Metric) -> BTreeMap<Attributes, u64> {
    assert_eq!(metric.unit(), "{response}");
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
        panic!("{} is not a u64 sum: {:?}", metric.name(), metric.data());
    };
    assert!(sum.is_monotonic(), "a counter only goes up");
    sum.data_points()
        .map(|point| (attributes(point.attributes()), point.value()))
        .collect()
}

#[tokio::test]
async fn a_stale_answer_counts_the_hidden_failure_and_times_the_answer_the_client_got() {
    use gateway_errors::metrics::STALE_SERVED;
    use gateway_errors::stale::Store;

    let upstream = start_upstream().await;
    let pipeline = Pipeline::new();
    let store = Store::new().default_window(Duration::from_secs(60));
    let layer = pipeline.layer().serve_stale(store.clone());
    // One store: the page is stored through the working upstream, then answers for the
    // refused one.
    let to_upstream = gateway_to(layer.clone(), upstream.addr);
    let to_closed_port = gateway_to(layer, demo_upstream::closed_port());
    assert_eq!(exchange(to_upstream, "GET", "/ok").await, StatusCode::OK);
    assert_eq!(store.len(), 1);
    for _ in 0..N {
        assert_eq!(
            exchange(to_closed_port.clone(), "GET", "/ok").await,
            StatusCode::OK
        );
    }
    // A POST has no copy: a generated error, counted as one.
    assert_eq!(
        exchange(to_closed_port, "POST", "/ok").await,
        StatusCode::BAD_GATEWAY
    );

    let stale = pipeline
        .exported(STALE_SERVED, stale_counts)
        .await
        .expect("stale answers recorded");
    assert_eq!(
        stale,
        BTreeMap::from([(
            set(&[
                ("error.type", "connection_refused"),
                ("http.response.status_code", "200")
            ]),
            N
        )])
    );
    let durations = pipeline.durations().await;
    let counts: BTreeMap<_, _> = durations
        .iter()
        .map(|(attributes, point)| (attributes.clone(), point.count))
        .collect();
    let get_200 = set(&[
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
    ]);
    let post_502 = set(&[
        ("http.request.method", "POST"),
        ("http.response.status_code", "502"),
        ("error.type", "connection_refused"),
        ("gateway.fault", "upstream"),
    ]);
    // The stored page and its stale answers: what the client got, and no error.type.
    assert_eq!(counts, BTreeMap::from([(get_200, 1 + N), (post_502, 1)]));
    let errors = pipeline.errors().await;
    assert_eq!(errors.values().sum::<u64>(), 1, "only the POST: {errors:?}");
}
