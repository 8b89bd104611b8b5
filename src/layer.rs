//! [`GatewayErrorLayer`]: the builder, and the configuration its services share.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use tower_layer::Layer;
use tracing::Level;

use crate::cache::ResponseCache;
use crate::classify::Classify;
use crate::grpc::{GrpcCode, GrpcSettings};
use crate::headers::{ProxyName, ProxyStatusValues, RetryAfter};
use crate::kind::ProxyErrorKind;
use crate::negotiate::Format;
use crate::render::{RenderBody, Templates};
use crate::retry::{RetryFacts, RetryRules};
use crate::service::GatewayError;
use crate::template::Template;

/// The default name in `Proxy-Status`. Set your deployment's with
/// [`GatewayErrorLayer::proxy_name`].
pub const DEFAULT_PROXY_NAME: &str = "gateway";

/// Wraps a proxying service so that every upstream failure becomes a correct, consistent,
/// observable response. See the [crate docs](crate) for the whole picture.
///
/// The configuration lives behind one `Arc`: cloning the layer or its services is cheap, and every
/// builder method returns a new layer (the `Arc` is copied on write).
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::GatewayErrorLayer;
///
/// let layer = GatewayErrorLayer::new()
///     .proxy_name("edge-1")
///     .upstream_timeout(Duration::from_secs(30));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct GatewayErrorLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) proxy_name: Box<str>,
    pub(crate) proxy_status: ProxyStatusValues,
    pub(crate) upstream_timeout: Option<Duration>,
    /// `None`: follow `upstream_timeout`; `Some(None)`: off.
    pub(crate) read_timeout: Option<Option<Duration>>,
    pub(crate) response_deadline: Option<Duration>,
    pub(crate) classifiers: Vec<Arc<dyn Classify>>,
    pub(crate) default_format: Format,
    pub(crate) templates: Templates,
    pub(crate) request_id_header: HeaderName,
    pub(crate) span_level: Level,
    pub(crate) retry: RetryRules,
    pub(crate) intercept: StatusSet,
    pub(crate) keep_on_rewrite: Vec<HeaderName>,
    /// Add `details="..."` (the error chain, sanitized and bounded) to our `Proxy-Status` member.
    pub(crate) details: bool,
    /// Empty again in every changed configuration (its `Clone` makes an empty one).
    pub(crate) response_cache: ResponseCache,
    /// The gRPC code per kind, and the gRPC answers already built.
    pub(crate) grpc: GrpcSettings,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl Default for GatewayErrorLayer {
    fn default() -> Self {
        GatewayErrorLayer::new()
    }
}

