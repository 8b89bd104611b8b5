//! [`UpstreamHealthLayer`]: the builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use crate::classify::Classify;

use super::attempt::Attempt;
use super::key::ByAuthority;
use super::limit::AdaptiveLimit;
use super::service::UpstreamHealth;
use super::state::{RatioRule, Settings, Table};

/// Keeps the health of each upstream, and answers for one marked unavailable: see the [module
/// docs](super).
///
/// All the services one layer makes, and all their clones, share one table of upstreams: build the
/// layer once, and clone it (or its services) for every route and connection. Each builder method
/// returns the layer with one setting changed and a new, empty table; services made before the
/// change keep theirs.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::health::UpstreamHealthLayer;
///
/// // The defaults, spelled out.
/// let layer = UpstreamHealthLayer::new()
///     .consecutive_failures(5)
///     .open_time(Duration::from_secs(10))
///     .max_open_time(Duration::from_secs(300));
/// # let _ = layer;
/// ```
pub struct UpstreamHealthLayer<K = ByAuthority> {
    key: Arc<K>,
    table: Arc<Table>,
}

impl Default for UpstreamHealthLayer {
    fn default() -> Self {
        UpstreamHealthLayer::new()
    }
}

impl UpstreamHealthLayer {
    /// A layer with the defaults: keyed by the request URI's scheme and authority, marked
    /// unavailable after 5 consecutive failures of the upstream's connection or timeouts, open
    /// for 10 s times the trips in a row (at most 5 minutes) less up to 10% jitter, one probe at a
    /// time, up to 1,024 upstreams tracked.
    pub fn new() -> Self {
        UpstreamHealthLayer {
            key: Arc::new(ByAuthority),
            table: Arc::new(Table::new(Settings::default())),
        }
    }
}

impl<K> UpstreamHealthLayer<K> {
    /// Changes the settings: a copy of them, and a new table.
    fn set(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.table.settings().clone();
        change(&mut settings);
        UpstreamHealthLayer {
            key: self.key,
            table: Arc::new(Table::new(settings)),
        }
    }

    /// Marks an upstream unavailable after this many failures in a row (default 5; `0` counts as
    /// `1`). A success ends the run; failures further apart than
    /// [`forget_after`](Self::forget_after) do not make one.
    pub fn consecutive_failures(self, failures: u32) -> Self {
        self.set(|s| s.consecutive_failures = failures.max(1))
    }

