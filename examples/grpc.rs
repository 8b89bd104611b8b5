//! A gRPC gateway: the example proxy over h2c in front of an embedded tonic service, with each
//! way a call can fail shown by a real tonic client.
//!
//! ```text
//! cargo run --example grpc -- [--listen 127.0.0.1:50051] [--timeout 1s] [--check]
//! ```
//!
//! It starts the demo gRPC service (`support/grpc_demo.rs`) on loopback, a gateway in front of it
//! on `--listen`, and a second gateway in front of a port where nothing listens. Both serve
//! HTTP/1.1 and h2c on one port (gRPC needs HTTP/2; gRPC-Web also works over HTTP/1.1) and speak
//! h2c to the upstream. A tonic client then calls each method through them and prints what it
//! got; `--check` exits after that (non-zero if a call did not end as expected), otherwise the
//! gateways serve until Ctrl-C.
//!
//! The gateway intercepts origin error statuses (500–599): an HTML error page becomes a gRPC
//! status a client can read, while an origin's own gRPC status always passes through.
//!
//! The proxy and the server loop are those of `examples/gateway.rs` (`support/proxy.rs`), so
//! `cargo run --example gateway -- --http2 --upstream http://YOUR-GRPC-SERVER` carries gRPC the
//! same way.

#[path = "support/grpc_demo.rs"]
mod grpc_demo;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use gateway_errors::TimeLimits;
use gateway_errors::{GatewayErrorLayer, ProxyName};
use http::Uri;
use tokio::net::TcpListener;
use tonic::Code;
use tower::ServiceBuilder;

use proxy::{BoxError, Proxy, ServeOptions};

struct Options {
    listen: SocketAddr,
    timeout: Duration,
    check: bool,
}

fn usage() -> ! {
    eprintln!("usage: grpc [--listen ADDR] [--timeout 1s|500ms] [--check]");
    std::process::exit(2)
}

fn parse_options() -> Options {
    let mut options = Options {
        listen: "127.0.0.1:50051".parse().expect("default address"),
        timeout: Duration::from_secs(1),
        check: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--listen" => options.listen = value().parse().unwrap_or_else(|_| usage()),
            "--timeout" => {
                let text = value();
                let millis = match text.strip_suffix("ms") {
                    Some(ms) => ms.parse::<u64>().ok(),
                    None => text
                        .strip_suffix('s')
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(|s| s * 1000),
                };
                options.timeout = Duration::from_millis(millis.unwrap_or_else(|| usage()));
            }
            "--check" => options.check = true,
            _ => usage(),
        }
    }
    options
}

/// Serves `layer` around a proxy to `upstream` on `listener`, with the server loop of
/// `examples/gateway.rs` (HTTP/1.1 and h2c, detected per connection), until the task is dropped.
fn serve_gateway(
    listener: TcpListener,
    upstream: SocketAddr,
    layer: GatewayErrorLayer,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    let upstream: Uri = format!("http://{upstream}").parse()?;
    let proxy = Proxy::new(&upstream, "edge-1", 4 * 1024 * 1024)?.http2_only();
    let service = ServiceBuilder::new().layer(layer).service(proxy);
    Ok(tokio::spawn(proxy::serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    )))
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

    let demo = grpc_demo::spawn().await?;
    let layer = GatewayErrorLayer::new()
        .proxy_name(ProxyName::from_static("edge-1"))
        .time_limits(TimeLimits::new().upstream_timeout(options.timeout))
        .failure_statuses((500..600).filter_map(|code| http::StatusCode::from_u16(code).ok()));

    let listener = TcpListener::bind(options.listen).await?;
    let gateway = listener.local_addr()?;
    let _serving = serve_gateway(listener, demo.addr, layer.clone())?;

    // A port that refuses: bound, then released.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let unreachable_gateway = listener.local_addr()?;
    let _serving_unreachable = serve_gateway(listener, closed, layer)?;

    println!("demo gRPC service on {}", demo.addr);
    println!(
        "gateway on {gateway} (h2c and HTTP/1.1; upstream timeout {:?}); methods:",
        options.timeout
    );
    for (path, what) in grpc_demo::METHODS {
        println!("  {path:<26} {what}");
    }
    println!("gateway to an unreachable upstream on {unreachable_gateway}");
    println!();

    let mut client = grpc_demo::DemoClient::connect(gateway).await?;
    let mut unreachable = grpc_demo::DemoClient::connect(unreachable_gateway).await?;
    let mut unexpected = 0;
    let mut report = |what: &str, outcome: Result<String, tonic::Status>, expected: Code| {
        let (code, text) = match &outcome {
            Ok(text) => (Code::Ok, text.clone()),
            Err(status) => (status.code(), status.message().to_owned()),
        };
        let mark = if code == expected {
            "ok "
        } else {
            unexpected += 1;
            "!! "
        };
        println!("{mark}{what:<34} {code:?}: {text}");
    };

    let ok = client.unary(grpc_demo::OK, "hello", None).await;
    report("Ok", ok.map(|r| r.into_inner().text), Code::Ok);
    let not_found = client.unary(grpc_demo::NOT_FOUND, "x", None).await;
    report(
        "NotFound (the origin's own)",
        not_found.map(|r| r.into_inner().text),
        Code::NotFound,
    );
    let stall = client.unary(grpc_demo::STALL, "x", None).await;
    report(
        "Stall (the gateway's timeout)",
        stall.map(|r| r.into_inner().text),
        Code::DeadlineExceeded,
    );
    let (messages, end) = client.server_stream(grpc_demo::FAIL_AFTER_ONE).await;
    report(
        &format!("FailAfterOne (after {} message)", messages.len()),
        end.map(|()| String::new()),
        Code::ResourceExhausted,
    );
    let html = client.unary(grpc_demo::HTML_503, "x", None).await;
    report(
        "Html503 (intercepted)",
        html.map(|r| r.into_inner().text),
        Code::Unavailable,
    );
    let refused = unreachable.unary(grpc_demo::OK, "x", None).await;
    report(
        "Ok, upstream unreachable",
        refused.map(|r| r.into_inner().text),
        Code::Unavailable,
    );

    if options.check {
        if unexpected > 0 {
            return Err(format!("{unexpected} call(s) did not end as expected").into());
        }
        return Ok(());
    }
    println!();
    println!("serving until Ctrl-C");
    tokio::signal::ctrl_c().await?;
    drop(demo);
    Ok(())
}