impl GatewayErrorLayer {
    /// A layer with the defaults: proxy name `gateway`, no upstream timeout, the default
    /// classifier, problem+json for clients without a preference, the built-in templates, request
    /// ids from `x-request-id`, spans at `INFO`, origin errors passed through untouched.
    pub fn new() -> Self {
        let name = ProxyName::new(DEFAULT_PROXY_NAME).expect("default proxy name is a token");
        GatewayErrorLayer {
            config: Arc::new(Config {
                proxy_name: DEFAULT_PROXY_NAME.into(),
                proxy_status: ProxyStatusValues::new(&name),
                upstream_timeout: None,
                read_timeout: None,
                response_deadline: None,
                classifiers: Vec::new(),
                default_format: Format::ProblemJson,
                templates: Templates::default(),
                request_id_header: HeaderName::from_static("x-request-id"),
                span_level: Level::INFO,
                retry: RetryRules::default(),
                intercept: StatusSet::default(),
                keep_on_rewrite: [
                    http::header::RETRY_AFTER,
                    http::header::WWW_AUTHENTICATE,
                    http::header::PROXY_AUTHENTICATE,
                    http::header::ALLOW,
                ]
                .into(),
                details: false,
                response_cache: ResponseCache::default(),
                grpc: GrpcSettings::default(),
                #[cfg(feature = "metrics")]
                metrics: None,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The name of this intermediary in `Proxy-Status` and in the `{proxy}` placeholder: a
    /// deployment name such as `edge-1`, per RFC 9209.
    ///
    /// # Panics
    ///
    /// If the name is empty, longer than 256 bytes or not printable ASCII (it could not be written
    /// in a header). Check a name from configuration with [`ProxyName::new`] first.
    pub fn proxy_name(mut self, name: &str) -> Self {
        let encoded = match ProxyName::new(name) {
            Ok(encoded) => encoded,
            Err(e) => panic!("invalid proxy name {name:?}: {e}"),
        };
        let config = self.config();
        config.proxy_status = ProxyStatusValues::new(&encoded);
        config.proxy_name = name.into();
        self
    }

    /// Answers `504 Gateway Timeout` (`http_response_timeout`) when the inner service has not
    /// produced a response head within `timeout`.
    ///
    /// Unless [`upstream_read_timeout`](Self::upstream_read_timeout) says otherwise, the body that
    /// follows gets the same time between two of its frames.
    ///
    /// Use this instead of tower-http's `TimeoutLayer`, which answers 408 (a client's fault) with an
    /// empty body.
    ///
    /// A gRPC caller's own deadline (`grpc-timeout`) takes its place when it is sooner, and applies
    /// when no timeout is set here; that caller is answered `DEADLINE_EXCEEDED`.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.config().upstream_timeout = Some(timeout);
        self
    }

    /// The longest the origin's response body may keep the gateway waiting for its next frame, in
    /// the manner of nginx's `proxy_read_timeout`. `None` turns it off.
    ///
    /// Default: the [`upstream_timeout`](Self::upstream_timeout), if one is set (else none).
    ///
    /// The status has been sent by the time a body stalls, so it cannot become a 504 any more.
    /// Instead the body ends with an error: the server then breaks the client's connection
    /// (HTTP/1.1: no last chunk, or fewer bytes than `Content-Length`, then a close) or resets the
    /// stream (HTTP/2). A client never mistakes the cut body for a complete one, and never hangs.
    /// The span records `error.type = connection_read_timeout`, the bytes forwarded
    /// (`http.response.body.size`) and `gateway.head_sent = true`.
    ///
    /// The clock runs only while the gateway waits on the origin: a client that reads slowly
    /// (so that the server stops asking for frames) does not use up the origin's time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::GatewayErrorLayer;
    ///
    /// // 30 s for the head, then at most 5 s of silence between body frames.
    /// let layer = GatewayErrorLayer::new()
    ///     .upstream_timeout(Duration::from_secs(30))
    ///     .upstream_read_timeout(Duration::from_secs(5));
    ///
    /// // A long-polling or streaming upstream: time the head only.
    /// let streaming = GatewayErrorLayer::new()
    ///     .upstream_timeout(Duration::from_secs(30))
    ///     .upstream_read_timeout(None);
    /// # let _ = (layer, streaming);
    /// ```
    pub fn upstream_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config().read_timeout = Some(timeout.into());
        self
    }

    /// A deadline for the whole response, head and body together, counted from the request's
    /// arrival at the layer. Off by default.
    ///
    /// Before the head arrives, it answers `504 Gateway Timeout` (`http_response_timeout`), like
    /// [`upstream_timeout`](Self::upstream_timeout) (the earlier of the two fires). After the head,
    /// it cuts the body as a [read timeout](Self::upstream_read_timeout) does, recorded as
    /// `http_response_timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::GatewayErrorLayer;
    ///
    /// // No download through this gateway takes more than a minute, however it trickles.
    /// let layer = GatewayErrorLayer::new().response_deadline(Duration::from_secs(60));
    /// # let _ = layer;
    /// ```
    pub fn response_deadline(mut self, deadline: Duration) -> Self {
        self.config().response_deadline = Some(deadline);
        self
    }

    /// Adds a classifier that runs before the default one (and after those added before it).
    pub fn classifier<C: Classify>(mut self, classifier: C) -> Self {
        self.config().classifiers.push(Arc::new(classifier));
        self
    }

    /// The body format for clients that state no preference, or whose `Accept` allows none of the
    /// formats. Default: problem+json.
    pub fn default_format(mut self, format: Format) -> Self {
        self.config().default_format = format;
        self
    }

    /// Replaces the body template of the template's format for every error.
    pub fn template(mut self, template: Template) -> Self {
        self.config().templates.set_default(template);
        self
    }

    /// Uses `template` for errors with this status (in the template's format).
    pub fn template_for_status(mut self, status: StatusCode, template: Template) -> Self {
        self.config().templates.set_for_status(status, template);
        self
    }

    /// Uses `template` for errors of this kind (in the template's format). Beats a template for a
    /// status.
    pub fn template_for_kind(mut self, kind: ProxyErrorKind, template: Template) -> Self {
        self.config().templates.set_for_kind(kind, template);
        self
    }

    /// Renders bodies with your own engine; where it returns `None`, the templates apply.
    pub fn renderer<R: RenderBody>(mut self, renderer: R) -> Self {
        self.config().templates.set_renderer(Arc::new(renderer));
        self
    }

    /// The request header that carries the request id, when tower-http's `RequestId` extension is
    /// absent. Default: `x-request-id`.
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.config().request_id_header = name;
        self
    }

    /// The level of the per-request span (default `INFO`).
    pub fn span_level(mut self, level: Level) -> Self {
        self.config().span_level = level;
        self
    }

    /// The methods whose requests are safe to repeat after they may have reached the origin.
    /// Default: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    pub fn idempotent_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config().retry.set_idempotent_methods(methods);
        self
    }

