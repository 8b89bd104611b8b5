//! [`GrpcCode`]: the status a gRPC client reads, and which one each failure becomes.

use std::fmt;

use http::StatusCode;

use crate::kind::ProxyErrorKind;

/// A gRPC status code, as a gRPC client reads it from `grpc-status`.
///
/// The layer answers a gRPC caller's generated errors with one of these instead of an HTTP error
/// status. [`GrpcCode::for_kind`] is the default mapping from RFC 9209 kinds;
/// [`GrpcCodes::code_for_kind`] changes it per kind.
///
/// ```
/// use gateway_errors::grpc::GrpcCode;
/// use gateway_errors::ProxyErrorKind;
/// use http::StatusCode;
///
/// assert_eq!(GrpcCode::for_kind(ProxyErrorKind::ConnectionRefused), GrpcCode::Unavailable);
/// assert_eq!(GrpcCode::for_kind(ProxyErrorKind::HttpResponseTimeout), GrpcCode::DeadlineExceeded);
/// assert_eq!(GrpcCode::from_http_status(StatusCode::NOT_FOUND), GrpcCode::Unimplemented);
/// assert_eq!(GrpcCode::Unavailable.as_i32(), 14);
/// assert_eq!(GrpcCode::Unavailable.to_string(), "UNAVAILABLE");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 0: not an error.
    Ok = 0,
    /// 1: the operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// 2: an error with no better code.
    Unknown = 2,
    /// 3: the caller specified an invalid argument.
    InvalidArgument = 3,
    /// 4: the deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// 5: a requested entity was not found.
    NotFound = 5,
    /// 6: the entity a caller tried to create already exists.
    AlreadyExists = 6,
    /// 7: the caller may not perform the operation.
    PermissionDenied = 7,
    /// 8: a resource (a quota, a size limit) has been exhausted.
    ResourceExhausted = 8,
    /// 9: the system is not in a state the operation requires.
    FailedPrecondition = 9,
    /// 10: the operation was aborted, typically by a concurrency conflict.
    Aborted = 10,
    /// 11: the operation was attempted past the valid range.
    OutOfRange = 11,
    /// 12: the operation is not implemented or not supported.
    Unimplemented = 12,
    /// 13: an internal invariant was broken.
    Internal = 13,
    /// 14: the service is unavailable, most likely transiently; a retry with backoff may help.
    Unavailable = 14,
    /// 15: unrecoverable data loss or corruption.
    DataLoss = 15,
    /// 16: the request lacks valid authentication credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The number sent in `grpc-status`.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code's name in the gRPC specification (`UNAVAILABLE`).
    pub const fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The default code for an error of `kind`.
    ///
    /// The rule: a failure to reach or hear from the upstream is `UNAVAILABLE` (gRPC's code for
    /// "try again later", and what gRPC's HTTP mapping gives 502, 503 and 504); a response that
    /// did not come in time is `DEADLINE_EXCEEDED`; a fault of the request, of policy, of limits or
    /// of the gateway gets the code that names it.
    ///
    /// | kind | code |
    /// |---|---|
    /// | `dns_timeout`, `dns_error`, `destination_unavailable`, `destination_ip_prohibited`, `destination_ip_unroutable` | 14 `UNAVAILABLE` |
    /// | `connection_refused`, `connection_terminated`, `connection_timeout`, `connection_limit_reached` | 14 `UNAVAILABLE` |
    /// | `tls_protocol_error`, `tls_certificate_error`, `tls_alert_received` | 14 `UNAVAILABLE` |
    /// | `http_response_incomplete`, `http_upgrade_failed` | 14 `UNAVAILABLE` |
    /// | `http_response_timeout`, `connection_read_timeout`, `connection_write_timeout` | 4 `DEADLINE_EXCEEDED` |
    /// | `http_request_error` | 3 `INVALID_ARGUMENT` |
    /// | `http_request_denied` | 7 `PERMISSION_DENIED` |
    /// | `destination_not_found` | 12 `UNIMPLEMENTED` |
    /// | `http_response_header_section_size`, `http_response_header_size`, `http_response_body_size`, `http_response_trailer_section_size`, `http_response_trailer_size` | 8 `RESOURCE_EXHAUSTED` |
    /// | `http_response_transfer_coding`, `http_response_content_coding`, `http_protocol_error` | 13 `INTERNAL` |
    /// | `proxy_internal_error`, `proxy_configuration_error`, `proxy_loop_detected` | 13 `INTERNAL` |
    /// | `proxy_internal_response` | 2 `UNKNOWN` |
    ///
    /// A connect or DNS timeout is `UNAVAILABLE`, not `DEADLINE_EXCEEDED`: the request never left
    /// the gateway and the caller's deadline has not passed, so it is the transient failure that
    /// gRPC clients retry. A route the gateway does not have is `UNIMPLEMENTED`, as for a method
    /// a server does not know. An upstream response over a size limit is `RESOURCE_EXHAUSTED`, the
    /// code gRPC libraries give a message over their own limit.
    pub const fn for_kind(kind: ProxyErrorKind) -> GrpcCode {
        use ProxyErrorKind as K;
        match kind {
            K::HttpResponseTimeout | K::ConnectionReadTimeout | K::ConnectionWriteTimeout => {
                GrpcCode::DeadlineExceeded
            }
            K::HttpRequestError => GrpcCode::InvalidArgument,
            K::HttpRequestDenied => GrpcCode::PermissionDenied,
            K::DestinationNotFound => GrpcCode::Unimplemented,
            K::HttpResponseHeaderSectionSize
            | K::HttpResponseHeaderSize
            | K::HttpResponseBodySize
            | K::HttpResponseTrailerSectionSize
            | K::HttpResponseTrailerSize => GrpcCode::ResourceExhausted,
            K::HttpResponseTransferCoding
            | K::HttpResponseContentCoding
            | K::HttpProtocolError
            | K::ProxyInternalError
            | K::ProxyConfigurationError
            | K::ProxyLoopDetected => GrpcCode::Internal,
            K::ProxyInternalResponse => GrpcCode::Unknown,
            K::DnsTimeout
            | K::DnsError
            | K::DestinationUnavailable
            | K::DestinationIpProhibited
            | K::DestinationIpUnroutable
            | K::ConnectionRefused
            | K::ConnectionTerminated
            | K::ConnectionTimeout
            | K::ConnectionLimitReached
            | K::TlsProtocolError
            | K::TlsCertificateError
            | K::TlsAlertReceived
            | K::HttpResponseIncomplete
            | K::HttpUpgradeFailed => GrpcCode::Unavailable,
        }
    }

    /// The code for an HTTP status without gRPC status, per gRPC's "HTTP to gRPC status code
    /// mapping": 400 → `INTERNAL`, 401 → `UNAUTHENTICATED`, 403 → `PERMISSION_DENIED`, 404 →
    /// `UNIMPLEMENTED`, 429, 502, 503, 504 → `UNAVAILABLE`, any other → `UNKNOWN`.
    ///
    /// The layer uses it for an origin's error response that it
    /// [replaces](crate::GatewayErrorLayer::failure_statuses) on a gRPC call, and for an
    /// error no classifier recognised (its status is 502: `UNAVAILABLE`). A gRPC client given the
    /// bare HTTP response would arrive at the same code.
    pub const fn from_http_status(status: StatusCode) -> GrpcCode {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The gRPC code each kind of generated error is answered with, for
/// [`GatewayErrorLayer::grpc_codes`](crate::GatewayErrorLayer::grpc_codes): [`GrpcCode::for_kind`]
/// unless changed here.
///
/// A request whose `Content-Type` is `application/grpc`, `application/grpc-web` or
/// `application/grpc-web-text` (with any `+suffix` and parameters) is a gRPC call: its generated
/// errors are HTTP 200 with `grpc-status` and `grpc-message` (for gRPC-Web, in a trailer frame in
/// the body), not a body in a negotiated format. See the [crate docs](crate#grpc-callers). An
/// error of no known kind (or an origin error the layer replaces) gets
/// [`GrpcCode::from_http_status`] of its status.
///
/// ```
/// use gateway_errors::grpc::{GrpcCode, GrpcCodes};
/// use gateway_errors::{GatewayErrorLayer, ProxyErrorKind};
///
/// // A full pool means "back off", which gRPC says with RESOURCE_EXHAUSTED.
/// let codes = GrpcCodes::new()
///     .code_for_kind(ProxyErrorKind::ConnectionLimitReached, GrpcCode::ResourceExhausted);
/// let layer = GatewayErrorLayer::new().grpc_codes(codes);
/// # let _ = layer;
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct GrpcCodes {
    codes: [GrpcCode; ProxyErrorKind::ALL.len()],
}

impl Default for GrpcCodes {
    fn default() -> Self {
        GrpcCodes::new()
    }
}

impl GrpcCodes {
    /// The defaults: every kind answered with [`GrpcCode::for_kind`].
    ///
    /// ```
    /// use gateway_errors::grpc::GrpcCodes;
    /// use gateway_errors::GatewayErrorLayer;
    ///
    /// // The same as not calling `grpc_codes` at all.
    /// let layer = GatewayErrorLayer::new().grpc_codes(GrpcCodes::new());
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        GrpcCodes {
            codes: std::array::from_fn(|i| GrpcCode::for_kind(ProxyErrorKind::ALL[i])),
        }
    }

    /// Answers a gRPC caller's errors of this kind with `code` instead of the default from
    /// [`GrpcCode::for_kind`].
    ///
    /// ```
    /// use gateway_errors::ProxyErrorKind;
    /// use gateway_errors::grpc::{GrpcCode, GrpcCodes};
    ///
    /// // Callers of this API should not retry a refused certificate on their own.
    /// let codes = GrpcCodes::new()
    ///     .code_for_kind(ProxyErrorKind::TlsCertificateError, GrpcCode::FailedPrecondition);
    /// # let _ = codes;
    /// ```
    pub fn code_for_kind(mut self, kind: ProxyErrorKind, code: GrpcCode) -> Self {
        self.codes[kind.index()] = code;
        self
    }

    /// The code of a generated error: its kind's, or for an unrecognised error (or an
    /// intercepted origin error) the mapping of its HTTP status.
    pub(crate) fn code(&self, kind: Option<ProxyErrorKind>, status: StatusCode) -> GrpcCode {
        match kind {
            Some(kind) => self.codes[kind.index()],
            None => GrpcCode::from_http_status(status),
        }
    }
}

impl fmt::Debug for GrpcCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only what differs from the defaults: the full table is dozens of lines.
        let changed = ProxyErrorKind::ALL
            .iter()
            .filter(|kind| self.codes[kind.index()] != GrpcCode::for_kind(**kind))
            .map(|kind| (kind.token(), self.codes[kind.index()]));
        f.debug_map().entries(changed).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_per_the_grpc_table() {
        for (status, code) in [
            (400, GrpcCode::Internal),
            (401, GrpcCode::Unauthenticated),
            (403, GrpcCode::PermissionDenied),
            (404, GrpcCode::Unimplemented),
            (429, GrpcCode::Unavailable),
            (502, GrpcCode::Unavailable),
            (503, GrpcCode::Unavailable),
            (504, GrpcCode::Unavailable),
            (500, GrpcCode::Unknown),
            (418, GrpcCode::Unknown),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(GrpcCode::from_http_status(status), code, "{status}");
        }
    }
}
