//! gRPC callers: how a call is recognised, which [`GrpcCode`] a failure becomes, the caller's
//! `grpc-timeout`, and the pieces of a trailers-only answer.
//!
//! A gRPC client reads `grpc-status` and `grpc-message`, never an HTML page or problem+json: a
//! generated 502 without them surfaces as an opaque protocol error. So a request whose
//! `Content-Type` is `application/grpc` (or gRPC-Web's `application/grpc-web` and
//! `application/grpc-web-text`, each with an optional `+proto`, `+json`, ... and parameters) gets
//! its generated errors in gRPC's own terms; every other request is answered as before.
//!
//! Everything here runs on bytes the request already holds: recognising a call, reading its
//! deadline and splitting its path allocate nothing.

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use tracing::Span;

use crate::cache::{CachedResponse, Slots};
use crate::headers::is_tchar;
use crate::kind::ProxyErrorKind;

/// A gRPC status code, as a gRPC client reads it from `grpc-status`.
///
/// The layer answers a gRPC caller's generated errors with one of these instead of an HTTP error
/// status. [`GrpcCode::for_kind`] is the default mapping from RFC 9209 kinds;
/// [`GatewayErrorLayer::grpc_code_for_kind`](crate::GatewayErrorLayer::grpc_code_for_kind)
/// changes it per kind.
///
/// ```
/// use gateway_errors::{GrpcCode, ProxyErrorKind};
/// use http::StatusCode;
///
/// assert_eq!(GrpcCode::for_kind(ProxyErrorKind::ConnectionRefused), GrpcCode::Unavailable);
/// assert_eq!(GrpcCode::for_kind(ProxyErrorKind::HttpResponseTimeout), GrpcCode::DeadlineExceeded);
/// assert_eq!(GrpcCode::from_http_status(StatusCode::NOT_FOUND), GrpcCode::Unimplemented);
/// assert_eq!(GrpcCode::Unavailable.as_i32(), 14);
/// assert_eq!(GrpcCode::Unavailable.to_string(), "UNAVAILABLE");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// [intercepts](crate::GatewayErrorLayer::intercept_origin_errors) on a gRPC call, and for an
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

/// The `grpc-status` header name.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The framings a gRPC caller can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `application/grpc`: status in HTTP/2 trailers, or in the headers of a trailers-only
    /// response.
    Grpc,
    /// `application/grpc-web`: status in a trailer frame at the end of the body.
    Web,
    /// `application/grpc-web-text`: the same frames, base64-encoded.
    WebText,
}

/// The message format after `+` in the caller's content type, echoed in the answer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suffix {
    /// None, or one the layer has no content type for (`+thrift`): answered with the bare type.
    Bare,
    Proto,
    Json,
}

/// The caller's content types the layer answers in, one per framing and suffix.
const CONTENT_TYPES: [[&str; 3]; 3] = [
    [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc+json",
    ],
    [
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/grpc-web+json",
    ],
    [
        "application/grpc-web-text",
        "application/grpc-web-text+proto",
        "application/grpc-web-text+json",
    ],
];

/// Slots of the per-configuration response cache: framings × (kinds + unrecognised). The suffix
/// of the content type is not part of the key: the content type is set again on each answer.
const KIND_SLOTS: usize = ProxyErrorKind::ALL.len() + 1;
const SLOTS: usize = 3 * KIND_SLOTS;

/// What the layer knows about a gRPC call, read from its request head in `call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GrpcCall {
    framing: Framing,
    suffix: Suffix,
    /// The caller's `grpc-timeout`, when it is well formed.
    pub(crate) timeout: Option<Duration>,
}

impl GrpcCall {
    /// The call described by a request head, or `None` for a request that is not gRPC. Reads the
    /// `Content-Type` once; `grpc-timeout` only for a gRPC call.
    pub(crate) fn detect(headers: &HeaderMap) -> Option<GrpcCall> {
        let (framing, suffix) = parse_content_type(headers.get(CONTENT_TYPE)?.as_bytes())?;
        let timeout = headers
            .get(&GRPC_TIMEOUT)
            .and_then(|value| parse_timeout(value.as_bytes()));
        Some(GrpcCall {
            framing,
            suffix,
            timeout,
        })
    }

