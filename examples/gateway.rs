//! A reverse proxy on hyper-util's client, with every upstream failure made a correct response.
//!
//! ```text
//! cargo run --release --example gateway -- [--listen ADDR] [--upstream URL] [--timeout 5s]
//!     [--read-timeout 5s|off] [--deadline 60s] [--client-body-timeout 60s|off] [--bare] [--floor]
//!     [--breaker-failures N [--breaker-open 10s]] [--adaptive-limit [--adaptive-max N]]
//!     [--static-limit N] [--upstream-ca PEM_FILE]
//! ```
//!
//! - Without `--upstream`, an embedded demo upstream starts on loopback; its routes each show one
//!   failure, and a curl line for each is printed.
//! - An `https://` upstream (the example built with `--features rustls`, so that the layer names
//!   each TLS failure: `tls_certificate_error`, `tls_alert_received`, `tls_protocol_error`) is
//!   reached over HTTP/1.1, or HTTP/2 where its ALPN offers it. Its certificate must chain to one
//!   of the webpki roots (Mozilla's) or to a CA in `--upstream-ca PEM_FILE` (a private CA, as a
//!   test or internal deployment has), and name the URL's host.
//! - `--bare` serves the same proxy without the layer: every upstream error becomes an empty 502.
//!   It is the baseline the benchmarks compare against. `--floor` serves it plus the two
//!   things the layer's defaults do to every request before anything can fail (one walk over
//!   the request's fields, `CDN-Loop` appended): the floor under the layer's success path.
//! - `--name` sets the proxy name in `Proxy-Status` and `CDN-Loop` (default `edge-1`; give each
//!   deployment its own: a request that comes back carrying it is a loop); `--max-body` the request
//!   body limit in bytes (default 10 MiB); `--http2` speaks h2c to the upstream (one connection
//!   for all requests; the demo upstream understands it, but its byte-level faults are HTTP/1),
//!   or, to an `https://` upstream, offers HTTP/2 alone by ALPN.
//! - `--timeout` is the time the upstream has for its response head (504 after it);
//!   `--read-timeout` the longest silence within its body (default: the same as `--timeout`;
//!   `off` to turn it off), after which the client's connection is broken off; `--deadline` an
//!   optional limit on the whole response, head and body. The upstream's time counts only while
//!   the gateway waits on it, never while it waits on the client's upload.
//! - `--client-body-timeout` is the longest a client may leave its upload silent (default 60s, as
//!   nginx's `client_body_timeout`; `off` to turn it off): it is answered 408, the client's fault,
//!   never counted against the upstream. A client that breaks its upload off gets a 400.
//! - WebSocket (and any `Upgrade`) passes through: the gateway joins the two connections once the
//!   upstream answers `101`.
//! - The listener speaks HTTP/1.1 and, to a client that opens with the HTTP/2 preface, h2c: with
//!   `--http2` to a gRPC upstream, gRPC calls go through (`examples/grpc.rs` shows them).
//! - `--metrics` (built with `--features metrics`) records the layer's OpenTelemetry metrics and
//!   prints them to stdout every 60 s and on exit.
//! - `--stale DURATION` (`90s`, `30m`, `24h`) keeps the last good copy of storable GET responses
//!   and answers with it while the upstream fails: the operator's window, how long past its
//!   freshness a copy may answer when the origin names no `stale-if-error` of its own. Off
//!   without it.
//! - `--breaker-failures N` marks the upstream unavailable after N consecutive failures of its
//!   connection or timeouts (off without it): requests are then answered at once with 503
//!   `destination_unavailable` and a `Retry-After`, until one probe finds it back.
//!   `--breaker-open` sets the first open time (default 10s; it grows with each failed probe, up
//!   to 5 minutes or the open time if longer). Transitions are logged at `WARN`.
//! - `--adaptive-limit` keeps the requests in flight to the upstream near what it serves without
//!   queueing (an adaptive concurrency limit, learnt from its latency) and answers the rest at
//!   once with 503 `connection_limit_reached` and `Retry-After: 1`, instead of letting them wait
//!   in a slow upstream's queue until a 504. `--adaptive-max N` caps the limit (default 1000).
//!   A sharp fall of the limit is logged at `WARN`.
//! - `--static-limit N`, for comparison (`scripts/load-adaptive.sh`), puts tower's static
//!   `ConcurrencyLimit` of N in front of the upstream instead: requests above N wait in the
//!   gateway for a place, with no timeout on the wait.
//!
//! What makes it safe to copy, beyond the layer (the proxy itself is in `support/proxy.rs`, where
//! `tests/integration/gateway_hardening.rs` checks each point): only the configured upstream is ever contacted
//! (the request's authority is replaced, so it is no open proxy); hop-by-hop headers, and those
//! named in `Connection`, are stripped both ways; a client's `Forwarded` and `X-Forwarded-*`
//! are replaced by the gateway's own (RFC 7239: it is the edge); a client must send its request head within 10 s
//! (slowloris) in at most 64 KiB; request bodies are limited, chunked ones too (413); hyper
//! refuses conflicting framing with a 400, and reads a request with both `Content-Length` and
//! `Transfer-Encoding: chunked` as chunked, then closes its connection (RFC 9112 §6.3).
//!
//! Logs go to stderr; `RUST_LOG` filters them (default `warn`).

