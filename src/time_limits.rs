//! [`TimeLimits`]: how long the layer waits on the upstream and on the client.

use std::time::Duration;

/// nginx's `client_body_timeout`: a client whose upload is silent this long is answered 408.
pub(crate) const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the layer waits, for [`GatewayErrorLayer::time_limits`](crate::GatewayErrorLayer::time_limits):
/// on the upstream for the response head, between two frames of its body, for the whole
/// response, and on the client between two parts of its upload.
///
/// Every limit takes a [`Duration`] or `None`, which turns that limit off. Defaults
/// ([`TimeLimits::new`]): no upstream timeout, a read timeout that follows the upstream timeout,
/// no response deadline, and a 60-second client body timeout.
///
/// A limit on the upstream answers `504 Gateway Timeout` (`http_response_timeout`) while the
/// head has not arrived, and cuts the body once it has; a limit on the client answers `408
/// Request Timeout`, the client's [fault](crate::fault). The upstream and read timeouts count only
/// the time spent waiting on the upstream: a slow upload never uses up the upstream's time, and a
/// client that reads slowly never uses up the origin's. The response deadline counts from the
/// request's arrival, whatever either side does.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::{GatewayErrorLayer, TimeLimits};
///
/// let layer = GatewayErrorLayer::new().time_limits(
///     TimeLimits::new()
///         // 30 s for the response head,
///         .upstream_timeout(Duration::from_secs(30))
///         // then at most 5 s of silence between body frames,
///         .read_timeout(Duration::from_secs(5))
///         // and no download takes more than 10 minutes however it trickles;
///         .response_deadline(Duration::from_secs(600))
///         // uploads from slow mobile networks: 2 minutes of silence allowed.
///         .client_body_timeout(Duration::from_secs(120)),
/// );
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    pub(crate) upstream_timeout: Option<Duration>,
    /// `None`: follow `upstream_timeout`; `Some(None)`: off.
    pub(crate) read_timeout: Option<Option<Duration>>,
    pub(crate) response_deadline: Option<Duration>,
    pub(crate) client_body_timeout: Option<Duration>,
}

impl Default for TimeLimits {
    fn default() -> Self {
        TimeLimits::new()
    }
}

impl TimeLimits {
    /// The defaults: no upstream timeout, a read timeout that follows it, no response deadline,
    /// a client body timeout of 60 seconds.
    ///
    /// ```
    /// use gateway_errors::TimeLimits;
    ///
    /// assert_eq!(TimeLimits::new(), TimeLimits::default());
    /// ```
    pub const fn new() -> Self {
        TimeLimits {
            upstream_timeout: None,
            read_timeout: None,
            response_deadline: None,
            client_body_timeout: Some(DEFAULT_CLIENT_BODY_TIMEOUT),
        }
    }

    /// The longest the upstream may take to produce the response head: past it, the client is
    /// answered `504 Gateway Timeout` (`http_response_timeout`). `None` turns it off. Default:
    /// off.
    ///
    /// Use this instead of tower-http's `TimeoutLayer`, which answers 408 (a client's fault) with
    /// an empty body.
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
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::{GatewayErrorLayer, TimeLimits};
    ///
    /// let limits = TimeLimits::new().upstream_timeout(Duration::from_secs(30));
    /// let layer = GatewayErrorLayer::new().time_limits(limits);
    /// # let _ = layer;
    /// ```
    pub fn upstream_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.upstream_timeout = timeout.into();
        self
    }

    /// The longest the origin's response body may keep the gateway waiting for its next frame, in
    /// the manner of nginx's `proxy_read_timeout`. `None` turns it off. Default: the
    /// [`upstream_timeout`](Self::upstream_timeout), if one is set (else off).
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
    /// use gateway_errors::TimeLimits;
    ///
    /// // 30 s for the head, then at most 5 s of silence between body frames.
    /// let limits = TimeLimits::new()
    ///     .upstream_timeout(Duration::from_secs(30))
    ///     .read_timeout(Duration::from_secs(5));
    ///
    /// // A long-polling or streaming upstream: time the head only.
    /// let streaming = TimeLimits::new()
    ///     .upstream_timeout(Duration::from_secs(30))
    ///     .read_timeout(None);
    /// # let _ = (limits, streaming);
    /// ```
    pub fn read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.read_timeout = Some(timeout.into());
        self
    }

    /// A deadline for the whole response, head and body together, counted from the request's
    /// arrival at the layer. `None` turns it off. Default: off.
    ///
    /// Before the head arrives, it answers `504 Gateway Timeout` (`http_response_timeout`), like
    /// the [`upstream_timeout`](Self::upstream_timeout) (the earlier of the two fires). After the
    /// head, it cuts the body as a [read timeout](Self::read_timeout) does, recorded as
    /// `http_response_timeout`. When it runs out while the gateway is waiting on the client's
    /// upload, that is the client's: 408.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::TimeLimits;
    ///
    /// // No download through this gateway takes more than a minute, however it trickles.
    /// let limits = TimeLimits::new().response_deadline(Duration::from_secs(60));
    /// # let _ = limits;
    /// ```
    pub fn response_deadline(mut self, deadline: impl Into<Option<Duration>>) -> Self {
        self.response_deadline = deadline.into();
        self
    }

    /// The longest a client may keep the gateway waiting for the next part of its request body,
    /// in the manner of nginx's `client_body_timeout`. `None` turns it off. Default: 60 seconds.
    ///
    /// A client that stalls its upload this long is answered `408 Request Timeout` with the
    /// negotiated body and `Connection: close`, at once, and its request to the upstream is
    /// abandoned. A client that breaks its upload off (it closes or resets before the body is
    /// complete) is answered `400 Bad Request`, if it can still read. Both are the client's
    /// [fault](crate::fault): no `Proxy-Status` error type (RFC 9209's types name failures of the
    /// next hop), never counted by the [health layer](crate::health), never answered
    /// from a [stored copy](crate::stale). The time spent waiting on the client is never counted
    /// against the [upstream timeout](Self::upstream_timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use gateway_errors::TimeLimits;
    ///
    /// // Uploads from slow mobile networks: allow 2 minutes of silence.
    /// let limits = TimeLimits::new().client_body_timeout(Duration::from_secs(120));
    /// # let _ = limits;
    /// ```
    pub fn client_body_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.client_body_timeout = timeout.into();
        self
    }
}
