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
}

impl Classification {
    /// A classification with the kind's recommended status and usual phase.
    pub const fn new(kind: ProxyErrorKind) -> Self {
        Classification {
            kind: Some(kind),
            phase: kind.phase(),
            status: kind.status(),
            fault: Fault::of_kind(Some(kind)),
        }
    }

    /// An error of unknown kind: 502, no error type, and the request may have been sent.
    pub const fn unrecognized() -> Self {
        Classification {
            kind: None,
            phase: Phase::MaybeSent,
            status: StatusCode::BAD_GATEWAY,
            fault: Fault::Upstream,
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
