//! [`Attempt`]: what a [`RetryService`](super::RetryService) and the
//! [`GatewayErrorService`](crate::GatewayErrorService) inside it share about one request.
//!
//! The retry service puts it in the extensions of every attempt, the first included; the layer
//! finds it there. Nothing is made for a request without a retry service outside the layer: the
//! layer's cost is one lookup in the request's extensions, empty for most requests.

#[cfg(feature = "tower")]
pub(crate) use with_retry::Attempt;
#[cfg(not(feature = "tower"))]
pub(crate) use without_retry::Attempt;

#[cfg(feature = "tower")]
mod with_retry {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use http::Request;
    use tokio::time::Instant;
    use tracing::{Level, Span};

    use crate::config::Config;
    use crate::error::{ProxyError, chain};
    use crate::facts::RequestFacts;
    use crate::health::error::UpstreamUnavailable;
    use crate::health::limit::LimitReached;
    use crate::retry::after::RetryAfter;
    use crate::retry::policy::RetryPolicy;
    use crate::trace::{self, TARGET};

    /// No duration: a limit that is not set, a wait that is not planned.
    const NONE: u64 = u64::MAX;

    fn nanos(duration: Duration) -> u64 {
        u64::try_from(duration.as_nanos()).unwrap_or(NONE - 1)
    }

    /// One request, across its attempts. Clones share it.
    #[derive(Clone)]
    pub(crate) struct Attempt(Arc<Shared>);

    struct Shared {
        policy: Arc<RetryPolicy>,
        /// When the retry service was called: the start of every limit of the request.
        started: Instant,
        /// Whether the retry service keeps a copy of the request to send again.
        replayable: AtomicBool,
        /// The request's span, made by the layer at the first attempt and reused after.
        span: OnceLock<Span>,
        /// 1 for the first attempt. Attempts are made one after another: the service writes it
        /// before an attempt, the layer reads it during it.
        number: AtomicU32,
        /// Whether a `GatewayErrorService` saw the request.
        seen: AtomicBool,
        /// The shortest of the layer's limits on the head, in nanoseconds, or [`NONE`].
        limit: AtomicU64,
        /// The wait before the next attempt that the layer planned, in nanoseconds, or [`NONE`]:
        /// the answer of this attempt is then dropped.
        wait: AtomicU64,
    }

    impl Attempt {
        /// The first attempt of a request, now; `replayable` when a copy is kept for another.
        pub(crate) fn first(policy: Arc<RetryPolicy>, replayable: bool) -> Self {
            Attempt(Arc::new(Shared {
                policy,
                started: Instant::now(),
                replayable: AtomicBool::new(replayable),
                span: OnceLock::new(),
                number: AtomicU32::new(1),
                seen: AtomicBool::new(false),
                limit: AtomicU64::new(NONE),
                wait: AtomicU64::new(NONE),
            }))
        }

        /// The attempt a retry service outside put in `request`, if any.
        #[inline]
        pub(crate) fn find<B>(request: &Request<B>) -> Option<Self> {
            request.extensions().get::<Attempt>().cloned()
        }

        /// The layer takes the attempt: it gets the request's one span (made by `make_span` the
        /// first time), and the time since the first attempt began, which every limit of the
        /// layer has already used. A gRPC caller's own deadline in `facts`, and the duration in
        /// the metrics, count from the first attempt too.
        pub(crate) fn enter(
            &self,
            make_span: impl FnOnce() -> Span,
            config: &Config,
            facts: &mut RequestFacts,
        ) -> (Span, Duration) {
            let shared = &*self.0;
            shared.seen.store(true, Ordering::Relaxed);
            // The soonest the layer gives up on a response head: no attempt begins after it.
            let caller = facts.grpc.and_then(|call| call.timeout);
            let limit = [config.upstream_timeout, config.response_deadline, caller]
                .into_iter()
                .flatten()
                .min();
            shared
                .limit
                .store(limit.map_or(NONE, nanos), Ordering::Relaxed);
            let span = shared.span.get_or_init(make_span).clone();
            let number = shared.number.load(Ordering::Relaxed);
            if number <= 1 {
                return (span, Duration::ZERO);
            }
            trace::record_resend_count(&span, number - 1);
            let elapsed = shared.started.elapsed();
            if let Some(call) = facts.grpc.as_mut() {
                call.timeout = call.timeout.map(|after| after.saturating_sub(elapsed));
            }
            #[cfg(feature = "metrics")]
            if let Some(started) = facts.metrics.as_mut() {
                started.since(shared.started.into_std());
            }
            (span, elapsed)
        }

