//! [`Classification`]: what one error means.

use http::StatusCode;

use crate::fault::Fault;
use crate::kind::{ProxyErrorKind, RequestSent};

/// The outcome of classifying one error: its kind (if known), whether the request may have been sent, the status to send, and
/// whose [fault](crate::fault) it is.
///
/// ```
/// use gateway_errors::classify::Classification;
/// use gateway_errors::{RequestSent, ProxyErrorKind};
/// use http::StatusCode;
///
/// let c = Classification::from(ProxyErrorKind::ConnectionRefused);
/// assert_eq!(c.status(), StatusCode::BAD_GATEWAY);
/// assert_eq!(c.request_sent(), RequestSent::NotSent);
///
/// // A request rejected by a policy engine: a specific 4xx, nothing was sent.
/// let c = Classification::new(ProxyErrorKind::HttpRequestError)
///     .with_status(StatusCode::PAYLOAD_TOO_LARGE);
/// assert_eq!(c.status(), StatusCode::PAYLOAD_TOO_LARGE);
///
/// // The kind says whose fault it is; a classifier that knows better says so.
/// use gateway_errors::fault::Fault;
/// assert_eq!(c.fault(), Fault::Client);
/// let c = Classification::unrecognized().with_fault(Fault::Gateway);
/// assert_eq!(c.fault(), Fault::Gateway);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    kind: Option<ProxyErrorKind>,
    request_sent: RequestSent,
    status: StatusCode,
    fault: Fault,
    /// The TLS alert the upstream sent, for `tls_alert_received`.
    tls_alert: Option<u8>,
}

impl Classification {
    /// A classification with the kind's recommended status and whether such a failure usually comes after the request was sent.
    pub const fn new(kind: ProxyErrorKind) -> Self {
        Classification {
            kind: Some(kind),
            request_sent: kind.request_sent(),
            status: kind.status(),
            fault: Fault::of_kind(Some(kind)),
            tls_alert: None,
        }
    }

    /// An error of unknown kind: 502, no error type, and the request may have been sent.
    pub const fn unrecognized() -> Self {
        Classification {
            kind: None,
            request_sent: RequestSent::MaybeSent,
            status: StatusCode::BAD_GATEWAY,
            fault: Fault::Upstream,
            tls_alert: None,
        }
    }

    /// Overrides whether the request may have been sent, for an error that tells more than its kind does.
    pub const fn with_request_sent(mut self, request_sent: RequestSent) -> Self {
        self.request_sent = request_sent;
        self
    }

    /// Overrides the status, for kinds whose RFC status is a range (`http_request_error`) or
    /// "as fitting" (`proxy_internal_response`).
    pub const fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Overrides whose fault it is, for an error that tells more than its kind does (a
    /// client's own upload that broke off is no upstream's failure, whatever it looks like).
    pub const fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Records the alert the upstream sent, as its number in the TLS Alerts registry, for a
    /// `tls_alert_received`: that kind's `Proxy-Status` member then carries it as `alert-id`,
    /// with its registered name as `alert-message` when the number is a registered one (RFC 9209
    /// §2.3.15). Ignored for any other kind.
    ///
    /// The alert says what the upstream's TLS stack objected to (`certificate_required`: it
    /// wants a client certificate the gateway did not send), and names nothing of the
    /// deployment: it is sent whether or not
    /// [`proxy_status_details`](crate::GatewayErrorLayer::proxy_status_details) is on.
    ///
    /// ```
    /// use gateway_errors::classify::Classification;
    /// use gateway_errors::ProxyErrorKind;
    ///
    /// let c = Classification::new(ProxyErrorKind::TlsAlertReceived).with_tls_alert(116);
    /// assert_eq!(c.tls_alert(), Some(116));
    /// ```
    pub const fn with_tls_alert(mut self, alert: u8) -> Self {
        self.tls_alert = Some(alert);
        self
    }

    /// The TLS alert the upstream sent, if the classifier recorded one (see
    /// [`with_tls_alert`](Classification::with_tls_alert)).
    pub const fn tls_alert(&self) -> Option<u8> {
        self.tls_alert
    }

    /// Whose fault it is: only the [upstream's](Fault::Upstream) are counted against an
    /// upstream or answered from a stored copy.
    pub const fn fault(&self) -> Fault {
        self.fault
    }

    /// The RFC 9209 error type, if the error was recognised.
    pub const fn kind(&self) -> Option<ProxyErrorKind> {
        self.kind
    }

    /// Whether the request may have reached the origin.
    pub const fn request_sent(&self) -> RequestSent {
        self.request_sent
    }

    /// The status code the generated response will carry.
    pub const fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ProxyErrorKind> for Classification {
    fn from(kind: ProxyErrorKind) -> Self {
        Classification::new(kind)
    }
}