    /// The `Content-Type` of the answer: the caller's gRPC type.
    pub(crate) fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(CONTENT_TYPES[self.framing as usize][self.suffix as usize])
    }

    /// Whether the status travels in the body (gRPC-Web) rather than in headers.
    pub(crate) fn is_web(self) -> bool {
        self.framing != Framing::Grpc
    }

    fn slot(self, kind: Option<ProxyErrorKind>) -> usize {
        self.framing as usize * KIND_SLOTS + kind.map_or(KIND_SLOTS - 1, ProxyErrorKind::index)
    }
}

/// `application/grpc[-web[-text]][+suffix][; params]`, case-insensitive, surrounding spaces
/// allowed. Anything else (`application/grpcx`, `application/grpc-web-textual`) is not gRPC.
fn parse_content_type(value: &[u8]) -> Option<(Framing, Suffix)> {
    const PREFIX: &[u8] = b"application/grpc";
    let media_type = value.split(|&b| b == b';').next()?.trim_ascii();
    if media_type.len() < PREFIX.len() || !media_type[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &media_type[PREFIX.len()..];
    let strip = |rest: &[u8], tail: &[u8]| -> Option<usize> {
        (rest.len() >= tail.len() && rest[..tail.len()].eq_ignore_ascii_case(tail))
            .then_some(tail.len())
    };
    let (framing, rest) = if let Some(n) = strip(rest, b"-web-text") {
        (Framing::WebText, &rest[n..])
    } else if let Some(n) = strip(rest, b"-web") {
        (Framing::Web, &rest[n..])
    } else {
        (Framing::Grpc, rest)
    };
    let suffix = match rest {
        [] => Suffix::Bare,
        [b'+', name @ ..] if !name.is_empty() && name.iter().all(|&b| is_tchar(b)) => {
            if name.eq_ignore_ascii_case(b"proto") {
                Suffix::Proto
            } else if name.eq_ignore_ascii_case(b"json") {
                Suffix::Json
            } else {
                Suffix::Bare
            }
        }
        _ => return None,
    };
    Some((framing, suffix))
}

/// `grpc-timeout`: 1 to 8 ASCII digits and a unit, `H` hours, `M` minutes, `S` seconds, `m`
/// milliseconds, `u` microseconds, `n` nanoseconds. Anything else is `None`: a malformed deadline
/// is ignored, as gRPC servers do.
pub(crate) fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 99,999,999: no overflow in u64, even as hours in seconds.
    let amount = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The service and method of a gRPC path, `/package.Service/Method`. `None` for any other shape
/// (no leading slash, an empty part, more parts, a part over 256 bytes): such a path is recorded
/// as `url.path` only.
pub(crate) fn service_and_method(path: &str) -> Option<(&str, &str)> {
    const MAX_PART: usize = 256;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let sane = |part: &str| !part.is_empty() && part.len() <= MAX_PART && !part.contains('/');
    (sane(service) && sane(method)).then_some((service, method))
}

/// Records what the span says about every gRPC call, before the upstream is asked.
pub(crate) fn record_call(span: &Span, path: &str) {
    span.record("rpc.system", "grpc");
    if let Some((service, method)) = service_and_method(path) {
        span.record("rpc.service", service);
        span.record("rpc.method", method);
    }
}

/// The origin's `grpc-status`, when it answered in its headers (a trailers-only response). A
/// status in the trailers comes after the span's response fields are written and is not read.
pub(crate) fn record_forwarded(span: &Span, headers: &HeaderMap) {
    let code = headers.get(&GRPC_STATUS).and_then(|value| {
        let digits = value.as_bytes();
        let numeric =
            !digits.is_empty() && digits.len() <= 3 && digits.iter().all(u8::is_ascii_digit);
        numeric.then(|| {
            digits
                .iter()
                .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'))
        })
    });
    if let Some(code) = code {
        span.record("rpc.grpc.status_code", code);
    }
}

/// The layer's gRPC settings: the code per kind, and the answers already built.
#[derive(Clone)]
pub(crate) struct GrpcSettings {
    codes: [GrpcCode; ProxyErrorKind::ALL.len()],
    /// Empty again in every changed configuration (its `Clone` makes an empty one).
    cache: Slots,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        let mut codes = [GrpcCode::Unknown; ProxyErrorKind::ALL.len()];
        for kind in ProxyErrorKind::ALL {
            codes[kind.index()] = GrpcCode::for_kind(*kind);
        }
        GrpcSettings {
            codes,
            cache: Slots::new(SLOTS),
        }
    }
}