#[path = "support/demo_upstream.rs"]
mod demo_upstream;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_errors::health::{AdaptiveLimit, UpstreamHealthLayer};
use gateway_errors::stale::Store;
use gateway_errors::{GatewayErrorLayer, ProxyName, TimeLimits};
use http::{Request, Uri};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use proxy::{Bare, BoxError, ClientBody, Proxy, ServeOptions, serve};

struct Options {
    listen: SocketAddr,
    upstream: Option<Uri>,
    timeout: Duration,
    /// `None`: the same as `timeout`; `Some(None)`: off.
    read_timeout: Option<Option<Duration>>,
    deadline: Option<Duration>,
    /// `None`: the layer's default; `Some(None)`: off.
    client_body_timeout: Option<Option<Duration>>,
    bare: bool,
    /// The bare proxy plus the layer's fixed work on each request (`Floor`).
    floor: bool,
    metrics: bool,
    http2: bool,
    name: ProxyName,
    max_body: u64,
    /// The operator's stale-if-error window; `None`: no store.
    stale: Option<Duration>,
    /// Consecutive failures that mark the upstream unavailable; `None`: never.
    breaker_failures: Option<u32>,
    breaker_open: Duration,
    adaptive_limit: Option<AdaptiveLimit>,
    static_limit: Option<usize>,
    /// A PEM file of CAs to trust for an `https://` upstream, besides the webpki roots.
    upstream_ca: Option<std::path::PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: gateway [--listen ADDR] [--upstream URL] [--timeout 5s|500ms] [--read-timeout 5s|off] [--deadline 60s] [--client-body-timeout 60s|off] [--bare] [--floor] [--name NAME] [--max-body BYTES] [--http2] [--metrics] [--stale 24h] [--breaker-failures N] [--breaker-open 10s] [--adaptive-limit] [--adaptive-max N] [--static-limit N] [--upstream-ca PEM_FILE]"
    );
    std::process::exit(2)
}

