//! [`Classification`]: what one error means.

use http::StatusCode;

use crate::fault::Fault;
use crate::kind::{Phase, ProxyErrorKind};

/// The outcome of classifying one error: its kind (if known), its phase, the status to send, and
/// whose [fault](crate::fault) it is.
///
/// ```
/// use gateway_errors::classify::Classification;
/// use gateway_errors::{Phase, ProxyErrorKind};
/// use http::StatusCode;
///
/// let c = Classification::from(ProxyErrorKind::ConnectionRefused);
/// assert_eq!(c.status(), StatusCode::BAD_GATEWAY);
/// assert_eq!(c.phase(), Phase::NotSent);
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
    phase: Phase,
    status: StatusCode,
    fault: Fault,
    /// The TLS alert the upstream sent, for `tls_alert_received`.
    tls_alert: Option<u8>,
}

impl Classification {
    /// A classification with the kind's recommended status and usual phase.
    pub const fn new(kind: ProxyErrorKind) -> Self {
        Classification {
            kind: Some(kind),
            phase: kind.phase(),
            status: kind.status(),
            fault: Fault::of_kind(Some(kind)),
            tls_alert: None,
        }
    }

    /// An error of unknown kind: 502, no error type, and the request may have been sent.
    pub const fn unrecognized() -> Self {
        Classification {
            kind: None,
            phase: Phase::MaybeSent,
            status: StatusCode::BAD_GATEWAY,
            fault: Fault::Upstream,
            tls_alert: None,
        }
    }

    /// Overrides the phase, for an error that tells more than its kind does.
    pub const fn with_phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
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
    pub const fn phase(&self) -> Phase {
        self.phase
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