impl GrpcSettings {
    pub(crate) fn set_code_for_kind(&mut self, kind: ProxyErrorKind, code: GrpcCode) {
        self.codes[kind.index()] = code;
    }

    /// The code of a generated error: its kind's, or for an unrecognised error (or an
    /// intercepted origin error) the mapping of its HTTP status.
    pub(crate) fn code(&self, kind: Option<ProxyErrorKind>, status: StatusCode) -> GrpcCode {
        match kind {
            Some(kind) => self.codes[kind.index()],
            None => GrpcCode::from_http_status(status),
        }
    }

    pub(crate) fn cached(
        &self,
        call: GrpcCall,
        kind: Option<ProxyErrorKind>,
        build: impl FnOnce() -> CachedResponse,
    ) -> &CachedResponse {
        self.cache.get_or_init(call.slot(kind), build)
    }
}

/// Writes the gRPC fields of a generated error for `call` into `headers` (the layer's head for
/// the error) and returns the body:
///
/// - gRPC: a trailers-only response: `grpc-status` and `grpc-message` in the headers, no body.
/// - gRPC-Web: the same fields in one trailer frame (flag `0x80`, a 4-byte big-endian length,
///   then `name:value\r\n` lines), the whole body; base64 for `grpc-web-text`. A browser reads
///   the body whatever CORS lets it read of the headers.
///
/// `grpc-message` is percent-encoded as the gRPC HTTP/2 protocol requires. Where a retry delay is
/// advised, `grpc-retry-pushback-ms` states it in milliseconds for gRPC's own retry policy.
pub(crate) fn answer(
    call: GrpcCall,
    code: GrpcCode,
    message: &str,
    retry_pushback: Option<Duration>,
    headers: &mut HeaderMap,
) -> Bytes {
    let status = HeaderValue::from(code.as_i32());
    let message = percent_encode(message);
    let pushback = retry_pushback.map(|delay| {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        HeaderValue::from(millis)
    });
    headers.insert(CONTENT_TYPE, call.content_type());
    if !call.is_web() {
        headers.insert(GRPC_STATUS.clone(), status);
        headers.insert(GRPC_MESSAGE.clone(), message);
        if let Some(pushback) = pushback {
            headers.insert(GRPC_RETRY_PUSHBACK_MS.clone(), pushback);
        }
        return Bytes::new();
    }
    let mut block = BytesMut::with_capacity(64 + message.len());
    for (name, value) in [
        (&GRPC_STATUS, Some(&status)),
        (&GRPC_MESSAGE, Some(&message)),
        (&GRPC_RETRY_PUSHBACK_MS, pushback.as_ref()),
    ] {
        if let Some(value) = value {
            block.put_slice(name.as_str().as_bytes());
            block.put_u8(b':');
            block.put_slice(value.as_bytes());
            block.put_slice(b"\r\n");
        }
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.put_slice(&block);
    if call.framing == Framing::WebText {
        Bytes::from(base64(&frame))
    } else {
        frame.freeze()
    }
}

/// The gRPC HTTP/2 protocol's `Percent-Encoded`: bytes outside printable ASCII (0x20–0x7E), and
/// `%` itself, become `%XX`.
fn percent_encode(message: &str) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    // Printable ASCII only: always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(out)).expect("percent-encoded text is visible ASCII")
}

