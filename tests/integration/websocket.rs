//! WebSocket through the example gateway (`examples/support/proxy.rs` with the layer): a real
//! tungstenite client and a real tungstenite server on loopback.
//!
//! - a real upgrade passes the layer untouched and the tunnel carries messages both ways, with
//!   the read timeout on (it times bodies, and a switched connection has none);
//! - an origin that switches to a protocol the client did not offer gets the client a 502
//!   `http_upgrade_failed` with the negotiated body;
//! - an origin that ignores `Upgrade` and answers as plain HTTP is passed through as it is.

use crate::proxy;
use crate::support::demo_upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gateway_errors::TimeLimits;
use gateway_errors::{GatewayErrorLayer, ProxyName};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tower::ServiceBuilder;

use proxy::{Proxy, ServeOptions};

const STEP: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {STEP:?}"))
}

struct Running {
    gateway: SocketAddr,
    _demo: demo_upstream::DemoUpstream,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The example gateway in front of the demo upstream, with a short upstream (and so read)
/// timeout.
async fn start() -> Running {
    let demo = within("demo upstream", demo_upstream::spawn())
        .await
        .expect("demo upstream");
    let uri = format!("http://{}", demo.addr).parse().expect("a URI");
    let proxy = Proxy::new(&uri, "edge-1", 1024).expect("a proxy");
    let layer = GatewayErrorLayer::new()
        .proxy_name(ProxyName::from_static("edge-1"))
        .time_limits(TimeLimits::new().upstream_timeout(Duration::from_millis(300)));
    let service = ServiceBuilder::new().layer(layer).service(proxy);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway = listener.local_addr().expect("address");
    let task = tokio::spawn(proxy::serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    ));
    Running {
        gateway,
        _demo: demo,
        task,
    }
}

async fn open(
    gateway: SocketAddr,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tungstenite::Error> {
    let stream = TcpStream::connect(gateway).await.expect("connect");
    let url = format!("ws://{gateway}{path}");
    within(
        "the handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .map(|(socket, _response)| socket)
}

#[tokio::test]
async fn a_websocket_works_end_to_end_through_the_gateway() {
    let running = start().await;
    let mut socket = open(running.gateway, "/ws")
        .await
        .expect("the upgrade goes through");

    socket
        .send(Message::text("hello through the gateway"))
        .await
        .expect("send");
    let echoed = within("the echo", socket.next()).await;
    assert_eq!(
        echoed.expect("a message").expect("no error"),
        Message::text("hello through the gateway")
    );

    // Quiet for longer than the read timeout: a switched connection has no body to time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let payload: Vec<u8> = (0..=255).collect();
    socket
        .send(Message::binary(payload.clone()))
        .await
        .expect("send binary");
    let echoed = within("the binary echo", socket.next()).await;
    assert_eq!(
        echoed.expect("a message").expect("no error"),
        Message::binary(payload)
    );

    socket.close(None).await.expect("close");
}

#[tokio::test]
async fn an_origin_that_switches_to_another_protocol_gets_the_client_a_502() {
    let running = start().await;
    let refused = open(running.gateway, "/switch").await;
    let Err(tungstenite::Error::Http(response)) = refused else {
        panic!("the handshake must fail with an HTTP error, got {refused:?}");
    };
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.headers()["proxy-status"],
        "edge-1; error=http_upgrade_failed"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body = response.body().as_deref().expect("a body");
    let json: serde_json::Value = serde_json::from_slice(body).expect("problem+json");
    assert_eq!(json["error_type"], "http_upgrade_failed");
    assert_eq!(json["status"], 502);
}

/// RFC 9110 §7.8: a server may ignore `Upgrade`. Its plain answer is the origin's, and passes.
#[tokio::test]
async fn an_origin_that_ignores_the_upgrade_is_passed_through() {
    let running = start().await;
    let ignored = open(running.gateway, "/ok").await;
    let Err(tungstenite::Error::Http(response)) = ignored else {
        panic!("a 200 is no switch, got {ignored:?}");
    };
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("proxy-status").is_none());
    assert_eq!(
        response.body().as_deref(),
        Some(demo_upstream::OK_BODY.as_bytes())
    );
}
