//! [`GatewayErrorLayer`]: the builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use tower_layer::Layer;
use tracing::Level;

use crate::classify::Classify;
use crate::config::{Config, Settings};
use crate::grpc::GrpcCode;
use crate::headers::ProxyName;
use crate::kind::ProxyErrorKind;
use crate::render::RenderBody;
use crate::render::negotiate::Format;
use crate::render::template::Template;
use crate::retry::{RetryAfter, RetryFacts};
use crate::service::GatewayErrorService;
use crate::stale::StaleIfError;

/// Wraps a proxying service so that every upstream failure becomes a correct, consistent,
/// observable response. See the [crate docs](crate) for the whole picture.
///
/// The configuration lives behind one `Arc`: cloning the layer or its services is cheap. Each
/// builder method takes the layer and returns it with one setting changed; services made before
/// the change keep the configuration they were made with.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::{GatewayErrorLayer, ProxyName};
///
/// let layer = GatewayErrorLayer::new()
///     .proxy_name(ProxyName::from_static("edge-1"))
///     .upstream_timeout(Duration::from_secs(30));
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
    /// A layer with the defaults: proxy name `gateway`, no upstream timeout, the default
    /// classifier, problem+json for clients without a preference, the built-in templates, request
    /// ids from `x-request-id`, spans at `INFO`, origin errors passed through untouched.
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

    /// The name of this gateway in `Proxy-Status` and in the `{proxy}` placeholder: a
    /// deployment name such as `edge-1`, per RFC 9209. Default: `gateway`.
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

    /// Answers `504 Gateway Timeout` (`http_response_timeout`) when the inner service has not
    /// produced a response head within `timeout`.
    ///
    /// Unless [`upstream_read_timeout`](Self::upstream_read_timeout) says otherwise, the body that
    /// follows gets the same time between two of its frames.
    ///
    /// Use this instead of tower-http's `TimeoutLayer`, which answers 408 (a client's fault) with an
    /// empty body.
    ///
    /// The clock counts only the time the gateway waits on the upstream: every moment spent
    /// waiting on the client for more of its upload is left off (see
    /// [`client_body_timeout`](Self::client_body_timeout)). For a request with a body, the
    /// upstream's time in effect starts once the request has been sent in full, as Envoy's route
    /// timeout does: a slow but steady upload is never a 504, while an upstream that does not take
    /// the request (a connect that hangs, an origin that stops reading) still times out.
    ///
    /// A gRPC caller's own deadline (`grpc-timeout`) takes its place when it is sooner, and applies
    /// when no timeout is set here; that caller is answered `DEADLINE_EXCEEDED`.
    pub fn upstream_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.upstream_timeout = Some(timeout))
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
    pub fn upstream_read_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        self.set(|s| s.read_timeout = Some(timeout.into()))
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
    pub fn response_deadline(self, deadline: Duration) -> Self {
        self.set(|s| s.response_deadline = Some(deadline))
    }

    /// The longest a client may keep the gateway waiting for the next part of its request body,
    /// in the manner of nginx's `client_body_timeout`. `None` turns it off. Default: 60 seconds.
    ///
    /// A client that stalls its upload this long is answered `408 Request Timeout` with the
    /// negotiated body and `Connection: close`, at once, and its request to the upstream is
    /// abandoned. A client that breaks its upload off (it closes or resets before the body is
    /// complete) is answered `400 Bad Request`, if it can still read. Both are the client's
    /// [fault](crate::fault): no `Proxy-Status` error type (RFC 9209's types name failures of the
    /// next hop), never counted by the [upstream health](crate::health) breaker, never answered
    /// from a [stored copy](crate::stale). The time spent waiting on the client is never counted
    /// against the [upstream timeout](Self::upstream_timeout).
    ///
    /// The [response deadline](Self::response_deadline) runs from the request's arrival whatever
    /// the client does; when it runs out while the gateway is waiting on the client's upload, that
    /// too is the client's: 408.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::GatewayErrorLayer;
    ///
    /// // Uploads from slow mobile networks: allow 2 minutes of silence.
    /// let layer = GatewayErrorLayer::new().client_body_timeout(Duration::from_secs(120));
    /// # let _ = layer;
    /// ```
    pub fn client_body_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into();
        self.set(|s| s.client_body_timeout = timeout)
    }

    /// Adds a classifier that runs before the default one (and after those added before it).
    pub fn classifier<C: Classify>(self, classifier: C) -> Self {
        self.set(|s| s.classifiers.push(Arc::new(classifier)))
    }

    /// The body format for clients that state no preference, or whose `Accept` allows none of the
    /// formats. Default: problem+json.
    pub fn default_format(self, format: Format) -> Self {
        self.set(|s| s.default_format = format)
    }

    /// Replaces the body template of the template's format for every error.
    pub fn template(self, template: Template) -> Self {
        self.set(|s| s.templates.set_default(template))
    }

    /// Uses `template` for errors with this status (in the template's format).
    pub fn template_for_status(self, status: StatusCode, template: Template) -> Self {
        self.set(|s| s.templates.set_for_status(status, template))
    }

    /// Uses `template` for errors of this kind (in the template's format). Beats a template for a
    /// status.
    pub fn template_for_kind(self, kind: ProxyErrorKind, template: Template) -> Self {
        self.set(|s| s.templates.set_for_kind(kind, template))
    }

    /// Renders bodies with your own engine; where it returns `None`, the templates apply.
    pub fn renderer<R: RenderBody>(self, renderer: R) -> Self {
        self.set(|s| s.templates.set_renderer(Arc::new(renderer)))
    }

    /// The request header that carries the request id, when tower-http's `RequestId` extension is
    /// absent. Default: `x-request-id`.
    pub fn request_id_header(self, name: HeaderName) -> Self {
        self.set(|s| s.request_id_header = name)
    }

    /// The level of the per-request span (default `INFO`).
    pub fn span_level(self, level: Level) -> Self {
        self.set(|s| s.span_level = level)
    }

    /// The methods whose requests are safe to repeat after they may have reached the origin.
    /// Default: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
    pub fn idempotent_methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.set(|s| s.retry.set_idempotent_methods(methods))
    }

    /// Replaces the rule that decides whether a failed request is safe to retry.
    ///
    /// ```
    /// use gateway_errors::retry::RetryFacts;
    /// use gateway_errors::{GatewayErrorLayer, RequestSent};
    ///
    /// // Stricter: only what never left the gateway.
    /// let layer = GatewayErrorLayer::new()
    ///     .retry_rule(|facts: &RetryFacts| facts.request_sent == RequestSent::NotSent);
    /// # let _ = layer;
    /// ```
    pub fn retry_rule<F>(self, rule: F) -> Self
    where
        F: Fn(&RetryFacts) -> bool + Send + Sync + 'static,
    {
        self.set(|s| s.retry.set_rule(Arc::new(rule)))
    }

    /// Sends `Retry-After` on generated errors of this kind.
    pub fn retry_after_for_kind(self, kind: ProxyErrorKind, after: impl Into<RetryAfter>) -> Self {
        self.set(|s| s.retry.set_after_for_kind(kind, after.into()))
    }

    /// Sends `Retry-After` on generated errors with this status (a kind's setting wins).
    pub fn retry_after_for_status(self, status: StatusCode, after: impl Into<RetryAfter>) -> Self {
        self.set(|s| s.retry.set_after_for_status(status, after.into()))
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
    /// use http::StatusCode;
    ///
    /// let layer = GatewayErrorLayer::new()
    ///     // every 5xx
    ///     .intercept_origin_errors((500..600).filter_map(|code| StatusCode::from_u16(code).ok()))
    ///     // and these two
    ///     .intercept_origin_errors([StatusCode::NOT_FOUND, StatusCode::GONE]);
    /// # let _ = layer;
    /// ```
    ///
    /// [`keep_header_on_rewrite`]: GatewayErrorLayer::keep_header_on_rewrite
    pub fn intercept_origin_errors(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.set(|s| {
            statuses
                .into_iter()
                .for_each(|status| s.intercept.insert(status))
        })
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

    /// Keeps this origin header when the layer replaces an origin's or a handler's response.
    pub fn keep_header_on_rewrite(self, name: HeaderName) -> Self {
        self.set(|s| {
            if !s.keep_on_rewrite.contains(&name) {
                s.keep_on_rewrite.push(name);
            }
        })
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
    /// use gateway_errors::stale::StaleIfError;
    ///
    /// // Copies answer up to an hour past their freshness when the origin names no window.
    /// let store = StaleIfError::new().default_window(Duration::from_secs(3600));
    /// let layer = GatewayErrorLayer::new().stale_if_error(store.clone());
    /// # let _ = layer;
    /// ```
    pub fn stale_if_error(self, store: StaleIfError) -> Self {
        self.set(|s| s.stale = Some(store))
    }
}

/// Forwarding loops (RFC 8586 `CDN-Loop`).
impl GatewayErrorLayer {
    /// Turns loop detection on or off. On by default.
    ///
    /// While it is on, the layer appends this gateway's [proxy name](Self::proxy_name) to the
    /// `CDN-Loop` header of every request it forwards (an RFC 8586 list: the members already
    /// there are kept, in order), and a request that arrives already carrying that name (see
    /// [`loop_threshold`](Self::loop_threshold)) is a loop: it is answered at once with `502 Bad
    /// Gateway`, `Proxy-Status: <name>; error=proxy_loop_detected`, the negotiated body, and
    /// `retryable: false` (another attempt would loop again); a gRPC caller gets `INTERNAL`. The
    /// inner service is not called, so a gateway that reaches itself, or two gateways that point
    /// at each other, answer within the first turn instead of multiplying the load.
    ///
    /// The name is what identifies this deployment, so give each deployment its own: two gateways
    /// that share a name take each other's requests for loops. A member that does not parse is
    /// never taken for the name, and names compare ASCII case-insensitively, as host names do.
    ///
    /// Turn it off where something else already owns `CDN-Loop` for this hop (a CDN edge that
    /// appends its own name under the same identity): the layer then neither reads nor writes the
    /// header.
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, ProxyName};
    ///
    /// let layer = GatewayErrorLayer::new()
    ///     .proxy_name(ProxyName::from_static("edge-eu-1"))
    ///     .loop_detection(true);
    /// # let _ = layer;
    /// ```
    pub fn loop_detection(self, enabled: bool) -> Self {
        self.set(|s| {
            s.loop_threshold = match (enabled, s.loop_threshold) {
                (true, None) => Some(1),
                (true, kept) => kept,
                (false, _) => None,
            }
        })
    }

    /// How many times a request may already name this gateway in `CDN-Loop` before it counts as
    /// a loop. Default: `1`, the first time it comes back. Raise it where a request may rightly
    /// pass through the same gateway more than once (a service behind it that calls back
    /// through it): with `2`, a request may come back once, and is refused when it arrives
    /// naming this gateway twice. `0` counts as `1`. Turns loop detection on.
    ///
    /// ```
    /// use gateway_errors::GatewayErrorLayer;
    ///
    /// // The orders service calls the catalogue through this same gateway: one return is fine.
    /// let layer = GatewayErrorLayer::new().loop_threshold(2);
    /// # let _ = layer;
    /// ```
    pub fn loop_threshold(self, times: u32) -> Self {
        self.set(|s| s.loop_threshold = Some(times.max(1)))
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
    /// use gateway_errors::grpc::GrpcCode;
    /// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
    ///
    /// // A full pool means "back off", which gRPC says with RESOURCE_EXHAUSTED.
    /// let layer = GatewayErrorLayer::new()
    ///     .grpc_code_for_kind(ProxyErrorKind::ConnectionLimitReached, GrpcCode::ResourceExhausted);
    /// # let _ = layer;
    /// ```
    pub fn grpc_code_for_kind(self, kind: ProxyErrorKind, code: GrpcCode) -> Self {
        self.set(|s| s.grpc_codes.set(kind, code))
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
    /// use gateway_errors::{GatewayErrorLayer, ProxyName};
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
    ///     .proxy_name(ProxyName::from_static("edge-1"))
    ///     .metrics(&opentelemetry::global::meter("gateway-errors"));
    ///
    /// // Or with a provider the application holds itself, without the global one:
    /// let layer = GatewayErrorLayer::new().metrics(&provider.meter("gateway-errors"));
    /// # let _ = layer;
    /// ```
    pub fn metrics(self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.set(|s| s.metrics = Some(crate::metrics::Metrics::new(meter)))
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
            .field("upstream_read_timeout", &config.body_read_timeout())
            .field("response_deadline", &config.response_deadline)
            .field("client_body_timeout", &config.client_body_timeout)
            .field("classifiers", &config.classifiers.len())
            .field("default_format", &config.default_format)
            .field("span_level", &config.span_level)
            .field("proxy_status_details", &config.details)
            .field("loop_threshold", &config.loop_threshold)
            .field("stale_if_error", &config.stale)
            .finish_non_exhaustive()
    }
}