    /// Also marks an upstream unavailable when, over the last `window`, at least `min_requests`
    /// requests were recorded and `ratio` (0.0 to 1.0) or more of them failed. Off by default.
    ///
    /// Requests are counted from the upstream's first failure on (an upstream that never fails
    /// costs nothing), in ten buckets of a tenth of the window each.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::health::UpstreamHealthLayer;
    ///
    /// // Half of at least 20 requests in 30 s, or 5 in a row.
    /// let layer = UpstreamHealthLayer::new().failure_ratio(0.5, Duration::from_secs(30), 20);
    /// # let _ = layer;
    /// ```
    pub fn failure_ratio(self, ratio: f64, window: Duration, min_requests: u32) -> Self {
        let ratio = if ratio.is_nan() {
            1.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        let window = window.max(Duration::from_millis(10));
        self.set(|s| {
            s.ratio = Some(RatioRule {
                ratio,
                window,
                min_requests: min_requests.max(1),
            })
        })
    }

    /// How long an upstream stays unavailable the first time (default 10 s). Each further trip in
    /// a row (a probe that fails) keeps it unavailable this long times the number of trips, up to
    /// [`max_open_time`](Self::max_open_time).
    ///
    /// Every duration this builder takes may be as long as `Duration::MAX`: the layer counts in
    /// saturating arithmetic, and a time past what it can count (some 584 years) is simply that
    /// long.
    pub fn open_time(self, open: Duration) -> Self {
        self.set(|s| s.open_time = open)
    }

    /// The longest an upstream stays unavailable before a probe (default 5 minutes).
    pub fn max_open_time(self, max: Duration) -> Self {
        self.set(|s| s.max_open_time = max)
    }

    /// The share of each open time that is random, from `0.0` (none) to `1.0`: an open time is
    /// shortened by up to this share of it, so that gateways that marked an upstream unavailable
    /// together do not probe it together. Default `0.1`.
    pub fn jitter(self, jitter: f64) -> Self {
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self.set(|s| s.jitter = jitter)
    }

    /// How long a probe may go unanswered before it counts as a failed probe (default 30 s): the
    /// safety net for an inner service without a timeout. With
    /// [`TimeLimits::upstream_timeout`](crate::TimeLimits::upstream_timeout)
    /// shorter than this, the probe fails at that timeout instead.
    pub fn probe_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.probe_timeout = timeout)
    }

    /// How long an upstream's failures are remembered without a new one (default 60 s, and at
    /// least the window of a [failure ratio](Self::failure_ratio)). Older failures no longer
    /// count toward a run, and an upstream that has been quiet this long gives its slot to
    /// another upstream that needs one.
    pub fn forget_after(self, after: Duration) -> Self {
        self.set(|s| s.forget_after = after)
    }

    /// How many upstreams are tracked at most (default 1,024, rounded up to a power of two). The
    /// table is made with the layer and never grows: an upstream gets a slot at its first
    /// failure, in a group of eight its key's hash picks. When every slot of that group holds an
    /// upstream with failures to remember, the new upstream is not tracked: its requests are
    /// forwarded as if the layer were not there. Keep this at least twice the number of upstreams
    /// you expect to fail at once. Each slot costs about 80 bytes (plus 80 with a failure ratio),
    /// and the upstream's name for events once it has failed (at most 200 bytes).
    pub fn max_upstreams(self, upstreams: usize) -> Self {
        self.set(|s| s.max_upstreams = upstreams)
    }

    /// Counts these origin statuses as failures too (none by default). For an origin behind
    /// another proxy or load balancer, whose 502, 503 and 504 mean that the upstream behind it
    /// is down:
    ///
    /// ```
    /// use gateway_errors::health::UpstreamHealthLayer;
    /// use http::StatusCode;
    ///
    /// let layer = UpstreamHealthLayer::new().failure_statuses([
    ///     StatusCode::BAD_GATEWAY,
    ///     StatusCode::SERVICE_UNAVAILABLE,
    ///     StatusCode::GATEWAY_TIMEOUT,
    /// ]);
    /// # let _ = layer;
    /// ```
    ///
    /// Statuses outside 400–599 are ignored. The response still goes to the client unchanged.
    pub fn failure_statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.set(|s| {
            statuses
                .into_iter()
                .for_each(|status| s.failure_statuses.insert(status))
        })
    }

    /// Replaces the rule that decides which errors (and statuses) count as the upstream's
    /// failures; [`Attempt::counts_by_default`] is the default one. Statuses given to
    /// [`failure_statuses`](Self::failure_statuses) count whatever the rule says.
    ///
    /// An error the rule does not count says nothing about the upstream: it neither counts as a
    /// failure nor ends a run of them. A response head the rule does not count is a success.
    pub fn failure_rule<F>(self, rule: F) -> Self
    where
        F: Fn(&Attempt<'_>) -> bool + Send + Sync + 'static,
    {
        self.set(|s| s.rule = Some(Arc::new(rule)))
    }

    /// Adds a classifier that runs before the default one (and after those added before it) to
    /// decide the kind of an inner service's error, which the failure rule reads: give it the
    /// classifiers you gave the [`GatewayErrorLayer`](crate::GatewayErrorLayer), so that the two
    /// layers agree on what an error is. Without them, an error only your classifier recognises
    /// has no kind here, and the default rule does not count it.
    ///
    /// ```
    /// use std::error::Error;
    /// use gateway_errors::health::UpstreamHealthLayer;
    /// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
    ///
    /// #[derive(Debug)]
    /// struct BackendDown;
    /// impl std::fmt::Display for BackendDown {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("backend down")
    ///     }
    /// }
    /// impl Error for BackendDown {}
    ///
    /// fn backend_down(error: &(dyn Error + 'static)) -> Option<ProxyErrorKind> {
    ///     error.is::<BackendDown>().then_some(ProxyErrorKind::ConnectionRefused)
    /// }
    ///
    /// let gateway = GatewayErrorLayer::new().classifier(backend_down);
    /// let health = UpstreamHealthLayer::new().classifier(backend_down);
    /// # let _ = (gateway, health);
    /// ```
    pub fn classifier<C: Classify>(self, classifier: C) -> Self {
        self.set(|s| s.classifiers.push(Arc::new(classifier)))
    }

    /// Forwards requests to an upstream marked unavailable instead of refusing them (off by
    /// default). The state, its transitions, the events, the span field and the metrics stay the
    /// same; clients get whatever the upstream gives them, and the first request that gets an
    /// answer marks the upstream available again at once.
    ///
    /// Pick this for a single upstream where a refusal helps no one: there is nowhere else to
    /// send the request, failures are quick (a refused connection), and a client would rather
    /// have the chance that its request is the one that finds the upstream back. Keep refusing
    /// (the default) when an upstream that is down costs clients a timeout each, when there are
    /// other upstreams or clients that act on `Retry-After`, or when the upstream needs the load
    /// kept off it while it comes back.
    pub fn forward_when_unavailable(self, forward: bool) -> Self {
        self.set(|s| s.forward = forward)
    }

    /// Limits the requests in flight to each upstream to what it serves without queueing, and
    /// refuses the rest at once with `503 connection_limit_reached` and `Retry-After` (off by
    /// default): see [`limit`](super::limit) for the controller, what it measures, and when to
    /// use it.
    ///
    /// ```
    /// use gateway_errors::health::{AdaptiveLimit, UpstreamHealthLayer};
    ///
    /// let layer = UpstreamHealthLayer::new().adaptive_limit(AdaptiveLimit::new().max(500));
    /// # let _ = layer;
    /// ```
    pub fn adaptive_limit(self, limit: AdaptiveLimit) -> Self {
        self.set(|s| s.limit = Some(limit))
    }

    /// Keys requests by `key` instead of the request URI's scheme and authority: for a router
    /// that picks the upstream some other way. See [`KeyUpstream`](super::KeyUpstream).
    ///
    /// ```
    /// use gateway_errors::health::UpstreamHealthLayer;
    /// use http::Request;
    ///
    /// // The upstream named in a header set by an earlier routing layer.
    /// let layer = UpstreamHealthLayer::new().key_by(|request: &Request<String>| {
    ///     let upstream = request.headers().get("x-upstream")?;
    ///     Some(match upstream.as_bytes() {
    ///         b"orders" => "orders",
    ///         b"billing" => "billing",
    ///         _ => return None,
    ///     })
    /// });
    /// # let _ = layer;
    /// ```
    pub fn key_by<F>(self, key: F) -> UpstreamHealthLayer<F> {
        UpstreamHealthLayer {
            key: Arc::new(key),
            table: Arc::new(Table::new(self.table.settings().clone())),
        }
    }
}

