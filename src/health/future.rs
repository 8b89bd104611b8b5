//! [`ResponseFuture`]: the future of [`UpstreamHealth`](super::UpstreamHealth).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::error::ProxyError;

use super::body::HealthBody;
use super::key::AuthorityKey;
use super::limit::Permit;
use super::record::Record;
use super::state::Table;

pin_project! {
    /// The future of [`UpstreamHealth`](super::UpstreamHealth): the inner service's, watched, or
    /// the refusal of a request to an upstream marked unavailable.
    ///
    /// However it ends, its outcome is recorded once: the response head (for a probe, or a status
    /// the layer counts; any other success counts when its body ends), an error, a timeout of
    /// [`GatewayErrorLayer`](crate::GatewayErrorLayer) (which drops it: counted as the
    /// upstream's failure), or a client that went away or whose own deadline (`grpc-timeout`)
    /// ran out (which drops it too: counted as nothing, and a probe is released for the next
    /// request).
    pub struct ResponseFuture<F, T = AuthorityKey> {
        #[pin]
        state: State<F>,
        record: Option<Record<T>>,
        // A place under the upstream's adaptive concurrency limit, given back at the head (with
        // a sample of the upstream's time) or when the request ends without one.
        permit: Option<Permit>,
        // For a request without a key (no record): the table, told if the response shows the
        // layer placed outside `GatewayErrorLayer`. `None` once it has been told.
        unkeyed: Option<Arc<Table>>,
    }

    impl<F, T> PinnedDrop for ResponseFuture<F, T> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before it ended: the gateway's timeout, or a client that went away.
            if let Some(record) = this.project().record.take() {
                record.dropped(false);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Forwarded { #[pin] future: F },
        Refused { error: Option<BoxError> },
    }
}

impl<F, T> ResponseFuture<F, T> {
    pub(crate) fn forwarded(future: F, record: Record<T>) -> Self {
        ResponseFuture {
            state: State::Forwarded { future },
            record: Some(record),
            permit: None,
            unkeyed: None,
        }
    }

    /// A request the layer does not track (it has no key): forwarded, only watched for where the
    /// layer is placed.
    pub(crate) fn unkeyed(future: F, table: &Arc<Table>) -> Self {
        ResponseFuture {
            state: State::Forwarded { future },
            record: None,
            permit: None,
            unkeyed: (!table.warned_misplaced()).then(|| table.clone()),
        }
    }

    /// Holds `permit` until the response head (or the end without one).
    pub(crate) fn with_permit(mut self, permit: Option<Permit>) -> Self {
        self.permit = permit;
        self
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            record: None,
            permit: None,
            unkeyed: None,
        }
    }
}

impl<F, T, B, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    E: Into<BoxError>,
{
    type Output = Result<Response<HealthBody<B, T>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
            StateProj::Forwarded { future } => match ready!(future.poll(cx)) {
                Ok(response) => {
                    if let Some(permit) = this.permit.take() {
                        permit.answered();
                    }
                    // Only `GatewayErrorLayer` marks its answers so: it runs inside this layer,
                    // which then sees answers where it should see failures.
                    if response.extensions().get::<ProxyError>().is_some() {
                        let table = this.record.as_ref().map(Record::table);
                        if let Some(table) = table.or(this.unkeyed.as_ref()) {
                            table.misplaced();
                        }
                    }
                    let empty = response.body().is_end_stream();
                    let record = this
                        .record
                        .take()
                        .and_then(|record| record.head(response.status(), empty));
                    Poll::Ready(Ok(response.map(|body| HealthBody::new(body, record))))
                }
                Err(error) => {
                    // Not a sample: a quick failure is not a fast upstream.
                    drop(this.permit.take());
                    let error = error.into();
                    if let Some(record) = this.record.take() {
                        record.failed(&*error, false);
                    }
                    Poll::Ready(Err(error))
                }
            },
        }
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Forwarded { .. } => "forwarded",
            State::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! Every way a request (and a probe) can end before its response head: the gateway's
    //! timeout, a client that goes away, a caller's own deadline.

    use std::time::Duration;

    use http::StatusCode;
    use tokio::time::Instant;
    use tower::ServiceExt;

    use crate::health::fixture::*;
    use crate::{ProxyError, ProxyErrorKind};

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
}
