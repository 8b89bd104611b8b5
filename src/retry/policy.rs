//! [`RetryPolicy`]: a `tower::retry::Policy` that retries only what the layer marks safe.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::error::{ProxyError, chain};
use crate::health::error::UpstreamUnavailable;
use crate::health::limit::LimitReached;
use crate::random::random_unit;
use crate::trace::TARGET;

/// A request body that can be sent again.
///
/// A retry sends a copy of the request, made before the first attempt, so the body has to be
/// copied without reading it. Bodies held in memory copy cheaply ([`Bytes`] and [`Full`] share
/// their buffer); a streamed body cannot be copied once it may have been read, so it answers
/// `None` unless it is known to be empty, and [`RetryPolicy`] never retries its request.
///
/// Implemented for [`Full<Bytes>`], [`Empty<Bytes>`], [`String`], [`Bytes`], and (with the `axum`
/// feature) `axum::body::Body` when its size hint says it is empty, which is how a GET or DELETE
/// from an axum router arrives. To retry requests with a streamed body, buffer it first (for
/// example into `Full<Bytes>`, with a size limit), then implement this trait for your body type or
/// use one of the types above.
///
/// ```
/// use bytes::Bytes;
/// use gateway_errors::retry::ReplayBody;
/// use http_body_util::Full;
///
/// let body = Full::new(Bytes::from_static(b"{\"order\":42}"));
/// assert!(body.try_clone().is_some());
///
/// # #[cfg(feature = "axum")] {
/// // An axum body may be a stream: only an empty one is replayed.
/// assert!(axum::body::Body::empty().try_clone().is_some());
/// assert!(axum::body::Body::from("{\"order\":42}").try_clone().is_none());
/// # }
/// ```
pub trait ReplayBody: Sized {
    /// A body that sends the same bytes as this one, or `None` if it cannot be sent again.
    fn try_clone(&self) -> Option<Self>;
}