#[cfg(feature = "metrics")]
impl<K> UpstreamHealthLayer<K> {
    /// Records the transitions and the number of upstreams marked unavailable with `meter` (see
    /// the [`metrics`](crate::metrics) module). Needs the `metrics` feature.
    ///
    /// ```
    /// use gateway_errors::health::UpstreamHealthLayer;
    ///
    /// let layer = UpstreamHealthLayer::new().metrics(&opentelemetry::global::meter("gateway-errors"));
    /// # let _ = layer;
    /// ```
    pub fn metrics(self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.set(|s| s.metrics = Some(crate::metrics::HealthMetrics::new(meter)))
    }
}

impl<K> Clone for UpstreamHealthLayer<K> {
    fn clone(&self) -> Self {
        UpstreamHealthLayer {
            key: self.key.clone(),
            table: self.table.clone(),
        }
    }
}

impl<S, K> Layer<S> for UpstreamHealthLayer<K> {
    type Service = UpstreamHealth<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        UpstreamHealth::new(inner, self.key.clone(), self.table.clone())
    }
}

impl<K> fmt::Debug for UpstreamHealthLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.table.settings();
        f.debug_struct("UpstreamHealthLayer")
            .field("consecutive_failures", &settings.consecutive_failures)
            .field("failure_ratio", &settings.ratio)
            .field("open_time", &settings.open_time)
            .field("max_open_time", &settings.max_open_time)
            .field("jitter", &settings.jitter)
            .field("probe_timeout", &settings.probe_timeout)
            .field("forget_after", &settings.forget_after)
            .field("upstreams", &self.table.capacity())
            .field("forward_when_unavailable", &settings.forward)
            .field("classifiers", &settings.classifiers.len())
            .field("adaptive_limit", &settings.limit)
            .finish_non_exhaustive()
    }
}
