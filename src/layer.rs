//! [`GatewayErrorLayer`]: the builder.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;
use tower_layer::Layer;

use crate::classify::Classify;
use crate::config::{Config, Settings};
use crate::grpc::GrpcCodes;
use crate::headers::ProxyName;
use crate::loop_detection::LoopDetection;
use crate::render::bodies::Bodies;
use crate::retry::hints::RetryHints;
use crate::service::GatewayErrorService;
use crate::stale::Store;
use crate::telemetry::Telemetry;
use crate::time_limits::TimeLimits;

/// Wraps a proxying service so that every upstream failure becomes a correct, consistent,
/// observable response. See the [crate docs](crate) for the whole picture.
///
/// The configuration lives behind one `Arc`: cloning the layer or its services is cheap. Each
/// builder method takes the layer and returns it with one setting changed (a call replaces what
/// the same method set before); services made before the change keep the configuration they were
/// made with. Related settings come as one value with its own builder, as tower-http's
/// `TraceLayer` takes its hooks:
///
/// | method | value | what it sets |
/// |---|---|---|
/// | [`proxy_name`](Self::proxy_name) | [`ProxyName`] | the name in `Proxy-Status` and `CDN-Loop` |
/// | [`time_limits`](Self::time_limits) | [`TimeLimits`] | upstream timeout, read timeout, response deadline, client body timeout |
/// | [`classifier`](Self::classifier) | a [`Classify`] | what an inner service's error means |
/// | [`bodies`](Self::bodies) | [`Bodies`] | the body format and templates, headers kept on a rewrite |
/// | [`retry_hints`](Self::retry_hints) | [`RetryHints`] | idempotent methods, the retry rule, `Retry-After` |
/// | [`failure_statuses`](Self::failure_statuses) | statuses | origin errors whose body is replaced |
/// | [`proxy_status_details`](Self::proxy_status_details) | `bool` | the error chain in `Proxy-Status` |
/// | [`serve_stale`](Self::serve_stale) | [`Store`] | the last good copy answers while the origin is down |
/// | [`loop_detection`](Self::loop_detection) | [`LoopDetection`] | forwarding loops (`CDN-Loop`) |
/// | [`grpc_codes`](Self::grpc_codes) | [`GrpcCodes`] | the gRPC code per kind |
/// | [`telemetry`](Self::telemetry) | [`Telemetry`] | span level, request id header, metrics |
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::{GatewayErrorLayer, ProxyName, TimeLimits};
///
/// let layer = GatewayErrorLayer::new()
///     .proxy_name(ProxyName::from_static("edge-1"))
///     .time_limits(TimeLimits::new().upstream_timeout(Duration::from_secs(30)));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct GatewayErrorLayer {
    config: Arc<Config>,
}

impl Default for GatewayErrorLayer {
    fn default() -> Self {
        GatewayErrorLayer::new()
    }
}

impl GatewayErrorLayer {
    /// A layer with the defaults: proxy name `gateway`, the default [`TimeLimits`] (no upstream
    /// timeout, 60 seconds for a silent upload), the default classifier, the default [`Bodies`]
    /// (problem+json for clients without a preference, the built-in templates), the default
    /// [`RetryHints`], origin errors passed through untouched, no stored copies, loop detection
    /// on, the default [`GrpcCodes`], and the default [`Telemetry`] (spans at `INFO`, request ids
    /// from `x-request-id`).
    pub fn new() -> Self {
        GatewayErrorLayer {
            config: Arc::new(Config::new(Settings::default())),
        }
    }

    /// Changes the settings of this layer (a copy of them: services already made are untouched).
    fn set(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.config.settings().clone();
        change(&mut settings);
        self.config = Arc::new(Config::new(settings));
        self
    }

