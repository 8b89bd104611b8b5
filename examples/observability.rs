//! The gateway's spans and events, as JSON logs and as OpenTelemetry spans and metrics.
//!
//! ```text
//! cargo run --example observability --features metrics -- [--once] [--listen ADDR] [--otlp http://127.0.0.1:4318]
//! ```
//!
//! A reverse proxy (hyper-util's client behind `GatewayErrorLayer`) in front of the embedded demo
//! upstream, whose routes each fail in one way. On start it sends one request to each route itself,
//! over loopback, so every failure mode shows up at once:
//!
//! - **stderr**: tracing-subscriber's JSON log: the WARN event at each decision point, with the
//!   whole error chain, and one line per `gateway.request` span when it closes, with every field;
//! - **stdout**: the same spans through tracing-opentelemetry, printed by OpenTelemetry's stdout
//!   exporter; with `--otlp URL` they go to an OTLP/HTTP collector instead (protobuf, to
//!   `URL/v1/traces` when the URL has no path);
//! - **stdout** too, the layer's metrics (`http.server.request.duration`,
//!   `gateway.errors.generated`), through the same exporter every 10 s and once more on exit; with
//!   `--otlp URL` to `URL/v1/metrics` (the URL's scheme and authority, whatever its path).
//!
//! Then it keeps serving on `--listen` (default 127.0.0.1:8081) until Ctrl-C, or exits with
//! `--once`. Paths under `/refused` are sent to a closed loopback port; everything else goes to the
//! demo upstream. `RUST_LOG` filters the log (default `info`).

#[path = "support/demo_upstream.rs"]
mod demo_upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gateway_errors::Telemetry;
use gateway_errors::TimeLimits;
use gateway_errors::body::UploadBody;
use gateway_errors::retry::RetryHints;
use gateway_errors::{GatewayErrorLayer, ProxyErrorKind, ProxyName};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    listen: Option<SocketAddr>,
    otlp: Option<String>,
    once: bool,
}

fn usage() -> ! {
    eprintln!("usage: observability [--once] [--listen ADDR] [--otlp http://127.0.0.1:4318]");
    std::process::exit(2)
}

fn parse_options() -> Options {
    let mut options = Options {
        listen: None,
        otlp: None,
        once: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--once" => options.once = true,
            "--listen" => {
                let value = args.next().unwrap_or_else(|| usage());
                options.listen = Some(value.parse().unwrap_or_else(|_| usage()));
            }
            "--otlp" => options.otlp = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    options
}

/// The OpenTelemetry pipeline: stdout by default, OTLP/HTTP with `--otlp`.
fn tracer_provider(otlp: Option<&str>) -> Result<SdkTracerProvider, BoxError> {
    let resource = Resource::builder()
        .with_service_name("gateway-errors-example")
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let provider = match otlp {
        // Printed as each span ends: easy to follow by eye.
        None => builder
            .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
            .build(),
        Some(url) => {
            use opentelemetry_otlp::WithExportConfig;
            let uri: Uri = url.parse()?;
            let endpoint = match uri.path() {
                "" | "/" => format!("{}/v1/traces", url.trim_end_matches('/')),
                _ => url.to_owned(),
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()?;
            // Batched, on the processor's own thread: the blocking HTTP client must not run on
            // the runtime's threads.
            builder.with_batch_exporter(exporter).build()
        }
    };
    Ok(provider)
}

/// The metrics pipeline: the stdout exporter by default, OTLP/HTTP with `--otlp`; both every 10 s
/// and on shutdown.
fn meter_provider(otlp: Option<&str>) -> Result<SdkMeterProvider, BoxError> {
    let resource = Resource::builder()
        .with_service_name("gateway-errors-example")
        .build();
    let interval = Duration::from_secs(10);
    let builder = SdkMeterProvider::builder().with_resource(resource);
    let builder = match otlp {
        None => builder.with_reader(
            PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default())
                .with_interval(interval)
                .build(),
        ),
        Some(url) => {
            use opentelemetry_otlp::WithExportConfig;
            let uri: Uri = url.parse()?;
            let scheme = uri.scheme_str().unwrap_or("http");
            let authority = uri.authority().ok_or("the OTLP URL needs a host")?;
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(format!("{scheme}://{authority}/v1/metrics"))
                .build()?;
            // The reader exports on its own thread: the blocking client stays off the runtime.
            builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(interval)
                    .build(),
            )
        }
    };
    Ok(builder.build())
}