/// Standard base64 with padding (RFC 4648 §4), as `grpc-web-text` bodies use.
fn base64(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        let sextets = chunk.len() + 1;
        for i in 0..4 {
            if i < sextets {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(content_type: &str) -> Option<(Framing, Suffix)> {
        parse_content_type(content_type.as_bytes())
    }

    #[test]
    fn recognises_grpc_content_types_and_nothing_else() {
        use Framing::*;
        use Suffix::*;
        assert_eq!(detect("application/grpc"), Some((Grpc, Bare)));
        assert_eq!(detect("application/grpc+proto"), Some((Grpc, Proto)));
        assert_eq!(detect("Application/GRPC+JSON"), Some((Grpc, Json)));
        assert_eq!(detect("application/grpc+thrift"), Some((Grpc, Bare)));
        assert_eq!(
            detect(" application/grpc ; charset=utf-8"),
            Some((Grpc, Bare))
        );
        assert_eq!(detect("application/grpc-web"), Some((Web, Bare)));
        assert_eq!(detect("application/grpc-web+proto"), Some((Web, Proto)));
        assert_eq!(detect("application/grpc-web-text"), Some((WebText, Bare)));
        assert_eq!(
            detect("application/grpc-web-text+proto;x=1"),
            Some((WebText, Proto))
        );
        for other in [
            "",
            ";",
            "application/grp",
            "application/grpcx",
            "application/grpc+",
            "application/grpc+pro to",
            "application/grpc-",
            "application/grpc-webx",
            "application/grpc-web-textual",
            "application/json",
            "text/html",
            "application/grpc/../x",
        ] {
            assert_eq!(detect(other), None, "{other:?}");
        }
        assert_eq!(parse_content_type(&[0xff, 0xfe, b';']), None);
    }

    #[test]
    fn answers_in_the_callers_content_type() {
        let call = |ct: &str| {
            let (framing, suffix) = detect(ct).unwrap();
            GrpcCall {
                framing,
                suffix,
                timeout: None,
            }
        };
        assert_eq!(
            call("application/grpc+proto").content_type(),
            "application/grpc+proto"
        );
        assert_eq!(
            call("application/grpc+thrift").content_type(),
            "application/grpc"
        );
        assert_eq!(
            call("application/grpc-web-text+proto; a=b").content_type(),
            "application/grpc-web-text+proto"
        );
    }

    #[test]
    fn cache_slots_are_distinct_per_framing_and_kind_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for framing in [Framing::Grpc, Framing::Web, Framing::WebText] {
            let call = |suffix| GrpcCall {
                framing,
                suffix,
                timeout: None,
            };
            for kind in ProxyErrorKind::ALL.iter().copied().map(Some).chain([None]) {
                let slot = call(Suffix::Bare).slot(kind);
                assert!(slot < SLOTS);
                assert!(seen.insert(slot));
                assert_eq!(call(Suffix::Proto).slot(kind), slot);
            }
        }
        assert_eq!(seen.len(), SLOTS);
    }

    #[test]
    fn grpc_timeout_units_and_garbage() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(
            parse_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse_timeout(b"0m"), Some(Duration::ZERO));
        for bad in [
            &b""[..],
            b"S",
            b"100",
            b"123456789S",
            b"1s",
            b"1h",
            b"-1S",
            b"1.5S",
            b" 1S",
            b"1S ",
            b"\xff",
            b"1\xffS",
        ] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn service_and_method_of_well_formed_paths_only() {
        assert_eq!(
            service_and_method("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(service_and_method("/Svc/M"), Some(("Svc", "M")));
        let long = format!("/{}/M", "s".repeat(257));
        for bad in [
            "",
            "/",
            "//",
            "/a",
            "/a/",
            "//b",
            "/a/b/c",
            "a/b",
            long.as_str(),
        ] {
            assert_eq!(service_and_method(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("plain text, ok."), "plain text, ok.");
        assert_eq!(percent_encode("100% caf\u{e9}\n"), "100%25 caf%C3%A9%0A");
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded.as_bytes(), "{plain:?}");
        }
    }

    #[test]
    fn every_kind_has_a_default_code_that_is_an_error() {
        let settings = GrpcSettings::default();
        for kind in ProxyErrorKind::ALL {
            let code = settings.code(Some(*kind), kind.status());
            assert_eq!(code, GrpcCode::for_kind(*kind));
            assert_ne!(code, GrpcCode::Ok, "{kind}");
        }
        assert_eq!(
            settings.code(None, StatusCode::BAD_GATEWAY),
            GrpcCode::Unavailable
        );
    }

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
