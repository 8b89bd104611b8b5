//! What the unit tests of the service, its future and its body share: a test upstream whose
//! behaviour a test switches, and the gateway as one has it (`GatewayErrorLayer` around
//! `UpstreamHealthLayer` around the upstream), on paused time.

use crate::TimeLimits;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

use crate::health::UpstreamHealthLayer;
use crate::{GatewayErrorLayer, ProxyError, ProxyErrorKind};

/// How the test upstream behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Mode {
    Refuse,
    Silent,
    Ok,
    BodyBreaks,
    BodyStalls,
}

/// An upstream whose behaviour the test switches, counting the requests it gets.
#[derive(Clone, Default)]
pub(super) struct Upstream {
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicUsize>,
}

impl Upstream {
    /// How it behaves from now on.
    pub(super) fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// How many requests it got.
    pub(super) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A body that sends one frame and then breaks off or stalls, or just ends.
pub(super) struct Scripted {
    sent: bool,
    then: Mode,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))));
        }
        match self.then {
            Mode::BodyBreaks => Poll::Ready(Some(Err(std::io::ErrorKind::ConnectionReset.into()))),
            Mode::BodyStalls => Poll::Pending,
            _ => Poll::Ready(None),
        }
    }

    /// Done after its frame, as a body with a known length says (a server then stops
    /// polling it, and drops it).
    fn is_end_stream(&self) -> bool {
        self.sent && self.then == Mode::Ok
    }
}

impl<B> tower::Service<Request<B>> for Upstream {
    type Response = Response<Scripted>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Scripted>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = self.mode.load(Ordering::SeqCst);
        Box::pin(async move {
            let then = match mode {
                m if m == Mode::Refuse as u8 => {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                m if m == Mode::Silent as u8 => std::future::pending().await,
                m if m == Mode::BodyBreaks as u8 => Mode::BodyBreaks,
                m if m == Mode::BodyStalls as u8 => Mode::BodyStalls,
                _ => Mode::Ok,
            };
            Ok(Response::new(Scripted { sent: false, then }))
        })
    }
}

/// A request without a body, as the client sends it.
pub(super) type NoBody = http_body_util::Empty<Bytes>;

pub(super) fn request() -> Request<NoBody> {
    Request::get("http://127.0.0.1:3000/orders")
        .body(NoBody::new())
        .unwrap()
}

/// The gateway: `GatewayErrorLayer` (1 s for the head and between body frames) around the
/// health layer around `upstream`.
pub(super) fn gateway(
    health: UpstreamHealthLayer,
    upstream: Upstream,
) -> impl tower::Service<
    Request<NoBody>,
    Response = Response<impl Body<Data = Bytes, Error: std::fmt::Debug>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .layer(
            GatewayErrorLayer::new()
                .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1))),
        )
        .layer(health)
        .service(upstream)
}

pub(super) fn health() -> UpstreamHealthLayer {
    UpstreamHealthLayer::new()
        .consecutive_failures(3)
        .jitter(0.0)
}

pub(super) fn kind_of<B>(response: &Response<B>) -> Option<ProxyErrorKind> {
    response
        .extensions()
        .get::<ProxyError>()
        .and_then(ProxyError::kind)
}

pub(super) fn retry_after<B>(response: &Response<B>) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends one request and reads its whole body; returns the status and whether the body
/// ended with an error.
pub(super) async fn exchange<S, B>(gateway: &S) -> (Response<()>, bool)
where
    S: tower::Service<Request<NoBody>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
{
    let response = gateway.clone().oneshot(request()).await.unwrap();
    let (parts, body) = response.into_parts();
    let broke = body.collect().await.is_err();
    (Response::from_parts(parts, ()), broke)
}

/// Trips the upstream with refused connections, then waits out the open time.
pub(super) async fn trip<S, B>(gateway: &S, upstream: &Upstream)
where
    S: tower::Service<Request<NoBody>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
{
    upstream.set(Mode::Refuse);
    for _ in 0..3 {
        exchange(gateway).await;
    }
    let (response, _) = exchange(gateway).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::advance(Duration::from_secs(retry_after(&response))).await;
}

/// A gRPC call with its own deadline of `grpc_timeout` (e.g. `1m`, a millisecond).
pub(super) fn grpc_call(grpc_timeout: &str) -> Request<NoBody> {
    Request::post("http://127.0.0.1:3000/demo.Demo/Ok")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(NoBody::new())
        .unwrap()
}