impl ReplayBody for Full<Bytes> {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Empty<Bytes> {
    fn try_clone(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl ReplayBody for String {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl ReplayBody for Bytes {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

#[cfg(feature = "axum")]
impl ReplayBody for axum_core::body::Body {
    fn try_clone(&self) -> Option<Self> {
        use http_body::Body as _;
        let empty = self.is_end_stream() || self.size_hint().exact() == Some(0);
        empty.then(axum_core::body::Body::empty)
    }
}

/// A [`tower::retry::Policy`] for services wrapped in
/// [`GatewayErrorLayer`](crate::GatewayErrorLayer): it retries a request only when the layer's
/// hint says a retry is safe.
///
/// Put it outside the layer, so that every attempt is classified:
///
/// ```text
/// ServiceBuilder::new().retry(RetryPolicy::new()).layer(GatewayErrorLayer::new()).service(client)
/// ```
///
/// What it decides from, and in which order:
///
/// 1. **The hint, never the status.** Only a response that carries a [`ProxyError`] extension (one
///    the layer generated) can be retried, and only if [`ProxyError::is_retryable`] says so: the
///    request never left the gateway, or its method is idempotent, or it has an `Idempotency-Key`
///    (the layer's [retry rule](crate::retry::RetryHints::rule) decides). A response the
///    origin sent, 503 included, is the origin's answer and is passed on, not retried; so is an
///    error from a service that is not wrapped in the layer.
/// 2. **The body.** A request whose body cannot be replayed ([`ReplayBody::try_clone`] is `None`)
///    is sent once.
/// 3. **Attempts.** At most [`max_attempts`](RetryPolicy::max_attempts) in all, the first included
///    (default 3).
/// 4. **The wait.** A capped, jittered exponential backoff: attempt *n* waits up to
///    `base_delay × 2^(n-1)`, never more than [`max_delay`](RetryPolicy::max_delay), less a random
///    share of up to [`jitter`](RetryPolicy::jitter) of it. If the generated error carries a
///    `Retry-After` (see [`retry_after_for_kind`](crate::retry::RetryHints::retry_after_for_kind)),
///    the wait is the longer of the two; a `Retry-After` longer than `max_delay` means the request
///    is not retried at all, and the client gets the error with its `Retry-After`.
///    A refusal of [`UpstreamHealthLayer`](crate::health::UpstreamHealthLayer) (an upstream
///    marked unavailable) is never retried: a retry would only be refused again.
/// 5. **The budget.** Every request deposits into a shared [`Budget`] (by default tower's
///    [`TpsBudget::default`]: retries up to 20% of requests, plus 10 a second); every retry
///    withdraws, and when the budget is empty the error goes to the client. This is what keeps an
///    outage from multiplying the load on the upstream.
///
/// Clones share the budget; each request gets its own attempt count.
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
/// use gateway_errors::retry::RetryPolicy;
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
///     .retry(policy)
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
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    jitter: f64,
    budget: Arc<dyn Budget + Send + Sync>,
    /// Attempts made so far for this request (each request works on its own clone).
    attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// A policy with the defaults: 3 attempts in all, backoff from 50 ms up to 2 s with 50%
    /// jitter, and tower's default [`TpsBudget`].
    pub fn new() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            jitter: 0.5,
            budget: Arc::new(TpsBudget::default()),
            attempts: 0,
        }
    }

    /// How many times a request may be sent in all, the first attempt included. `1` turns
    /// retries off; `0` counts as `1`.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The wait before the first retry; each further retry doubles it, up to
    /// [`max_delay`](RetryPolicy::max_delay). Default 50 ms.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The longest the policy waits before a retry, `Retry-After` included: an error whose
    /// `Retry-After` is longer is not retried. Default 2 s.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The share of each backoff that is random, from `0.0` (none: every client waits the same)
    /// to `1.0` (anything from zero to the full backoff). Default `0.5`. Out-of-range values are
    /// clamped.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The budget that bounds retries across all requests, such as a [`TpsBudget`] with your own
    /// numbers. Every clone of this policy shares it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::retry::RetryPolicy;
    /// use tower::retry::budget::TpsBudget;
    ///
    /// // Retries up to 10% of requests, plus 5 a second, counted over the last 10 s.
    /// let policy = RetryPolicy::new().budget(TpsBudget::new(Duration::from_secs(10), 5, 0.1));
    /// # let _ = policy;
    /// ```
    pub fn budget<B>(mut self, budget: B) -> Self
    where
        B: Budget + Send + Sync + 'static,
    {
        self.budget = Arc::new(budget);
        self
    }

    /// The capped, jittered exponential backoff before retry number `retry` (1 for the first).
    fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let full = self
            .base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay);
        let cut = self.jitter * random_unit();
        full.mul_f64(1.0 - cut)
    }