    /// Replaces the rule that decides whether a failed request is safe to retry.
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, Phase, RetryFacts};
    ///
    /// // Stricter: only what never left the gateway.
    /// let layer = GatewayErrorLayer::new()
    ///     .retry_rule(|facts: &RetryFacts| facts.phase == Phase::NotSent);
    /// # let _ = layer;
    /// ```
    pub fn retry_rule<F>(mut self, rule: F) -> Self
    where
        F: Fn(&RetryFacts) -> bool + Send + Sync + 'static,
    {
        self.config().retry.set_rule(Arc::new(rule));
        self
    }

    /// Sends `Retry-After` on generated errors of this kind.
    pub fn retry_after_for_kind(
        mut self,
        kind: ProxyErrorKind,
        after: impl Into<RetryAfter>,
    ) -> Self {
        self.config().retry.set_after_for_kind(kind, after.into());
        self
    }

    /// Sends `Retry-After` on generated errors with this status (a kind's setting wins).
    pub fn retry_after_for_status(
        mut self,
        status: StatusCode,
        after: impl Into<RetryAfter>,
    ) -> Self {
        self.config()
            .retry
            .set_after_for_status(status, after.into());
        self
    }

    /// Replaces the body of origin responses with these statuses by a generated one, in the manner
    /// of nginx's `proxy_intercept_errors`. Off by default: origin errors pass through untouched.
    ///
    /// The origin's status is kept, as are its `Retry-After`, `WWW-Authenticate`,
    /// `Proxy-Authenticate` and `Allow` headers (see [`keep_header_on_rewrite`]), and the response
    /// is marked `Proxy-Status: <name>; received-status=<code>`. Statuses outside 400–599 are
    /// ignored.
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    ///
    /// let layer = GatewayErrorLayer::new().intercept_origin_errors(500..=599);
    /// let layer = layer.intercept_origin_errors([404, 410]);
    /// # let _ = layer;
    /// ```
    ///
    /// [`keep_header_on_rewrite`]: GatewayErrorLayer::keep_header_on_rewrite
    pub fn intercept_origin_errors(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        for status in statuses {
            self.config().intercept.insert(status);
        }
        self
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
    /// // Proxy-Status: edge-1; error=connection_refused; details="client error (Connect): ..."
    /// let layer = GatewayErrorLayer::new().proxy_name("edge-1").proxy_status_details(true);
    /// # let _ = layer;
    /// ```
    pub fn proxy_status_details(mut self, enabled: bool) -> Self {
        self.config().details = enabled;
        self
    }

    /// Keeps this origin header when the layer replaces an origin's or a handler's response.
    pub fn keep_header_on_rewrite(mut self, name: HeaderName) -> Self {
        let keep = &mut self.config().keep_on_rewrite;
        if !keep.contains(&name) {
            keep.push(name);
        }
        self
    }
}

