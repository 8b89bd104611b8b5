//! A gRPC call: how it is recognised, the caller's `grpc-timeout`, and its path.
//!
//! Everything here runs on bytes the request already holds: recognising a call, reading its
//! deadline and splitting its path allocate nothing.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::is_tchar;

/// The `grpc-status` header name.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The `grpc-timeout` header name (the request walk compares names to a literal; a test checks
/// it against this).
#[cfg(test)]
pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// How many framings a gRPC caller can use.
pub(crate) const FRAMINGS: usize = 3;

/// The framings a gRPC caller can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
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

/// What the layer knows about a gRPC call, read from its request head in `call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GrpcCall {
    pub(crate) framing: Framing,
    suffix: Suffix,
    /// The caller's `grpc-timeout`, when it is well formed.
    pub(crate) timeout: Option<Duration>,
}

impl GrpcCall {
    /// The call a request's `Content-Type` and `grpc-timeout` describe, or `None` for a request
    /// that is not gRPC (the timeout is parsed only for a gRPC call).
    pub(crate) fn detect(
        content_type: &HeaderValue,
        grpc_timeout: Option<&HeaderValue>,
    ) -> Option<GrpcCall> {
        let (framing, suffix) = parse_content_type(content_type.as_bytes())?;
        let timeout = grpc_timeout.and_then(|value| parse_timeout(value.as_bytes()));
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

    /// Which of the [`FRAMINGS`] the call uses: the answers kept for one framing serve every
    /// call of it (the suffix of the content type is set again on each answer).
    pub(crate) fn framing_index(self) -> usize {
        self.framing as usize
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

/// The origin's `grpc-status`, when it answered in its headers (a trailers-only response). A
/// status in the trailers comes after the head is decided and is not read.
pub(crate) fn status_in_headers(headers: &HeaderMap) -> Option<i64> {
    let digits = headers.get(&GRPC_STATUS)?.as_bytes();
    let numeric = !digits.is_empty() && digits.len() <= 3 && digits.iter().all(u8::is_ascii_digit);
    numeric.then(|| {
        digits
            .iter()
            .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'))
    })
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
    fn a_status_in_the_headers_is_read_when_it_is_a_number() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_in_headers(&headers), None);
        headers.insert(&GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(status_in_headers(&headers), Some(14));
        headers.insert(&GRPC_STATUS, HeaderValue::from_static("1x"));
        assert_eq!(status_in_headers(&headers), None);
    }
}