    /// The wait before the next retry, or `None` when `Retry-After` asks for more than the cap.
    fn wait(&self, retry: u32, error: &ProxyError) -> Option<Duration> {
        let backoff = self.backoff(retry);
        match error.retry_after() {
            Some(after) => {
                let after = after.delay_from(SystemTime::now());
                (after <= self.max_delay).then(|| after.max(backoff))
            }
            None => Some(backoff),
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base_delay)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<B, ResBody, E> Policy<Request<B>, Response<ResBody>, E> for RetryPolicy
where
    B: ReplayBody,
{
    type Future = RetryDelay;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResBody>, E>,
    ) -> Option<RetryDelay> {
        self.attempts = self.attempts.saturating_add(1);
        // No hint, no retry: an origin's response, or an error the layer did not see.
        let error = result.as_ref().ok()?.extensions().get::<ProxyError>()?;
        if !error.is_retryable() || self.attempts >= self.max_attempts {
            return None;
        }
        let error_type = error.kind().map_or("", |kind| kind.token());
        if chain(error).any(|e| e.is::<LimitReached>()) {
            // The upstream has all the requests it can serve: a retry from here would only add
            // to them. The client is told when to come back (`Retry-After`).
            tracing::event!(
                target: TARGET,
                tracing::Level::DEBUG,
                error.type = error_type,
                "not retrying: the upstream's concurrency limit is reached",
            );
            return None;
        }
        if chain(error).any(|e| e.is::<UpstreamUnavailable>()) {
            // The upstream is known to be down: a retry would only be refused again, or take the
            // place of the probe that finds out when it is back.
            tracing::event!(
                target: TARGET,
                tracing::Level::DEBUG,
                error.type = error_type,
                "not retrying: the upstream is marked unavailable",
            );
            return None;
        }
        let Some(wait) = self.wait(self.attempts, error) else {
            tracing::event!(
                target: TARGET,
                tracing::Level::DEBUG,
                error.type = error_type,
                "not retrying: the upstream's Retry-After is longer than the retry policy's max_delay",
            );
            return None;
        };
        if !self.budget.withdraw() {
            tracing::event!(
                target: TARGET,
                tracing::Level::DEBUG,
                error.type = error_type,
                "not retrying: the retry budget is spent",
            );
            return None;
        }
        tracing::event!(
            target: TARGET,
            tracing::Level::DEBUG,
            error.type = error_type,
            gateway.attempt = self.attempts + 1,
            gateway.wait_ms = wait.as_millis() as u64,
            "retrying the upstream request",
        );
        Some(RetryDelay {
            sleep: tokio::time::sleep(wait),
        })
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.attempts == 0 {
            // Called once per request before its first attempt (tower keeps the copy for a retry).
            self.budget.deposit();
        }
        let body = request.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

pin_project! {
    /// The wait before a retry made by [`RetryPolicy`].
    pub struct RetryDelay {
        #[pin]
        sleep: Sleep,
    }
}

impl Future for RetryDelay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl fmt::Debug for RetryDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryDelay")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(35))
            .jitter(0.0);
        assert_eq!(policy.backoff(1), Duration::from_millis(10));
        assert_eq!(policy.backoff(2), Duration::from_millis(20));
        assert_eq!(policy.backoff(3), Duration::from_millis(35));
        assert_eq!(policy.backoff(40), Duration::from_millis(35));
    }

    #[test]
    fn jitter_stays_within_its_share_and_varies() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(0.5);
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(1)).collect();
        for wait in &waits {
            assert!(*wait > Duration::from_millis(50) && *wait <= Duration::from_millis(100));
        }
        let first = waits[0];
        assert!(
            waits.iter().any(|w| *w != first),
            "jitter never varied: {first:?}"
        );
    }

    #[test]
    fn retry_after_wins_over_a_shorter_backoff_but_not_over_the_cap() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_secs(3))
            .jitter(0.0);
        let error = |after: Duration| {
            ProxyError::new(crate::ProxyErrorKind::ConnectionRefused)
                .with_retry_hint(true, Some(after.into()))
        };
        assert_eq!(
            policy.wait(1, &error(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(policy.wait(1, &error(Duration::from_secs(4))), None);
        let date = SystemTime::now() + Duration::from_secs(3600);
        let dated = ProxyError::new(crate::ProxyErrorKind::ConnectionRefused)
            .with_retry_hint(true, Some(date.into()));
        assert_eq!(policy.wait(1, &dated), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_for_a_full_upstream_is_never_retried_from_here() {
        use tower::retry::Policy as _;
        let answer = |error: ProxyError| {
            let mut response = Response::new(());
            response
                .extensions_mut()
                .insert(error.with_retry_hint(true, Some(Duration::from_secs(1).into())));
            Ok::<_, std::convert::Infallible>(response)
        };
        let mut request = Request::get("/orders").body(String::new()).unwrap();
        let limited = ProxyError::new(crate::ProxyErrorKind::ConnectionLimitReached)
            .with_source(LimitReached::new());
        let mut policy = RetryPolicy::new().jitter(0.0);
        assert!(policy.retry(&mut request, &mut answer(limited)).is_none());
        // The same kind without the limit behind it (a full pool of the client's): retried.
        let pool_full = ProxyError::new(crate::ProxyErrorKind::ConnectionLimitReached);
        let mut policy = RetryPolicy::new().jitter(0.0);
        assert!(policy.retry(&mut request, &mut answer(pool_full)).is_some());
    }
}
