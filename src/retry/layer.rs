//! [`RetryLayer`]: makes [`RetryService`]s.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tower_layer::Layer;

use super::policy::RetryPolicy;
use super::service::RetryService;

/// Retries a request when the [`GatewayErrorLayer`](crate::GatewayErrorLayer) inside it says a
/// retry is safe, under one deadline, as one request to spans, logs and metrics.
///
/// Put it outside the layer, so that the layer sees every attempt:
///
/// ```text
/// ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::new()))
///     .layer(GatewayErrorLayer::new())
///     .service(client)
/// ```
///
/// Placed inside `GatewayErrorLayer`, or with none, it would never retry: its service forwards
/// every request once, and emits a `WARN` event (target `gateway_errors`, once per service) that
/// says where to place it.
///
/// What it decides from, and in which order (the layer asks it when it has classified a failure):
///
/// 1. **The hint, never the status.** Only an error the layer generated can be retried, and only
///    if its retry hint ([`ProxyError::is_retryable`](crate::ProxyError::is_retryable)) says so:
///    the request never left the gateway, or its method is idempotent, or it has an
///    `Idempotency-Key` (the layer's [retry rule](crate::retry::RetryHints::rule) decides).
///    A response the origin sent, 503 included, is the origin's answer and is passed on, not
///    retried.
/// 2. **The body.** A request whose body cannot be sent again ([`TryCloneBody::try_clone`] is
///    `None`) is sent once.
/// 3. **Attempts.** At most [`max_attempts`](RetryPolicy::max_attempts) in all, the first
///    included (default 3).
/// 4. **Refusals.** A refusal of [`UpstreamHealthLayer`](crate::health::UpstreamHealthLayer)
///    (an upstream marked unavailable, or at its concurrency limit) is never retried: a retry
///    would only be refused again, or add to the load.
/// 5. **The wait.** A capped, jittered exponential backoff: retry *n* waits up to
///    `base_delay × 2^(n-1)`, never more than [`max_delay`](RetryPolicy::max_delay), less a
///    random share of up to [`jitter`](RetryPolicy::jitter) of it. If the error carries a
///    `Retry-After` (see [`retry_after_for_kind`](crate::retry::RetryHints::retry_after_for_kind)),
///    the wait is the longer of the two; a `Retry-After` longer than `max_delay` means no retry,
///    and the client gets the error with its `Retry-After`.
/// 6. **The deadline.** The layer's [upstream timeout](crate::TimeLimits::upstream_timeout)
///    and [response deadline](crate::TimeLimits::response_deadline) count from the start of
///    the first attempt: they bound the whole request, waits included. A retry that would begin
///    after the sooner of them is not made.
/// 7. **The budget.** Every request deposits into a shared [`Budget`] (by default tower's
///    [`TpsBudget::default`]: retries up to 20% of requests, plus 10 a second); every retry
///    withdraws, and when the budget is empty the error goes to the client. This is what keeps an
///    outage from multiplying the load on the upstream.
///
/// [`TryCloneBody::try_clone`]: super::TryCloneBody::try_clone
/// [`Budget`]: tower::retry::budget::Budget
/// [`TpsBudget::default`]: tower::retry::budget::TpsBudget
///
/// # Example
///
/// A POST to an upstream that refuses connections never left the gateway, so it is retried:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use gateway_errors::body::UploadBody;
/// use gateway_errors::retry::{RetryLayer, RetryPolicy};
/// use gateway_errors::{GatewayErrorLayer, ProxyError};
/// use http::{Method, Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let attempts = Arc::new(AtomicUsize::new(0));
/// let counted = attempts.clone();
/// // Stands in for a real client: every attempt is refused.
/// let upstream = tower::service_fn(move |_request: Request<UploadBody<Full<Bytes>>>| {
///     counted.fetch_add(1, Ordering::SeqCst);
///     async {
///         Err::<Response<Full<Bytes>>, _>(std::io::Error::from(
///             std::io::ErrorKind::ConnectionRefused,
///         ))
///     }
/// });
///
/// let policy = RetryPolicy::new()
///     .max_attempts(3)
///     .base_delay(Duration::from_millis(1))
///     .max_delay(Duration::from_millis(20));
/// let gateway = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy))
///     .layer(GatewayErrorLayer::new())
///     .service(upstream);
///
/// let request = Request::builder()
///     .method(Method::POST)
///     .uri("http://127.0.0.1:9/orders")
///     .body(Full::new(Bytes::from_static(b"{\"order\":42}")))
///     .unwrap();
/// let response = gateway.oneshot(request).await.unwrap();
///
/// assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
/// assert!(response.extensions().get::<ProxyError>().unwrap().is_retryable());
/// assert_eq!(attempts.load(Ordering::SeqCst), 3);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
}

impl RetryLayer {
    /// A layer that retries by `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy: Arc::new(policy),
        }
    }
}

impl Default for RetryLayer {
    /// A layer with [`RetryPolicy::new`]'s defaults.
    fn default() -> Self {
        RetryLayer::new(RetryPolicy::new())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> RetryService<S> {
        RetryService::from_parts(inner, self.policy.clone(), Arc::new(AtomicBool::new(false)))
    }
}

#[cfg(test)]
mod tests {
    use crate::TimeLimits;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Empty;
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::body::UploadBody;
    use crate::health::LimitReached;
    use crate::{GatewayErrorLayer, ProxyError, ProxyErrorKind};