    /// The name of this gateway in `Proxy-Status`, in `CDN-Loop` and in the `{proxy}`
    /// placeholder: a deployment name such as `edge-1`, per RFC 9209. Default: `gateway`.
    ///
    /// A [`ProxyName`] is checked when it is made: [`ProxyName::from_static`] for a literal,
    /// [`ProxyName::new`] (which returns an error) for a name from configuration.
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, ProxyName};
    ///
    /// let layer = GatewayErrorLayer::new().proxy_name(ProxyName::from_static("edge-1"));
    ///
    /// let configured = "edge-2"; // from a file or the environment
    /// let layer = GatewayErrorLayer::new().proxy_name(ProxyName::new(configured)?);
    /// # let _ = layer;
    /// # Ok::<(), gateway_errors::headers::InvalidProxyName>(())
    /// ```
    pub fn proxy_name(self, name: ProxyName) -> Self {
        self.set(|s| s.proxy_name = name)
    }

    /// How long the layer waits on the upstream (for the head, between body frames, for the whole
    /// response) and on the client's upload. Replaces every limit: a limit the value leaves alone
    /// has its default. See [`TimeLimits`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::{GatewayErrorLayer, TimeLimits};
    ///
    /// // 30 s for the head, then at most 5 s of silence between body frames.
    /// let layer = GatewayErrorLayer::new().time_limits(
    ///     TimeLimits::new()
    ///         .upstream_timeout(Duration::from_secs(30))
    ///         .read_timeout(Duration::from_secs(5)),
    /// );
    /// # let _ = layer;
    /// ```
    pub fn time_limits(self, limits: TimeLimits) -> Self {
        self.set(|s| s.set_time_limits(limits))
    }

    /// Adds a classifier that runs before the default one (and after those added before it).
    /// The one method that adds rather than replaces: classifiers form a chain. See
    /// [`Classify`].
    ///
    /// ```
    /// use std::error::Error;
    /// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
    ///
    /// // An error type of the application's own client: its pool is full.
    /// #[derive(Debug)]
    /// struct PoolFull;
    /// impl std::fmt::Display for PoolFull {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("pool full")
    ///     }
    /// }
    /// impl Error for PoolFull {}
    ///
    /// let layer = GatewayErrorLayer::new().classifier(|error: &(dyn Error + 'static)| {
    ///     error.is::<PoolFull>().then_some(ProxyErrorKind::ConnectionLimitReached)
    /// });
    /// # let _ = layer;
    /// ```
    pub fn classifier<C: Classify>(self, classifier: C) -> Self {
        self.set(|s| s.classifiers.push(Arc::new(classifier)))
    }

    /// The bodies of generated errors: the format for clients without a preference, the
    /// templates, your own renderer, and the origin headers kept when the layer replaces an
    /// origin's response. See [`Bodies`].
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    /// use gateway_errors::render::{Bodies, Format, Template};
    ///
    /// let layer = GatewayErrorLayer::new().bodies(
    ///     Bodies::new()
    ///         .default_format(Format::Html)
    ///         .template(Template::html("<h1>{status} {title}</h1><p>{detail}</p>")?),
    /// );
    /// # let _ = layer;
    /// # Ok::<(), gateway_errors::render::TemplateError>(())
    /// ```
    pub fn bodies(self, bodies: Bodies) -> Self {
        self.set(|s| s.set_bodies(bodies))
    }

    /// What generated errors say about retrying: the idempotent methods, the rule, and the
    /// `Retry-After` per kind or status. See [`RetryHints`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::retry::RetryHints;
    /// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
    ///
    /// let layer = GatewayErrorLayer::new().retry_hints(
    ///     RetryHints::new()
    ///         .retry_after_for_kind(ProxyErrorKind::ConnectionLimitReached, Duration::from_secs(1)),
    /// );
    /// # let _ = layer;
    /// ```
    pub fn retry_hints(self, hints: RetryHints) -> Self {
        self.set(|s| s.set_retry_hints(hints))
    }

    /// The origin statuses that mean the upstream failed: the layer replaces the body of an
    /// origin response with one of these statuses by a generated one, in the manner of nginx's
    /// `proxy_intercept_errors`. Replaces the set given before. Default: none (origin errors
    /// pass through untouched).
    ///
    /// The origin's status is kept, as are its `Retry-After`, `WWW-Authenticate`,
    /// `Proxy-Authenticate` and `Allow` headers (see [`Bodies::keep_origin_header`]), and the
    /// response is marked `Proxy-Status: <name>; received-status=<code>`. Statuses outside
    /// 400–599 are ignored. A gRPC call's own answers are never replaced.
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    /// use http::StatusCode;
    ///
    /// // Every 5xx, and these two.
    /// let statuses = (500..600)
    ///     .filter_map(|code| StatusCode::from_u16(code).ok())
    ///     .chain([StatusCode::NOT_FOUND, StatusCode::GONE]);
    /// let layer = GatewayErrorLayer::new().failure_statuses(statuses);
    /// # let _ = layer;
    /// ```
    pub fn failure_statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.set(|s| s.set_failure_statuses(statuses))
    }

    /// Adds a `details` parameter to this gateway's `Proxy-Status` member on generated errors: the
    /// error and its `source()` chain, as a Structured Field string of printable ASCII (`"` and `\`
    /// escaped, anything else replaced by `?`), at most 256 bytes, cut with `...`. Off by default.
    ///
    /// RFC 9209 warns that `details` can reveal internals: an error chain names hosts, addresses
    /// and operating-system errors. Turn it on only where every client is trusted (an internal hop
    /// whose callers are your own services). The body never carries it.
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    ///
    /// // Proxy-Status: gateway; error=connection_refused; details="client error (Connect): ..."
    /// let layer = GatewayErrorLayer::new().proxy_status_details(true);
    /// # let _ = layer;
    /// ```
    pub fn proxy_status_details(self, enabled: bool) -> Self {
        self.set(|s| s.details = enabled)
    }

    /// Keeps the last good copy of storable GET responses in `store`, and answers with it,
    /// visibly stale, where the layer would otherwise answer a GET or HEAD with a 500, 502, 503
    /// or 504: while the origin is down, visitors and crawlers keep the page. See the
    /// [`stale`](crate::stale) module for what is stored and when a copy answers.
    ///
    /// `store` is a handle: every clone of this layer and of its services shares it, and the
    /// application can keep a clone to read or clear it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::GatewayErrorLayer;
    /// use gateway_errors::stale::Store;
    ///
    /// // Copies answer up to an hour past their freshness when the origin names no window.
    /// let store = Store::new().default_window(Duration::from_secs(3600));
    /// let layer = GatewayErrorLayer::new().serve_stale(store.clone());
    /// # let _ = layer;
    /// ```
    pub fn serve_stale(self, store: Store) -> Self {
        self.set(|s| s.stale = Some(store))
    }

    /// Whether and when a request that comes back to this gateway is refused as a forwarding
    /// loop (RFC 8586 `CDN-Loop`). On by default: the first time it comes back. See
    /// [`LoopDetection`].
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, LoopDetection, ProxyName};
    ///
    /// // A CDN in front already owns CDN-Loop under this name.
    /// let layer = GatewayErrorLayer::new()
    ///     .proxy_name(ProxyName::from_static("edge-eu-1"))
    ///     .loop_detection(LoopDetection::off());
    /// # let _ = layer;
    /// ```
    pub fn loop_detection(self, detection: LoopDetection) -> Self {
        self.set(|s| s.set_loop_detection(detection))
    }

    /// The gRPC code each kind of generated error is answered with, on a gRPC call. Default:
    /// [`GrpcCode::for_kind`](crate::grpc::GrpcCode::for_kind). See [`GrpcCodes`] and the [crate
    /// docs](crate#grpc-callers).
    ///
    /// ```
    /// use gateway_errors::grpc::{GrpcCode, GrpcCodes};
    /// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
    ///
    /// // A full pool means "back off", which gRPC says with RESOURCE_EXHAUSTED.
    /// let layer = GatewayErrorLayer::new().grpc_codes(
    ///     GrpcCodes::new().code_for_kind(ProxyErrorKind::ConnectionLimitReached, GrpcCode::ResourceExhausted),
    /// );
    /// # let _ = layer;
    /// ```
    pub fn grpc_codes(self, codes: GrpcCodes) -> Self {
        self.set(|s| s.grpc_codes = codes)
    }

    /// What the layer records about each request: the span level, the request id header, and
    /// (feature `metrics`) OpenTelemetry metrics. See [`Telemetry`].
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, Telemetry};
    /// use tracing::Level;
    ///
    /// let layer = GatewayErrorLayer::new().telemetry(Telemetry::new().span_level(Level::DEBUG));
    /// # let _ = layer;
    /// ```
    pub fn telemetry(self, telemetry: Telemetry) -> Self {
        self.set(|s| s.set_telemetry(telemetry))
    }
}

impl<S> Layer<S> for GatewayErrorLayer {
    type Service = GatewayErrorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayErrorService::from_config(inner, self.config.clone())
    }
}

impl fmt::Debug for GatewayErrorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.debug_struct("GatewayErrorLayer")
            .field("proxy_name", &config.proxy_name)
            .field("upstream_timeout", &config.upstream_timeout)
            .field("read_timeout", &config.body_read_timeout())
            .field("response_deadline", &config.response_deadline)
            .field("client_body_timeout", &config.client_body_timeout)
            .field("classifiers", &config.classifiers.len())
            .field("default_format", &config.default_format)
            .field("span_level", &config.span_level)
            .field("proxy_status_details", &config.details)
            .field("loop_threshold", &config.loop_threshold)
            .field("serve_stale", &config.stale)
            .finish_non_exhaustive()
    }
}
