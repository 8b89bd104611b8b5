//! [`Telemetry`]: the per-request span, the request id, and (feature `metrics`) OpenTelemetry
//! metrics.

use std::fmt;

use http::HeaderName;
use tracing::Level;

/// What the layer records about each request, for
/// [`GatewayErrorLayer::telemetry`](crate::GatewayErrorLayer::telemetry): the level of its span,
/// where its request id comes from, and (feature `metrics`) the meter its OpenTelemetry
/// instruments are made on.
///
/// [`Telemetry::new`] is the defaults: spans at `INFO`, request ids from tower-http's
/// `RequestId` extension or else the `x-request-id` header, no metrics.
///
/// ```
/// use gateway_errors::{GatewayErrorLayer, Telemetry};
/// use http::HeaderName;
/// use tracing::Level;
///
/// let telemetry = Telemetry::new()
///     .span_level(Level::DEBUG)
///     .request_id_header(HeaderName::from_static("x-correlation-id"));
/// let layer = GatewayErrorLayer::new().telemetry(telemetry);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct Telemetry {
    pub(crate) span_level: Level,
    pub(crate) request_id_header: HeaderName,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    /// The defaults: spans at `INFO`, request ids from `x-request-id`, no metrics.
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, Telemetry};
    ///
    /// // The same as not calling `telemetry` at all.
    /// let layer = GatewayErrorLayer::new().telemetry(Telemetry::new());
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        Telemetry {
            span_level: Level::INFO,
            request_id_header: HeaderName::from_static("x-request-id"),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// The level of the per-request span. Default: `INFO`.
    ///
    /// ```
    /// use gateway_errors::Telemetry;
    /// use tracing::Level;
    ///
    /// // A busy gateway whose subscriber keeps INFO: the request spans only when debugging.
    /// let telemetry = Telemetry::new().span_level(Level::DEBUG);
    /// # let _ = telemetry;
    /// ```
    pub fn span_level(mut self, level: Level) -> Self {
        self.span_level = level;
        self
    }

    /// The request header that carries the request id, when tower-http's `RequestId` extension is
    /// absent. Default: `x-request-id`.
    ///
    /// ```
    /// use gateway_errors::Telemetry;
    /// use http::HeaderName;
    ///
    /// let telemetry = Telemetry::new().request_id_header(HeaderName::from_static("x-amzn-trace-id"));
    /// # let _ = telemetry;
    /// ```
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.request_id_header = name;
        self
    }
}

#[cfg(feature = "metrics")]
impl Telemetry {
    /// Records OpenTelemetry metrics with `meter`: the semantic conventions'
    /// `http.server.request.duration` histogram for every request, and the
    /// `gateway.errors.generated` counter for every error response the layer generates. The
    /// [`metrics`](crate::metrics) module lists their attributes and says what the duration
    /// measures. Needs the `metrics` feature. Default: none.
    ///
    /// The instruments are created here, on this meter. A meter from the global provider is bound
    /// to the provider that was set when the meter was made, so set yours first (a meter taken
    /// before that records nothing).
    ///
    /// ```
    /// use gateway_errors::{GatewayErrorLayer, ProxyName, Telemetry};
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
    ///     .telemetry(Telemetry::new().metrics(&opentelemetry::global::meter("gateway-errors")));
    ///
    /// // Or with a provider the application holds itself, without the global one:
    /// let layer = GatewayErrorLayer::new()
    ///     .telemetry(Telemetry::new().metrics(&provider.meter("gateway-errors")));
    /// # let _ = layer;
    /// ```
    pub fn metrics(mut self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.metrics = Some(crate::metrics::Metrics::new(meter));
        self
    }
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Telemetry");
        debug
            .field("span_level", &self.span_level)
            .field("request_id_header", &self.request_id_header);
        #[cfg(feature = "metrics")]
        debug.field("metrics", &self.metrics.is_some());
        debug.finish()
    }
}
