//! HTTP/2 refusals on loopback: a stream reset with `REFUSED_STREAM`, and a stream above a GOAWAY's
//! last stream id, were never processed by the upstream (RFC 9113 §8.7). The classifier (feature
//! `http2`) says so, so that even a POST is marked safe to retry, and `RetryLayer` retries it.
#![cfg(feature = "http2")]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gateway_errors::headers::PROXY_STATUS;
use gateway_errors::retry::{RetryLayer, RetryPolicy};
use gateway_errors::{GatewayErrorLayer, ProxyError, ProxyErrorKind, ProxyName, RequestSent};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{ServiceBuilder, ServiceExt};

const STEP: Duration = Duration::from_secs(5);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: still waiting after {STEP:?}"),
    }
}

/// A loopback upstream and the number of request streams it received.
struct Upstream {
    addr: SocketAddr,
    streams: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

/// Accepts connections on loopback and hands each, with the stream counter, to `serve`.
async fn upstream<F, Fut>(serve: F) -> Upstream
where
    F: Fn(TcpStream, Arc<AtomicUsize>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let streams = Arc::new(AtomicUsize::new(0));
    let counter = streams.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, counter.clone()));
        }
    });
    Upstream {
        addr,
        streams,
        task,
    }
}

/// An h2 server (the `h2` crate) that resets every stream with `REFUSED_STREAM`.
async fn refusing_upstream() -> Upstream {
    upstream(|socket, streams| async move {
        let Ok(mut connection) = h2::server::handshake(socket).await else {
            return;
        };
        while let Some(Ok((_request, mut respond))) = connection.accept().await {
            streams.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        }
    })
    .await
}

/// Writes one HTTP/2 frame header (RFC 9113 §4.1) and its payload.
async fn write_frame(socket: &mut TcpStream, kind: u8, flags: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    socket.write_all(&frame).await.expect("write frame");
}

const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const HEADERS: u8 = 0x1;

/// A hand-written HTTP/2 server: it reads frames until the client's first HEADERS (the request
/// is on the wire), then sends GOAWAY with `last_stream_id`. With 0, the request's stream (1) is
/// above it: not processed. With 1, it is covered, and the server then closes the connection
/// without answering: the request may have been processed.
async fn goaway_upstream(last_stream_id: u32, then_close: bool) -> Upstream {
    upstream(move |mut socket, streams| async move {
        let mut preface = [0u8; 24];
        if socket.read_exact(&mut preface).await.is_err() {
            return;
        }
        write_frame(&mut socket, SETTINGS, 0, &[]).await;
        loop {
            let mut head = [0u8; 9];
            if socket.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if socket.read_exact(&mut payload).await.is_err() {
                return;
            }
            match head[3] {
                SETTINGS if head[4] & 0x1 == 0 => {
                    write_frame(&mut socket, SETTINGS, 0x1, &[]).await
                }
                HEADERS => break,
                _ => {}
            }
        }
        streams.fetch_add(1, Ordering::SeqCst);
        let mut goaway = last_stream_id.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
        write_frame(&mut socket, GOAWAY, 0, &goaway).await;
        if then_close {
            let _ = socket.shutdown().await;
            return;
        }
        // Keep the connection until the client leaves.
        let mut sink = [0u8; 1024];
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
}

/// hyper-util's client speaking HTTP/2 only (prior knowledge), behind the layer and, if given,
/// the retry policy.
async fn post_through_gateway(
    upstream: SocketAddr,
    policy: Option<RetryPolicy>,
) -> http::Response<gateway_errors::body::GatewayBody<hyper::body::Incoming>> {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<gateway_errors::body::UploadBody<Full<Bytes>>>();
    let inner = ServiceBuilder::new()
        .layer(GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-1")))
        .map_request(
            move |mut request: Request<gateway_errors::body::UploadBody<Full<Bytes>>>| {
                *request.uri_mut() = format!("http://{upstream}/orders").parse().unwrap();
                request
            },
        )
        .service(client);
    let request = Request::post("/orders")
        .body(Full::new(Bytes::from_static(b"{\"order\":42}")))
        .unwrap();
    let response = match policy {
        Some(policy) => {
            let service = ServiceBuilder::new()
                .layer(RetryLayer::new(policy))
                .service(inner);
            within("request", service.oneshot(request)).await
        }
        None => within("request", inner.oneshot(request)).await,
    };
    response.unwrap_or_else(|never| match never {})
}

fn quick_policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(3)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20))
}

fn assert_refused_not_sent<B>(response: &http::Response<B>) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()[&PROXY_STATUS],
        "edge-1; error=destination_unavailable"
    );
    let error = response.extensions().get::<ProxyError>().expect("hint");
    assert_eq!(error.kind(), Some(ProxyErrorKind::DestinationUnavailable));
    assert_eq!(error.request_sent(), RequestSent::NotSent);
    assert!(error.is_retryable(), "a POST that was never processed");
}

#[tokio::test]
async fn refused_stream_is_a_503_not_sent_and_a_post_is_retried() {
    let upstream = refusing_upstream().await;

    let response = post_through_gateway(upstream.addr, None).await;
    assert_refused_not_sent(&response);
    assert_eq!(upstream.streams(), 1, "the client does not retry by itself");

    let response = post_through_gateway(upstream.addr, Some(quick_policy())).await;
    assert_refused_not_sent(&response);
    assert_eq!(upstream.streams(), 1 + 3);
}

#[tokio::test]
async fn a_stream_above_goaways_last_stream_id_is_a_503_not_sent() {
    let upstream = goaway_upstream(0, false).await;

    let response = post_through_gateway(upstream.addr, None).await;
    assert_refused_not_sent(&response);

    let response = post_through_gateway(upstream.addr, Some(quick_policy())).await;
    assert_refused_not_sent(&response);
    assert_eq!(upstream.streams(), 1 + 3);
}

#[tokio::test]
async fn a_stream_the_goaway_covers_may_have_been_processed() {
    // GOAWAY(last_stream_id = 1) covers the request's stream; the connection then closes
    // without an answer: the origin may have acted on the POST.
    let upstream = goaway_upstream(1, true).await;

    let response = post_through_gateway(upstream.addr, Some(quick_policy())).await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = response.extensions().get::<ProxyError>().expect("hint");
    assert_eq!(error.kind(), Some(ProxyErrorKind::ConnectionTerminated));
    assert_eq!(error.request_sent(), RequestSent::MaybeSent);
    assert!(!error.is_retryable());
    assert_eq!(upstream.streams(), 1, "never retried");
}