impl Config {
    /// The read timeout in force: the one set, else the upstream timeout.
    pub(crate) fn body_read_timeout(&self) -> Option<Duration> {
        self.read_timeout.unwrap_or(self.upstream_timeout)
    }
}

/// gRPC callers.
impl GatewayErrorLayer {
    /// Answers a gRPC caller's errors of this kind with `code` instead of the default from
    /// [`GrpcCode::for_kind`].
    ///
    /// A request whose `Content-Type` is `application/grpc`, `application/grpc-web` or
    /// `application/grpc-web-text` (with any `+suffix` and parameters) is a gRPC call: its
    /// generated errors are HTTP 200 with `grpc-status` and `grpc-message` (for gRPC-Web, in a
    /// trailer frame in the body), not a body in a negotiated format. See the [crate
    /// docs](crate#grpc-callers).
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, GrpcCode, ProxyErrorKind};
    ///
    /// // A full pool means "back off", which gRPC says with RESOURCE_EXHAUSTED.
    /// let layer = GatewayErrorLayer::new()
    ///     .grpc_code_for_kind(ProxyErrorKind::ConnectionLimitReached, GrpcCode::ResourceExhausted);
    /// # let _ = layer;
    /// ```
    pub fn grpc_code_for_kind(mut self, kind: ProxyErrorKind, code: GrpcCode) -> Self {
        self.config().grpc.set_code_for_kind(kind, code);
        self
    }
}

#[cfg(feature = "metrics")]
impl GatewayErrorLayer {
    /// Records OpenTelemetry metrics with `meter`: the semantic conventions'
    /// `http.server.request.duration` histogram for every request, and the
    /// `gateway.errors.generated` counter for every error response the layer generates. The
    /// [`metrics`](crate::metrics) module lists their attributes and says what the duration
    /// measures. Needs the `metrics` feature.
    ///
    /// The instruments are created here, on this meter. A meter from the global provider is bound
    /// to the provider that was set when the meter was made, so set yours first (a meter taken
    /// before that records nothing).
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    /// use opentelemetry::metrics::MeterProvider;
    /// use opentelemetry_sdk::metrics::SdkMeterProvider;
    ///
    /// // The application's pipeline: here the stdout exporter, every 60 s; OTLP is the same with
    /// // opentelemetry-otlp's `MetricExporter`.
    /// let provider = SdkMeterProvider::builder()
    ///     .with_periodic_exporter(opentelemetry_stdout::MetricExporter::default())
    ///     .build();
    /// opentelemetry::global::set_meter_provider(provider.clone());
    ///
    /// // The layer's instruments, under a scope named after this crate.
    /// let layer = GatewayErrorLayer::new()
    ///     .proxy_name("edge-1")
    ///     .metrics(&opentelemetry::global::meter("gateway-errors"));
    ///
    /// // Or with a provider the application holds itself, without the global one:
    /// let layer = GatewayErrorLayer::new().metrics(&provider.meter("gateway-errors"));
    /// # let _ = layer;
    /// ```
    pub fn metrics(mut self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.config().metrics = Some(crate::metrics::Metrics::new(meter));
        self
    }
}

impl<S> Layer<S> for GatewayErrorLayer {
    type Service = GatewayError<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayError::from_config(inner, self.config.clone())
    }
}

impl fmt::Debug for GatewayErrorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.debug_struct("GatewayErrorLayer")
            .field("proxy_name", &config.proxy_name)
            .field("upstream_timeout", &config.upstream_timeout)
            .field("upstream_read_timeout", &config.body_read_timeout())
            .field("response_deadline", &config.response_deadline)
            .field("classifiers", &config.classifiers.len())
            .field("default_format", &config.default_format)
            .field("span_level", &config.span_level)
            .field("proxy_status_details", &config.details)
            .finish_non_exhaustive()
    }
}

/// A set of status codes 400–599, one bit each.
#[derive(Clone, Default)]
pub(crate) struct StatusSet([u64; 4]);

impl StatusSet {
    fn insert(&mut self, status: u16) {
        if (400..600).contains(&status) {
            let i = usize::from(status - 400);
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        let status = status.as_u16();
        if !(400..600).contains(&status) {
            return false;
        }
        let i = usize::from(status - 400);
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}