        /// The layer generated `error` for this attempt, with the retry hint `retryable` and
        /// `retry_after`: whether the retry service will make another attempt. If so, the wait is
        /// planned here, the budget is drawn on, and a `DEBUG` event in `span` says so; the
        /// layer's answer to this attempt is dropped.
        pub(crate) fn again(
            &self,
            span: &Span,
            error: &ProxyError,
            retryable: bool,
            retry_after: Option<RetryAfter>,
        ) -> bool {
            let shared = &*self.0;
            let policy = &*shared.policy;
            let number = shared.number.load(Ordering::Relaxed);
            let replayable = shared.replayable.load(Ordering::Relaxed);
            if !retryable || !replayable || number >= policy.max_attempts {
                return false;
            }
            let error_type = error.kind().map_or("", |kind| kind.token());
            let not = |reason: &str| {
                tracing::event!(
                    target: TARGET,
                    parent: span,
                    Level::DEBUG,
                    error.type = error_type,
                    "not retrying: {reason}",
                );
                false
            };
            if chain(error).any(|e| e.is::<LimitReached>()) {
                // The upstream has all the requests it can serve: a retry from here would only
                // add to them. The client is told when to come back (`Retry-After`).
                return not("the upstream's concurrency limit is reached");
            }
            if chain(error).any(|e| e.is::<UpstreamUnavailable>()) {
                // Known to be down: a retry would only be refused again, or take the place of the
                // probe that finds out when it is back.
                return not("the upstream is marked unavailable");
            }
            let Some(wait) = policy.wait(number, retry_after) else {
                return not(
                    "the upstream's Retry-After is longer than the retry policy's max_delay",
                );
            };
            let limit = shared.limit.load(Ordering::Relaxed);
            if limit != NONE {
                let due = shared.started + Duration::from_nanos(limit);
                if Instant::now() + wait >= due {
                    return not("the next attempt would begin after the request's time is up");
                }
            }
            if !policy.budget.withdraw() {
                return not("the retry budget is spent");
            }
            shared.wait.store(nanos(wait), Ordering::Relaxed);
            tracing::event!(
                target: TARGET,
                parent: span,
                Level::DEBUG,
                error.type = error_type,
                http.request.resend_count = i64::from(number),
                gateway.wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
                "retrying the upstream request",
            );
            true
        }

        /// The wait the layer planned for the next attempt, taken: `None` when the answer of
        /// this attempt is the request's.
        pub(crate) fn take_wait(&self) -> Option<Duration> {
            match self.0.wait.swap(NONE, Ordering::Relaxed) {
                NONE => None,
                wait => Some(Duration::from_nanos(wait)),
            }
        }

        /// The next attempt is about to be made; whether another may follow it.
        pub(crate) fn next(&self) -> bool {
            let number = self.0.number.fetch_add(1, Ordering::Relaxed) + 1;
            number < self.0.policy.max_attempts
        }

        /// The retry service sends its copy itself: there is none left for another attempt.
        pub(crate) fn copy_sent(&self) {
            self.0.replayable.store(false, Ordering::Relaxed);
        }

        /// Whether a `GatewayErrorService` saw the request.
        pub(crate) fn seen(&self) -> bool {
            self.0.seen.load(Ordering::Relaxed)
        }

        /// The request's span, once the layer has made it.
        pub(crate) fn span(&self) -> Option<&Span> {
            self.0.span.get()
        }
    }
}

#[cfg(not(feature = "tower"))]
mod without_retry {
    use std::time::Duration;

    use http::Request;
    use tracing::Span;

    use crate::config::Config;
    use crate::error::ProxyError;
    use crate::facts::RequestFacts;
    use crate::retry::after::RetryAfter;

    /// Without the `tower` feature there is no retry service: no request has an attempt, and the
    /// layer's lookup is a constant `None`.
    #[derive(Clone)]
    pub(crate) enum Attempt {}

    impl Attempt {
        #[inline]
        pub(crate) fn find<B>(_request: &Request<B>) -> Option<Self> {
            None
        }

        pub(crate) fn enter(
            &self,
            _make_span: impl FnOnce() -> Span,
            _config: &Config,
            _facts: &mut RequestFacts,
        ) -> (Span, Duration) {
            match *self {}
        }

        pub(crate) fn again(
            &self,
            _span: &Span,
            _error: &ProxyError,
            _retryable: bool,
            _retry_after: Option<RetryAfter>,
        ) -> bool {
            match *self {}
        }
    }
}