/// One request the example sends itself, and what it does with the response.
struct Probe {
    method: Method,
    path: &'static str,
    /// Read only the first chunk of the body, then hang up.
    hang_up: bool,
}

const fn probe(method: Method, path: &'static str) -> Probe {
    Probe {
        method,
        path,
        hang_up: false,
    }
}

fn probes() -> [Probe; 11] {
    [
        probe(Method::GET, "/ok"),
        probe(Method::POST, "/refused/orders"),
        probe(Method::GET, "/close"),
        probe(Method::POST, "/reset"),
        probe(Method::GET, "/garbage"),
        probe(Method::GET, "/huge-head"),
        probe(Method::GET, "/slow"),
        probe(Method::GET, "/origin-503"),
        probe(Method::GET, "/origin-500"),
        probe(Method::GET, "/cut"),
        Probe {
            method: Method::GET,
            path: "/large?bytes=4194304",
            hang_up: true,
        },
    ]
}

async fn send_probes(gateway: SocketAddr) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for probe in probes() {
        let request = Request::builder()
            .method(probe.method.clone())
            .uri(format!("http://{gateway}{}", probe.path))
            .header("accept", "application/problem+json")
            .body(Empty::new())
            .expect("valid request");
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            let response = client.request(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            if probe.hang_up {
                let _ = body.frame().await;
                return Ok::<_, BoxError>(format!("{status}, hung up after the first chunk"));
            }
            match body.collect().await {
                Ok(bytes) => Ok(format!("{status}, {} body bytes", bytes.to_bytes().len())),
                Err(error) => Ok(format!("{status}, then the body failed: {error}")),
            }
        })
        .await;
        let outcome = match outcome {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => format!("failed: {error}"),
            Err(_) => "no answer within 5 s".to_owned(),
        };
        eprintln!("# {} {} -> {outcome}", probe.method, probe.path);
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = parse_options();

    let provider = tracer_provider(options.otlp.as_deref())?;
    let meters = meter_provider(options.otlp.as_deref())?;
    tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                // One line when a span closes: it carries every field recorded on the span.
                .with_span_events(FmtSpan::CLOSE)
                .with_current_span(true)
                .with_span_list(false),
        )
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("gateway-errors")))
        .init();

    let demo = demo_upstream::spawn().await?;
    let refused = demo_upstream::closed_port();
    let upstream = demo.addr;

    let layer = GatewayErrorLayer::new()
        .proxy_name(ProxyName::from_static("edge-1"))
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300)))
        .retry_hints(
            RetryHints::new()
                .retry_after_for_kind(ProxyErrorKind::ConnectionRefused, Duration::from_secs(2)),
        )
        .telemetry(Telemetry::new().metrics(&meters.meter("gateway-errors")));
    // The layer hands the client the request body it watches.
    let client = Client::builder(TokioExecutor::new()).build_http::<UploadBody<Incoming>>();
    let gateway = ServiceBuilder::new()
        .layer(layer)
        .map_request(move |mut request: Request<UploadBody<Incoming>>| {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let target = if path.starts_with("/refused") {
                refused
            } else {
                upstream
            };
            *request.uri_mut() = format!("http://{target}{path}")
                .parse()
                .expect("a path from a parsed request");
            request
        })
        .service(client);

    let default_listen = if options.once {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8081"
    };
    let listen = options
        .listen
        .unwrap_or_else(|| default_listen.parse().expect("loopback address"));
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    eprintln!("# gateway on http://{addr}, demo upstream on http://{upstream}");

    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(gateway.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    send_probes(addr).await;

    if options.once {
        // Let the server see the hung-up client and close that span.
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        eprintln!("# serving until Ctrl-C; try: curl -i http://{addr}/reset");
        tokio::signal::ctrl_c().await?;
    }
    server.abort();
    provider.shutdown()?;
    // Exports what was recorded since the last interval.
    meters.shutdown()?;
    Ok(())
}