fn parse_duration(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

/// A window: a duration as `parse_duration` reads it, or whole minutes (`30m`) or hours (`24h`).
fn parse_window(s: &str) -> Option<Duration> {
    let minutes = |n: &str| n.parse::<u64>().ok().map(|n| n * 60);
    match (s.strip_suffix('m'), s.strip_suffix('h')) {
        (Some(n), _) => minutes(n).map(Duration::from_secs),
        (_, Some(n)) => minutes(n).map(|m| Duration::from_secs(m * 60)),
        _ => parse_duration(s),
    }
}

fn parse_options() -> Options {
    let mut options = Options {
        listen: "127.0.0.1:8080".parse().expect("default address"),
        upstream: None,
        timeout: Duration::from_secs(5),
        read_timeout: None,
        deadline: None,
        client_body_timeout: None,
        bare: false,
        floor: false,
        metrics: false,
        http2: false,
        name: ProxyName::from_static("edge-1"),
        max_body: 10 * 1024 * 1024,
        stale: None,
        breaker_failures: None,
        breaker_open: Duration::from_secs(10),
        adaptive_limit: None,
        static_limit: None,
        upstream_ca: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--listen" => options.listen = value().parse().unwrap_or_else(|_| usage()),
            "--upstream" => options.upstream = Some(value().parse().unwrap_or_else(|_| usage())),
            "--timeout" => options.timeout = parse_duration(&value()).unwrap_or_else(|| usage()),
            "--read-timeout" => {
                let value = value();
                options.read_timeout = Some(match value.as_str() {
                    "off" => None,
                    _ => Some(parse_duration(&value).unwrap_or_else(|| usage())),
                });
            }
            "--client-body-timeout" => {
                let value = value();
                options.client_body_timeout = Some(match value.as_str() {
                    "off" => None,
                    _ => Some(parse_duration(&value).unwrap_or_else(|| usage())),
                });
            }
            "--deadline" => {
                options.deadline = Some(parse_duration(&value()).unwrap_or_else(|| usage()))
            }
            "--name" => {
                options.name = ProxyName::new(&value()).unwrap_or_else(|e| {
                    eprintln!("--name: {e}");
                    std::process::exit(2)
                })
            }
            "--max-body" => options.max_body = value().parse().unwrap_or_else(|_| usage()),
            "--bare" => options.bare = true,
            "--floor" => {
                options.bare = true;
                options.floor = true;
            }
            "--metrics" if !cfg!(feature = "metrics") => {
                // Said before anything starts, not after the listener is up.
                eprintln!("--metrics needs the example built with --features metrics");
                std::process::exit(2);
            }
            "--metrics" => options.metrics = true,
            "--http2" => options.http2 = true,
            "--stale" => options.stale = Some(parse_window(&value()).unwrap_or_else(|| usage())),
            "--breaker-failures" => {
                let failures = value().parse().ok().filter(|n: &u32| *n > 0);
                options.breaker_failures = Some(failures.unwrap_or_else(|| usage()));
            }
            "--breaker-open" => {
                options.breaker_open = parse_duration(&value()).unwrap_or_else(|| usage())
            }
            "--adaptive-limit" => {
                options.adaptive_limit = options.adaptive_limit.or(Some(AdaptiveLimit::new()))
            }
            "--adaptive-max" => {
                let max = value().parse().ok().filter(|n: &u32| *n > 0);
                let limit = options.adaptive_limit.take().unwrap_or_default();
                options.adaptive_limit = Some(limit.max(max.unwrap_or_else(|| usage())));
            }
            "--static-limit" => {
                let limit = value().parse().ok().filter(|n: &usize| *n > 0);
                options.static_limit = Some(limit.unwrap_or_else(|| usage()));
            }
            "--upstream-ca" => options.upstream_ca = Some(value().into()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let https = options
        .upstream
        .as_ref()
        .is_some_and(|upstream| upstream.scheme() == Some(&http::uri::Scheme::HTTPS));
    if https && !cfg!(feature = "rustls") {
        // Said before anything starts: without the feature, a TLS failure is a 502 of no type.
        eprintln!("an https:// upstream needs the example built with --features rustls");
        std::process::exit(2);
    }
    if options.upstream_ca.is_some() && !https {
        eprintln!("--upstream-ca is for an https:// upstream");
        std::process::exit(2);
    }
    options
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = parse_options();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut demo = None;
    let upstream = match options.upstream.clone() {
        Some(upstream) => upstream,
        None => {
            let started = demo_upstream::spawn().await?;
            let uri: Uri = format!("http://{}", started.addr).parse()?;
            demo = Some(started);
            uri
        }
    };
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let mut proxy = Proxy::new(&upstream, options.name.as_str(), options.max_body)?;
    if options.http2 {
        proxy = proxy.http2_only();
    }
    if let Some(pem_file) = &options.upstream_ca {
        proxy = proxy.upstream_ca(pem_file)?;
    }

    if demo.is_some() {
        println!("demo upstream on {upstream}; try:");
        for (route, what) in demo_upstream::ROUTES {
            let route = route.replace("=N", "=1000");
            println!("  curl -i 'http://{addr}{route}'    # {what}");
        }
        println!("  curl -i -H 'Accept: text/html' http://{addr}/close    # the HTML page");
        println!("  curl -i -H 'Accept: text/plain' http://{addr}/slow    # plain text");
    }
    let read_timeout = options.read_timeout.unwrap_or(Some(options.timeout));
    println!(
        "listening on http://{addr} ({}; upstream {upstream}, timeout {:?}, read timeout {}{}{})",
        if options.floor {
            "bare, with the layer's fixed work on each request"
        } else if options.bare {
            "bare"
        } else {
            "with gateway-errors"
        },
        options.timeout,
        read_timeout.map_or("off".into(), |t| format!("{t:?}")),
        options
            .deadline
            .map_or(String::new(), |d| format!(", deadline {d:?}")),
        match options.breaker_failures {
            Some(failures) if !options.bare => format!(
                ", unavailable after {failures} failures for {:?}",
                options.breaker_open
            ),
            _ => String::new(),
        },
    );
    if let Some(window) = options.stale {
        println!("stale-if-error: last good copies answer up to {window:?} past their freshness");
    }

    if options.bare {
        let proxy = ServiceBuilder::new()
            .timeout(options.timeout)
            .service(proxy);
        let service = if options.floor {
            Bare::floor(proxy, options.name.as_str())?
        } else {
            Bare::new(proxy)
        };
        serve(listener, service, ServeOptions::default(), ctrl_c()).await;
    } else {
        let mut limits = TimeLimits::new()
            .upstream_timeout(options.timeout)
            .response_deadline(options.deadline);
        if let Some(read_timeout) = options.read_timeout {
            limits = limits.read_timeout(read_timeout);
        }
        if let Some(timeout) = options.client_body_timeout {
            limits = limits.client_body_timeout(timeout);
        }
        let mut layer = GatewayErrorLayer::new()
            .proxy_name(options.name.clone())
            .time_limits(limits);
        if let Some(window) = options.stale {
            layer = layer.serve_stale(Store::new().default_window(window));
        }
        // Held until the server is done: dropping it exports the metrics a last time.
        let (layer, meters) = metrics::with_metrics(layer, options.metrics);
        match (options.breaker_failures, options.adaptive_limit) {
            (None, None) => match options.static_limit {
                None => {
                    let service = ServiceBuilder::new().layer(layer).service(proxy);
                    serve(listener, service, ServeOptions::default(), ctrl_c()).await;
                }
                Some(limit) => {
                    let service = ServiceBuilder::new()
                        .layer(layer)
                        .concurrency_limit(limit)
                        .service(proxy);
                    serve(listener, service, ServeOptions::default(), ctrl_c()).await;
                }
            },
            (failures, limit) => {
                // This proxy sends every request to its one upstream, and points it there itself
                // (the request's own target is the client's): every request is keyed by that
                // upstream. In front of a client that is given the upstream's URI, the default
                // key (the URI's scheme and authority) needs no key function.
                let key: Arc<str> = upstream.to_string().trim_end_matches('/').into();
                // Without `--breaker-failures`, a breaker that never opens.
                let mut health = UpstreamHealthLayer::new()
                    .consecutive_failures(failures.unwrap_or(u32::MAX))
                    .open_time(options.breaker_open)
                    .max_open_time(options.breaker_open.max(Duration::from_secs(300)));
                if let Some(limit) = limit {
                    health = health.adaptive_limit(limit);
                }
                let health = health.key_by(move |_: &Request<ClientBody>| Some(key.clone()));
                let health = metrics::health_metrics(health, meters.as_ref());
                let service = ServiceBuilder::new()
                    .layer(layer)
                    .layer(health)
                    .service(proxy);
                serve(listener, service, ServeOptions::default(), ctrl_c()).await;
            }
        }
    }
    drop(demo);
    Ok(())
}

/// `--metrics`: the layer's metrics, exported to stdout.
#[cfg(feature = "metrics")]
mod metrics {
    use gateway_errors::health::UpstreamHealthLayer;
    use gateway_errors::{GatewayErrorLayer, Telemetry};
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    /// Shuts the provider down, and so exports once more, when dropped.
    pub struct Meters(SdkMeterProvider);

    impl Drop for Meters {
        fn drop(&mut self) {
            let _ = self.0.shutdown();
        }
    }

    pub fn with_metrics(layer: GatewayErrorLayer, on: bool) -> (GatewayErrorLayer, Option<Meters>) {
        if !on {
            return (layer, None);
        }
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(opentelemetry_stdout::MetricExporter::default())
            .build();
        let layer = layer.telemetry(Telemetry::new().metrics(&provider.meter("gateway-errors")));
        (layer, Some(Meters(provider)))
    }

    /// The health layer's metrics too, when `--metrics` is on.
    pub fn health_metrics<K>(
        health: UpstreamHealthLayer<K>,
        meters: Option<&Meters>,
    ) -> UpstreamHealthLayer<K> {
        match meters {
            Some(meters) => health.metrics(&meters.0.meter("gateway-errors")),
            None => health,
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod metrics {
    use gateway_errors::GatewayErrorLayer;
    use gateway_errors::health::UpstreamHealthLayer;

    /// `--metrics` was refused when the options were read: there is nothing to add.
    pub fn with_metrics(layer: GatewayErrorLayer, _on: bool) -> (GatewayErrorLayer, Option<()>) {
        (layer, None)
    }

    pub fn health_metrics<K>(
        health: UpstreamHealthLayer<K>,
        _meters: Option<&()>,
    ) -> UpstreamHealthLayer<K> {
        health
    }
}

/// Completes on Ctrl-C.
async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}
