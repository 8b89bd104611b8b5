//! The answer to a gRPC caller: its code per kind, and the trailers-only response.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::call::{Framing, GRPC_STATUS, GrpcCall};
use super::code::GrpcCode;

static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// gRPC's own fields of an error answer: `grpc-status`, `grpc-message` (percent-encoded, as the
/// gRPC HTTP/2 protocol requires) and, where a retry delay is advised, `grpc-retry-pushback-ms`,
/// which states it in milliseconds for gRPC's own retry policy.
pub(crate) struct GrpcStatus {
    status: HeaderValue,
    message: HeaderValue,
    pushback: Option<HeaderValue>,
}

impl GrpcStatus {
    pub(crate) fn new(code: GrpcCode, message: &str, retry_pushback: Option<Duration>) -> Self {
        GrpcStatus {
            status: HeaderValue::from(code.as_i32()),
            message: percent_encode(message),
            pushback: retry_pushback.map(|delay| {
                let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                HeaderValue::from(millis)
            }),
        }
    }

    /// Each field with its value, in the order they are sent.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        [
            (&GRPC_STATUS, Some(&self.status)),
            (&GRPC_MESSAGE, Some(&self.message)),
            (&GRPC_RETRY_PUSHBACK_MS, self.pushback.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

/// The body of a gRPC caller's error answer; its head is the generated error's
/// (`respond::head`):
///
/// - gRPC: none. A trailers-only response: the fields of `status` go in the head.
/// - gRPC-Web: the same fields in one trailer frame (flag `0x80`, a 4-byte big-endian length,
///   then `name:value\r\n` lines), the whole body; base64 for `grpc-web-text`. A browser reads
///   the body whatever CORS lets it read of the headers.
pub(crate) fn body(call: GrpcCall, status: &GrpcStatus) -> Bytes {
    if !call.is_web() {
        return Bytes::new();
    }
    let mut block = BytesMut::with_capacity(64 + status.message.len());
    for (name, value) in status.fields() {
        block.put_slice(name.as_str().as_bytes());
        block.put_u8(b':');
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
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

/// What the gRPC HTTP/2 protocol's `Percent-Encoded` escapes besides every byte above 0x7E: the
/// controls and `%` itself.
const GRPC_MESSAGE_ESCAPED: &AsciiSet = &CONTROLS.add(b'%');

/// `grpc-message`, percent-encoded: what is left is printable ASCII.
fn percent_encode(message: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(message, GRPC_MESSAGE_ESCAPED).to_string();
    HeaderValue::from_maybe_shared(Bytes::from(encoded))
        .expect("percent-encoded text is visible ASCII")
}

/// Standard base64 with padding (RFC 4648 §4), as `grpc-web-text` bodies use. A few lines, for
/// the one short frame of an error answer, rather than a dependency for every user (tested
/// against the `base64` crate).
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
    use crate::grpc::code::GrpcCodes;
    use crate::kind::ProxyErrorKind;
    use http::StatusCode;

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
        let settings = GrpcCodes::default();
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

    proptest::proptest! {
        #[test]
        fn base64_agrees_with_the_base64_crate(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            use base64::Engine as _;
            let expected = base64::engine::general_purpose::STANDARD.encode(&bytes);
            proptest::prop_assert_eq!(base64(&bytes), expected.into_bytes());
        }
    }

    #[test]
    fn a_trailers_only_answer_has_no_body_and_a_web_one_frames_the_fields() {
        let call = |content_type: &'static str| {
            GrpcCall::detect(&HeaderValue::from_static(content_type), None)
                .expect("a gRPC content type")
        };
        let status = GrpcStatus::new(
            GrpcCode::Unavailable,
            "The upstream server refused the connection.",
            Some(Duration::from_millis(1500)),
        );
        let fields: Vec<_> = status.fields().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            fields,
            ["grpc-status", "grpc-message", "grpc-retry-pushback-ms"]
        );
        assert!(body(call("application/grpc"), &status).is_empty());

        let lines = "grpc-status:14\r\n\
                     grpc-message:The upstream server refused the connection.\r\n\
                     grpc-retry-pushback-ms:1500\r\n";
        let mut frame = vec![0x80];
        frame.extend_from_slice(&u32::try_from(lines.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(lines.as_bytes());
        assert_eq!(body(call("application/grpc-web"), &status), frame);
        assert_eq!(
            body(call("application/grpc-web-text"), &status),
            base64(&frame)
        );

        let without_delay = GrpcStatus::new(GrpcCode::Unavailable, "x", None);
        assert_eq!(without_delay.fields().count(), 2);
    }
}