    type Upload = UploadBody<Empty<Bytes>>;
    type Answer = Result<Response<Empty<Bytes>>, crate::BoxError>;

    /// An upstream whose attempt number `n` (from 0) ends as `answer(n)` says, and the count of
    /// its attempts.
    fn upstream<F, Fut>(
        answer: F,
    ) -> (
        impl tower::Service<
            Request<Upload>,
            Response = Response<Empty<Bytes>>,
            Error = crate::BoxError,
            Future = impl Future<Output = Answer> + Send,
        > + Clone
        + Send,
        Arc<AtomicUsize>,
    )
    where
        F: Fn(usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let service = service_fn(move |_request: Request<Upload>| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            answer(n)
        });
        (service, calls)
    }

    fn refused() -> Answer {
        Err(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    fn quick() -> RetryPolicy {
        RetryPolicy::new()
            .max_attempts(3)
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(10))
            .jitter(0.0)
    }

    fn get() -> Request<Empty<Bytes>> {
        Request::get("http://127.0.0.1:9/orders")
            .body(Empty::new())
            .unwrap()
    }

    fn kind_of<B>(response: &Response<B>) -> Option<ProxyErrorKind> {
        response
            .extensions()
            .get::<ProxyError>()
            .and_then(ProxyError::kind)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_for_a_full_upstream_is_never_retried_from_here() {
        let limited = || async {
            let error = ProxyError::new(ProxyErrorKind::ConnectionLimitReached)
                .with_source(LimitReached::new());
            Err::<Response<Empty<Bytes>>, crate::BoxError>(Box::new(error))
        };
        let (service, calls) = upstream(move |_| limited());
        let response = ServiceBuilder::new()
            .layer(RetryLayer::new(quick()))
            .layer(GatewayErrorLayer::new())
            .service(service)
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // The same kind without the limit behind it (a full pool of the client's): retried.
        let pool_full = || async {
            let error = ProxyError::new(ProxyErrorKind::ConnectionLimitReached);
            Err::<Response<Empty<Bytes>>, crate::BoxError>(Box::new(error))
        };
        let (service, calls) = upstream(move |_| pool_full());
        ServiceBuilder::new()
            .layer(RetryLayer::new(quick()))
            .layer(GatewayErrorLayer::new())
            .service(service)
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// The request through a retry with `policy`, outside a layer whose upstream timeout is 1 s.
    async fn within_one_second<S, Fut>(
        policy: RetryPolicy,
        service: S,
    ) -> Response<crate::body::GatewayBody<Empty<Bytes>>>
    where
        S: tower::Service<
                Request<Upload>,
                Response = Response<Empty<Bytes>>,
                Error = crate::BoxError,
                Future = Fut,
            > + Clone
            + Send
            + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .layer(
                GatewayErrorLayer::new()
                    .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(1))),
            )
            .service(service)
            .oneshot(get())
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstream_timeout_bounds_the_whole_request() {
        // Never answers: one attempt, cut at the timeout; no retry begins after it.
        let (service, calls) = upstream(|_| std::future::pending());
        let started = Instant::now();
        let response = within_one_second(quick(), service).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(
            kind_of(&response),
            Some(ProxyErrorKind::HttpResponseTimeout)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_attempt_has_what_is_left_and_the_waits_count() {
        // Refused at 0 and at 400 ms; the third attempt, at 800 ms, never answers: it is cut at
        // the request's 1 s, 200 ms after it began.
        let policy = quick()
            .base_delay(Duration::from_millis(400))
            .max_delay(Duration::from_millis(400));
        let (service, calls) = upstream(|n| async move {
            if n < 2 {
                refused()
            } else {
                std::future::pending().await
            }
        });
        let started = Instant::now();
        let response = within_one_second(policy, service).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(
            kind_of(&response),
            Some(ProxyErrorKind::HttpResponseTimeout)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // A wait that would end at or after the deadline is not waited: at 600 ms, the next
        // attempt would begin at 1.2 s.
        let policy = quick()
            .base_delay(Duration::from_millis(600))
            .max_delay(Duration::from_millis(600));
        let (service, calls) = upstream(|_| async { refused() });
        let started = Instant::now();
        let response = within_one_second(policy, service).await;
        assert_eq!(started.elapsed(), Duration::from_millis(600));
        assert_eq!(kind_of(&response), Some(ProxyErrorKind::ConnectionRefused));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_gateway_layer_it_forwards_and_warns_once() {
        let warnings = crate::testing::Warnings::default();
        let _guard = warnings.install();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let service = ServiceBuilder::new()
            .layer(RetryLayer::new(quick()))
            .service(service_fn(move |_request: Request<Empty<Bytes>>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { refused() }
            }));
        for _ in 0..3 {
            assert!(service.clone().oneshot(get()).await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "forwarded once each");
        let seen = warnings.messages();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].contains("Place it outside GatewayErrorLayer"),
            "{seen:?}"
        );
    }
}
