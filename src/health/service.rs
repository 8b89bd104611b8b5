//! [`UpstreamHealth`]: the service.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use crate::BoxError;
use crate::error::ProxyError;
use crate::kind::ProxyErrorKind;
use crate::trace;

use super::body::HealthBody;
use super::error::UpstreamUnavailable;
use super::future::ResponseFuture;
use super::key::{ByAuthority, KeyUpstream};
use super::limit::LimitReached;
use super::record::Record;
use super::state::{Admission, Table};

/// Keeps the health of each upstream its requests go to, and refuses requests to one marked
/// unavailable without calling the inner service.
///
/// Made by [`UpstreamHealthLayer`](super::UpstreamHealthLayer); every clone shares the layer's
/// table of upstreams. See the [module docs](super).
pub struct UpstreamHealth<S, K = ByAuthority> {
    inner: S,
    key: Arc<K>,
    table: Arc<Table>,
}

impl<S, K> UpstreamHealth<S, K> {
    pub(crate) fn new(inner: S, key: Arc<K>, table: Arc<Table>) -> Self {
        UpstreamHealth { inner, key, table }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K> Clone for UpstreamHealth<S, K> {
    /// A clone for another request: the same inner service, and the same table of upstreams.
    fn clone(&self) -> Self {
        UpstreamHealth {
            inner: self.inner.clone(),
            key: self.key.clone(),
            table: self.table.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for UpstreamHealth<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamHealth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for UpstreamHealth<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body,
    K: KeyUpstream<ReqBody>,
{
    type Response = Response<HealthBody<ResBody, K::Key>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K::Key>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut hasher = self.table.hasher().build_hasher();
        let Some(key) = self.key.key(&request, &mut hasher) else {
            return ResponseFuture::unkeyed(self.inner.call(request), &self.table);
        };
        let hash = hasher.finish();
        // The limit first: a refusal never reaches the breaker, and a request the breaker
        // refuses gives its place back when its permit is dropped.
        let permit = match self.table.limits() {
            None => None,
            Some(limits) => match limits.acquire(hash, &key, &request) {
                Ok(permit) => permit,
                Err(refusal) => {
                    trace::record_concurrency_limit(refusal.limit);
                    // Not sent: safe to retry for every method, once the delay has passed.
                    let error = ProxyError::new(ProxyErrorKind::ConnectionLimitReached)
                        .with_retry_after(refusal.retry_after)
                        .with_source(LimitReached::new());
                    return ResponseFuture::refused(Box::new(error));
                }
            },
        };
        let admission = self.table.admit(hash, &key);
        match admission {
            Admission::Refused(refusal) => {
                trace::record_upstream_state(refusal.phase.as_str());
                // Not sent: safe to retry for every method, once the delay has passed.
                let error = ProxyError::new(ProxyErrorKind::DestinationUnavailable)
                    .with_retry_after(refusal.retry_after)
                    .with_source(UpstreamUnavailable::new());
                ResponseFuture::refused(Box::new(error))
            }
            admission => {
                match admission {
                    Admission::Probe { .. } => trace::record_upstream_state("probe"),
                    Admission::Bystander { phase, .. } => {
                        trace::record_upstream_state(phase.as_str())
                    }
                    _ => {}
                }
                let record = Record::new(self.table.clone(), hash, admission, key);
                ResponseFuture::forwarded(self.inner.call(request), record).with_permit(permit)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every way a request (and a probe) can end, through `GatewayErrorLayer` as a gateway has
    //! it, on paused time.

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
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt};

    use crate::health::UpstreamHealthLayer;
    use crate::{GatewayErrorLayer, ProxyError, ProxyErrorKind, TimeLimits};

    /// How the test upstream behaves.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    #[repr(u8)]
    enum Mode {
        Refuse,
        Silent,
        Ok,
        BodyBreaks,
        BodyStalls,
    }

    /// An upstream whose behaviour the test switches, counting the requests it gets.
    #[derive(Clone, Default)]
    struct Upstream {
        mode: Arc<AtomicU8>,
        calls: Arc<AtomicUsize>,
    }

    impl Upstream {
        fn set(&self, mode: Mode) {
            self.mode.store(mode as u8, Ordering::SeqCst);
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// A body that sends one frame and then breaks off or stalls, or just ends.
    struct Scripted {
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
                Mode::BodyBreaks => {
                    Poll::Ready(Some(Err(std::io::ErrorKind::ConnectionReset.into())))
                }
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
        type Future =
            Pin<Box<dyn Future<Output = Result<Response<Scripted>, std::io::Error>> + Send>>;

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
    type NoBody = http_body_util::Empty<Bytes>;

    fn request() -> Request<NoBody> {
        Request::get("http://127.0.0.1:3000/orders")
            .body(NoBody::new())
            .unwrap()
    }

    /// The gateway: `GatewayErrorLayer` (1 s for the head and between body frames) around the
    /// health layer around `upstream`.
    fn gateway(
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

    fn health() -> UpstreamHealthLayer {
        UpstreamHealthLayer::new()
            .consecutive_failures(3)
            .jitter(0.0)
    }

    fn kind_of<B>(response: &Response<B>) -> Option<ProxyErrorKind> {
        response
            .extensions()
            .get::<ProxyError>()
            .and_then(ProxyError::kind)
    }

    fn retry_after<B>(response: &Response<B>) -> u64 {
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Sends one request and reads its whole body; returns the status and whether the body
    /// ended with an error.
    async fn exchange<S, B>(gateway: &S) -> (Response<()>, bool)
    where
        S: tower::Service<Request<NoBody>, Response = Response<B>, Error = Infallible> + Clone,
        B: Body,
    {
        let response = gateway.clone().oneshot(request()).await.unwrap();
        let (parts, body) = response.into_parts();
        let broke = body.collect().await.is_err();
        (Response::from_parts(parts, ()), broke)
    }

    #[tokio::test(start_paused = true)]
    async fn the_gateways_timeout_counts_and_then_it_answers_at_once() {
        let upstream = Upstream::default();
        upstream.set(Mode::Silent);
        let gateway = gateway(health(), upstream.clone());
        for _ in 0..3 {
            let started = Instant::now();
            let (response, _) = exchange(&gateway).await;
            assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(started.elapsed(), Duration::from_secs(1));
        }
        let started = Instant::now();
        let (response, _) = exchange(&gateway).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no wait for a known-dead upstream"
        );
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            kind_of(&response),
            Some(ProxyErrorKind::DestinationUnavailable)
        );
        assert_eq!(retry_after(&response), 10);
        assert_eq!(upstream.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_away_counts_as_nothing() {
        let upstream = Upstream::default();
        upstream.set(Mode::Silent);
        let gateway = gateway(health(), upstream.clone());
        for _ in 0..10 {
            // The client gives up before the gateway's timeout: its future is dropped.
            let call = gateway.clone().oneshot(request());
            assert!(
                tokio::time::timeout(Duration::from_millis(500), call)
                    .await
                    .is_err()
            );
        }
        upstream.set(Mode::Ok);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(upstream.calls(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_a_warning_once_and_its_refusals_are_not() {
        let warnings = crate::testing::Warnings::default();
        let _guard = warnings.install();
        let upstream = Upstream::default();
        upstream.set(Mode::Refuse);
        let gateway = gateway(health(), upstream.clone());
        for _ in 0..3 {
            exchange(&gateway).await;
        }
        let failures = warnings.messages().len();
        for _ in 0..10 {
            let (response, _) = exchange(&gateway).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        let warned: Vec<String> = warnings.messages().split_off(failures);
        // The three refused connections, and the upstream marked unavailable: logged as they
        // happen; the ten answers from that knowledge: not one warning.
        assert!(failures >= 3, "{:?}", warnings.messages());
        assert!(warned.is_empty(), "{warned:?}");
    }

    /// Trips the upstream with refused connections, then waits out the open time.
    async fn trip<S, B>(gateway: &S, upstream: &Upstream)
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

    #[tokio::test(start_paused = true)]
    async fn a_probe_whose_client_goes_away_lets_the_next_request_probe() {
        let upstream = Upstream::default();
        let gateway = gateway(health(), upstream.clone());
        trip(&gateway, &upstream).await;
        upstream.set(Mode::Silent);
        let calls = upstream.calls();
        let probe = tokio::spawn(gateway.clone().oneshot(request()));
        tokio::task::yield_now().await;
        assert_eq!(upstream.calls(), calls + 1, "the probe went through");
        // While it is in flight, the others are told to come back in a second.
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&response), 1);
        // Its client goes away.
        probe.abort();
        assert!(probe.await.is_err_and(|e| e.is_cancelled()));
        upstream.set(Mode::Ok);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK, "the next request probed");
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK, "and closed it");
        assert_eq!(upstream.calls(), calls + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_the_gateway_times_out_opens_it_for_longer() {
        let upstream = Upstream::default();
        let gateway = gateway(health(), upstream.clone());
        trip(&gateway, &upstream).await;
        upstream.set(Mode::Silent);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            retry_after(&response),
            20,
            "the second trip: twice the open time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_resolves_at_its_head_even_if_its_body_never_ends() {
        let upstream = Upstream::default();
        let health = health();
        let gateway = ServiceBuilder::new()
            .layer(
                GatewayErrorLayer::new().time_limits(
                    TimeLimits::new()
                        .upstream_timeout(Duration::from_secs(1))
                        .read_timeout(None),
                ),
            )
            .layer(health)
            .service(upstream.clone());
        trip(&gateway, &upstream).await;
        upstream.set(Mode::BodyStalls);
        let probe = gateway.clone().oneshot(request()).await.unwrap();
        assert_eq!(probe.status(), StatusCode::OK);
        // The body never ends (no read timeout here), and the upstream is available again.
        upstream.set(Mode::Ok);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK);
        drop(probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_breaks_or_stalls_counts_and_one_the_client_drops_does_not() {
        for mode in [Mode::BodyBreaks, Mode::BodyStalls] {
            let upstream = Upstream::default();
            upstream.set(mode);
            let gateway = gateway(health(), upstream.clone());
            for _ in 0..3 {
                let (response, broke) = exchange(&gateway).await;
                assert_eq!(response.status(), StatusCode::OK, "{mode:?}");
                assert!(broke, "{mode:?}: the client sees a broken body");
            }
            let (response, _) = exchange(&gateway).await;
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{mode:?}"
            );
        }

        let upstream = Upstream::default();
        upstream.set(Mode::BodyStalls);
        let gateway = gateway(health(), upstream.clone());
        for _ in 0..10 {
            let response = gateway.clone().oneshot(request()).await.unwrap();
            // The client reads the first frame and leaves.
            let mut body = std::pin::pin!(response.into_body());
            assert!(body.frame().await.unwrap().is_ok());
        }
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// A gRPC call with its own deadline of `grpc_timeout` (e.g. `1m`, a millisecond).
    fn grpc_call(grpc_timeout: &str) -> Request<NoBody> {
        Request::post("http://127.0.0.1:3000/demo.Demo/Ok")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", grpc_timeout)
            .body(NoBody::new())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_callers_own_deadline_is_answered_and_never_counted() {
        let upstream = Upstream::default();
        upstream.set(Mode::Silent);
        let gateway = gateway(health(), upstream.clone());
        for _ in 0..10 {
            let started = Instant::now();
            let response = gateway.clone().oneshot(grpc_call("1m")).await.unwrap();
            assert_eq!(started.elapsed(), Duration::from_millis(1));
            assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
            assert_eq!(
                kind_of(&response),
                Some(ProxyErrorKind::HttpResponseTimeout)
            );
            // Answered as a timeout, recorded as the caller's.
            let error = response.extensions().get::<ProxyError>().unwrap();
            assert_eq!(error.fault(), crate::fault::Fault::Client);
        }
        upstream.set(Mode::Ok);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK, "not marked unavailable");
        assert_eq!(upstream.calls(), 11);

        // A caller's deadline no sooner than the gateway's timeout: the gateway's, and counted.
        upstream.set(Mode::Silent);
        for _ in 0..3 {
            let response = gateway.clone().oneshot(grpc_call("5S")).await.unwrap();
            assert_eq!(response.headers()["grpc-status"], "4");
            let error = response.extensions().get::<ProxyError>().unwrap();
            assert_eq!(error.fault(), crate::fault::Fault::Upstream);
        }
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_ended_by_its_callers_deadline_lets_the_next_request_probe() {
        let upstream = Upstream::default();
        let gateway = gateway(health(), upstream.clone());
        trip(&gateway, &upstream).await;
        upstream.set(Mode::Silent);
        for _ in 0..5 {
            let response = gateway.clone().oneshot(grpc_call("1m")).await.unwrap();
            assert_eq!(
                response.headers()["grpc-status"],
                "4",
                "the probe, timed out"
            );
        }
        // Each went through as the probe, and none marked the upstream unavailable again.
        let calls = upstream.calls();
        upstream.set(Mode::Refuse);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
        assert_eq!(upstream.calls(), calls + 1, "the next request probed");
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            retry_after(&response),
            20,
            "the second trip in a row, not the seventh: the open time did not grow"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_spends_the_response_deadline_without_counting_a_stalled_origin_does() {
        let gateway = |upstream: &Upstream| {
            ServiceBuilder::new()
                .layer(
                    GatewayErrorLayer::new().time_limits(
                        TimeLimits::new()
                            .upstream_timeout(Duration::from_secs(1))
                            .read_timeout(None)
                            .response_deadline(Duration::from_secs(2)),
                    ),
                )
                .layer(health())
                .service(upstream.clone())
        };
        // The origin sends a frame, then nothing: cut at the deadline, the upstream's failure.
        let upstream = Upstream::default();
        upstream.set(Mode::BodyStalls);
        let stalled = gateway(&upstream);
        for _ in 0..3 {
            let started = Instant::now();
            let (response, broke) = exchange(&stalled).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(broke, "cut at the deadline");
            assert_eq!(started.elapsed(), Duration::from_secs(2));
        }
        let (response, _) = exchange(&stalled).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

        // A client that reads a frame, then nothing until the deadline has passed: the gateway
        // was waiting on it, not on the origin, when the deadline ran out.
        let upstream = Upstream::default();
        upstream.set(Mode::BodyStalls);
        let slow = gateway(&upstream);
        for _ in 0..10 {
            let response = slow.clone().oneshot(request()).await.unwrap();
            let mut body = std::pin::pin!(response.into_body());
            assert!(body.frame().await.unwrap().is_ok());
            tokio::time::sleep(Duration::from_secs(3)).await;
            let cut = body.frame().await.unwrap().unwrap_err();
            assert_eq!(
                cut.downcast_ref::<ProxyError>().and_then(ProxyError::kind),
                Some(ProxyErrorKind::HttpResponseTimeout),
                "the client still sees the cut"
            );
        }
        upstream.set(Mode::Ok);
        let (response, _) = exchange(&slow).await;
        assert_eq!(response.status(), StatusCode::OK, "not marked unavailable");
    }

    #[tokio::test(start_paused = true)]
    async fn the_layers_classifiers_decide_what_an_error_is() {
        #[derive(Debug)]
        struct BackendDown;
        impl std::fmt::Display for BackendDown {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("backend down")
            }
        }
        impl std::error::Error for BackendDown {}
        fn backend_down(error: &(dyn std::error::Error + 'static)) -> Option<ProxyErrorKind> {
            error
                .is::<BackendDown>()
                .then_some(ProxyErrorKind::ConnectionRefused)
        }
        let failing =
            tower::service_fn(|_request: Request<crate::body::UploadBody<NoBody>>| async {
                Err::<Response<http_body_util::Empty<Bytes>>, _>(BackendDown)
            });
        for (health, opens) in [(health(), false), (health().classifier(backend_down), true)] {
            let gateway = ServiceBuilder::new()
                .layer(GatewayErrorLayer::new().classifier(backend_down))
                .layer(health)
                .service(failing);
            for _ in 0..3 {
                let response = gateway.clone().oneshot(request()).await.unwrap();
                assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
            }
            let response = gateway.clone().oneshot(request()).await.unwrap();
            let unavailable = kind_of(&response) == Some(ProxyErrorKind::DestinationUnavailable);
            assert_eq!(unavailable, opens);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_read_to_its_end_ends_a_run_of_failures() {
        let upstream = Upstream::default();
        let gateway = gateway(health(), upstream.clone());
        for _ in 0..10 {
            upstream.set(Mode::Refuse);
            for _ in 0..2 {
                exchange(&gateway).await;
            }
            // Read as a server reads it: until the body says it is done, then dropped.
            upstream.set(Mode::Ok);
            let response = gateway.clone().oneshot(request()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = std::pin::pin!(response.into_body());
            while !body.is_end_stream() {
                assert!(body.frame().await.unwrap().is_ok());
            }
        }
        upstream.set(Mode::Refuse);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_state_and_other_keys_have_their_own() {
        let upstream = Upstream::default();
        upstream.set(Mode::Refuse);
        let gateway = gateway(health(), upstream.clone());
        // Each request on its own clone, as axum does.
        for _ in 0..3 {
            exchange(&gateway.clone()).await;
        }
        let (response, _) = exchange(&gateway.clone()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let other = Request::get("http://127.0.0.1:3001/orders")
            .body(NoBody::new())
            .unwrap();
        let response = gateway.clone().oneshot(other).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_GATEWAY,
            "another upstream is its own"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn origin_errors_do_not_count_unless_asked_for() {
        let origin_503 =
            tower::service_fn(|_request: Request<crate::body::UploadBody<NoBody>>| async {
                let mut response = Response::new(http_body_util::Empty::<Bytes>::new());
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, Infallible>(response)
            });
        let plain = ServiceBuilder::new()
            .layer(GatewayErrorLayer::new())
            .layer(health())
            .service(origin_503);
        for _ in 0..20 {
            let response = plain.clone().oneshot(request()).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(kind_of(&response).is_none(), "the origin's own 503");
        }
        let counted = ServiceBuilder::new()
            .layer(GatewayErrorLayer::new())
            .layer(health().count_origin_statuses([StatusCode::SERVICE_UNAVAILABLE]))
            .service(origin_503);
        for _ in 0..3 {
            let response = counted.clone().oneshot(request()).await.unwrap();
            assert!(kind_of(&response).is_none());
        }
        let response = counted.clone().oneshot(request()).await.unwrap();
        assert_eq!(
            kind_of(&response),
            Some(ProxyErrorKind::DestinationUnavailable)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forwarding_anyway_reaches_the_upstream_and_its_answer_closes_it() {
        let upstream = Upstream::default();
        upstream.set(Mode::Refuse);
        let gateway = gateway(health().forward_when_unavailable(true), upstream.clone());
        for _ in 0..10 {
            let (response, _) = exchange(&gateway).await;
            assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
        }
        assert_eq!(upstream.calls(), 10, "every request went through");
        upstream.set(Mode::Ok);
        let (response, _) = exchange(&gateway).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_a_key_is_forwarded_and_not_tracked() {
        let upstream = Upstream::default();
        upstream.set(Mode::Refuse);
        let gateway = gateway(health(), upstream.clone());
        for _ in 0..10 {
            let request = Request::get("/orders").body(NoBody::new()).unwrap();
            let response = gateway.clone().oneshot(request).await.unwrap();
            assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
        }
        assert_eq!(upstream.calls(), 10);
    }
}
