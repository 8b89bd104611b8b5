//! A reverse proxy on hyper-util's client, with every upstream failure made a correct response.
//!
//! ```text
//! cargo run --release --example gateway -- [--listen ADDR] [--upstream URL] [--timeout 5s] [--bare]
//! ```
//!
//! - Without `--upstream`, an embedded demo upstream starts on loopback; its routes each show one
//!   failure, and a curl line for each is printed.
//! - `--bare` serves the same proxy without the layer: every upstream error becomes an empty 502.
//!   It is the baseline the benchmarks compare against.
//! - `--name` sets the proxy name in `Proxy-Status` (default `edge-1`); `--max-body` the request
//!   body limit in bytes (default 10 MiB).
//!
//! What makes it safe to copy, beyond the layer: only the configured upstream is ever contacted
//! (the request's authority is replaced, so it is no open proxy); hop-by-hop headers, and those
//! named in `Connection`, are stripped both ways; a client must send its request head within 10 s
//! (slowloris) in at most 64 KiB; request bodies are limited; requests with conflicting framing
//! are refused by hyper with a 400 before they reach this code.
//!
//! Logs go to stderr; `RUST_LOG` filters them (default `warn`).

#[path = "support/demo_upstream.rs"]
mod demo_upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use gateway_errors::{Classification, GatewayErrorLayer, ProxyError, ProxyErrorKind};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    listen: SocketAddr,
    upstream: Option<Uri>,
    timeout: Duration,
    bare: bool,
    name: String,
    max_body: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: gateway [--listen ADDR] [--upstream URL] [--timeout 5s|500ms] [--bare] [--name NAME] [--max-body BYTES]"
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

fn parse_options() -> Options {
    let mut options = Options {
        listen: "127.0.0.1:8080".parse().expect("default address"),
        upstream: None,
        timeout: Duration::from_secs(5),
        bare: false,
        name: "edge-1".into(),
        max_body: 10 * 1024 * 1024,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--listen" => options.listen = value().parse().unwrap_or_else(|_| usage()),
            "--upstream" => options.upstream = Some(value().parse().unwrap_or_else(|_| usage())),
            "--timeout" => options.timeout = parse_duration(&value()).unwrap_or_else(|| usage()),
            "--name" => options.name = value(),
            "--max-body" => options.max_body = value().parse().unwrap_or_else(|_| usage()),
            "--bare" => options.bare = true,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    options
}

/// Forwards every request to one upstream, whatever the request's target says.
#[derive(Clone)]
struct Proxy {
    client: Client<HttpConnector, Incoming>,
    scheme: Scheme,
    authority: Authority,
    via: HeaderValue,
    max_body: u64,
}

impl Proxy {
    fn new(upstream: &Uri, name: &str, max_body: u64) -> Result<Self, BoxError> {
        let scheme = upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP {
            return Err("only http:// upstreams are supported by this example".into());
        }
        let authority = upstream
            .authority()
            .cloned()
            .ok_or("the upstream URL needs a host")?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Proxy {
            client,
            scheme,
            authority,
            via: HeaderValue::from_str(&format!("1.1 {name}"))?,
            max_body,
        })
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Forwarding;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Incoming>) -> Forwarding {
        let (mut parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            let too_large = Classification::new(ProxyErrorKind::HttpRequestError)
                .with_status(StatusCode::PAYLOAD_TOO_LARGE);
            return Forwarding::Refused {
                error: Some(ProxyError::from_classification(too_large).into()),
            };
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let Ok(uri) = uri else {
            let bad = Classification::new(ProxyErrorKind::HttpRequestError);
            return Forwarding::Refused {
                error: Some(ProxyError::from_classification(bad).into()),
            };
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        parts.headers.append(header::VIA, self.via.clone());
        Forwarding::Sent {
            future: self.client.request(Request::from_parts(parts, body)),
        }
    }
}

pin_project! {
    #[project = ForwardingProj]
    enum Forwarding {
        Sent { #[pin] future: legacy::ResponseFuture },
        Refused { error: Option<BoxError> },
    }
}

impl Future for Forwarding {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ForwardingProj::Sent { future } => future.poll(cx).map(|result| {
                let mut response = result?;
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }),
            ForwardingProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

/// RFC 9110 §7.6.1: a proxy removes the fields named in `Connection`, and the hop-by-hop fields.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    if !headers.contains_key(header::CONNECTION) {
        // The common case: nothing named, only the fixed set (no allocation).
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The baseline: the same proxy, every error an empty 502.
#[derive(Clone)]
struct Bare<S>(S);

impl<S> Service<Request<Incoming>> for Bare<S>
where
    S: Service<Request<Incoming>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Either<Incoming, Empty<Bytes>>>;
    type Error = Infallible;
    type Future = BareFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A failing poll_ready is answered on the next call.
        let _ = std::task::ready!(self.0.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        BareFuture {
            future: self.0.call(request),
        }
    }
}

pin_project! {
    struct BareFuture<F> { #[pin] future: F }
}

impl<F, E> Future for BareFuture<F>
where
    F: Future<Output = Result<Response<Incoming>, E>>,
{
    type Output = Result<Response<Either<Incoming, Empty<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map(|result| {
            Ok(match result {
                Ok(response) => response.map(Either::Left),
                Err(_) => {
                    let mut response = Response::new(Either::Right(Empty::new()));
                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                    response
                }
            })
        })
    }
}

async fn serve<S, B>(listener: TcpListener, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut shutdown = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(service.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    eprintln!("shutting down: waiting up to 5 s for requests in flight");
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("one owner"));
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
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
    let proxy = Proxy::new(&upstream, &options.name, options.max_body)?;

    if demo.is_some() {
        println!("demo upstream on {upstream}; try:");
        for (route, what) in demo_upstream::ROUTES {
            let route = route.replace("=N", "=1000");
            println!("  curl -i 'http://{addr}{route}'    # {what}");
        }
        println!("  curl -i -H 'Accept: text/html' http://{addr}/close    # the HTML page");
        println!("  curl -i -H 'Accept: text/plain' http://{addr}/slow    # plain text");
    }
    println!(
        "listening on http://{addr} ({}; upstream {upstream}, timeout {:?})",
        if options.bare {
            "bare"
        } else {
            "with gateway-errors"
        },
        options.timeout
    );

    if options.bare {
        let service = Bare(
            ServiceBuilder::new()
                .timeout(options.timeout)
                .service(proxy),
        );
        serve(listener, service).await;
    } else {
        let layer = GatewayErrorLayer::new()
            .proxy_name(&options.name)
            .upstream_timeout(options.timeout);
        let service = ServiceBuilder::new().layer(layer).service(proxy);
        serve(listener, service).await;
    }
    drop(demo);
    Ok(())
}
