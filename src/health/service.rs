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
    //! What the service decides: refusals, keys, which outcomes count, forwarding anyway.

    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use tower::{ServiceBuilder, ServiceExt};

    use crate::health::fixture::*;
    use crate::{GatewayErrorLayer, ProxyErrorKind};

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
            .layer(health().failure_statuses([StatusCode::SERVICE_UNAVAILABLE]))
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
