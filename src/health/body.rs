//! [`HealthBody`]: the response body of [`UpstreamHealth`](super::UpstreamHealth).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

use super::key::AuthorityKey;
use super::record::Record;

pin_project! {
    /// The response body of [`UpstreamHealth`](super::UpstreamHealth): the origin's body,
    /// unchanged, watched for how it ends.
    ///
    /// A body that ends well is the request's success. One that breaks off
    /// (`http_response_incomplete`), or that [`GatewayErrorLayer`](crate::GatewayErrorLayer)
    /// cuts for stalling (`connection_read_timeout`, or `http_response_timeout` when the response
    /// deadline ran out while the gateway waited on the origin), counts as a failure of its
    /// upstream. One that its client stops reading counts as nothing, and so does one cut by the
    /// response deadline when that ran out while the gateway waited on a client that reads
    /// slowly.
    pub struct HealthBody<B, T = AuthorityKey> {
        #[pin]
        inner: B,
        record: Option<Record<T>>,
    }

    impl<B, T> PinnedDrop for HealthBody<B, T> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(record) = this.project().record.take() {
                record.dropped(true);
            }
        }
    }
}

impl<B, T> HealthBody<B, T> {
    pub(crate) fn new(inner: B, record: Option<Record<T>>) -> Self {
        HealthBody { inner, record }
    }

    /// The origin's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B, T> Body for HealthBody<B, T>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                // A server stops polling once `is_end_stream` says the body is done, so its end
                // may never be seen as `None`.
                if this.inner.is_end_stream() {
                    if let Some(record) = this.record.take() {
                        record.ended();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error = error.into();
                if let Some(record) = this.record.take() {
                    record.failed(&*error, true);
                }
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Some(record) = this.record.take() {
                    record.ended();
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug, T> fmt::Debug for HealthBody<B, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! Every way a response body (a probe's too) can end: read to its end, broken off, stalled,
    //! dropped by its client, cut by the response deadline.

    use crate::TimeLimits;
    use std::time::Duration;

    use http::StatusCode;
    use http_body::Body;
    use http_body_util::BodyExt;
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt};

    use crate::health::fixture::*;
    use crate::{GatewayErrorLayer, ProxyError, ProxyErrorKind};

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
}
