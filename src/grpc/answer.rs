//! The answer to a gRPC caller: its code per kind, and the trailers-only response.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, VARY};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::call::{Framing, GRPC_STATUS, GrpcCall};
use super::code::GrpcCode;

static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// Turns `headers`, the head the layer made for a generated error, into a gRPC caller's, and
/// returns the body:
///
/// - gRPC: a trailers-only response: `grpc-status` and `grpc-message` in the headers, no body.
/// - gRPC-Web: the same fields in one trailer frame (flag `0x80`, a 4-byte big-endian length,
///   then `name:value\r\n` lines), the whole body; base64 for `grpc-web-text`. A browser reads
///   the body whatever CORS lets it read of the headers.
///
/// `grpc-message` is percent-encoded as the gRPC HTTP/2 protocol requires. Where a retry delay is
/// advised, `grpc-retry-pushback-ms` states it in milliseconds for gRPC's own retry policy. The
/// head keeps `Proxy-Status`, `Retry-After` and `Cache-Control: no-store`, and loses
/// `Vary: accept` (the answer follows the request's `Content-Type`, not its `Accept`); a
/// trailers-only answer has no body and so no `Content-Length`, a gRPC-Web answer states its
/// body's.
pub(crate) fn answer(
    call: GrpcCall,
    code: GrpcCode,
    message: &str,
    retry_pushback: Option<Duration>,
    headers: &mut HeaderMap,
) -> Bytes {
    headers.remove(VARY);
    headers.remove(CONTENT_LENGTH);
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
    let body = if call.framing == Framing::WebText {
        Bytes::from(base64(&frame))
    } else {
        frame.freeze()
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    body
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
    fn a_web_answer_states_its_length_and_a_trailers_only_one_has_none() {
        let call = |content_type: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            GrpcCall::detect(&headers[http::header::CONTENT_TYPE], None)
                .expect("a gRPC content type")
        };
        for (content_type, body_expected) in [
            ("application/grpc", false),
            ("application/grpc-web", true),
            ("application/grpc-web-text", true),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(VARY, HeaderValue::from_static("accept"));
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("120"));
            let body = answer(
                call(content_type),
                GrpcCode::Unavailable,
                "The upstream server refused the connection.",
                Some(Duration::from_millis(1500)),
                &mut headers,
            );
            assert!(headers.get(VARY).is_none(), "{content_type}");
            assert_eq!(!body.is_empty(), body_expected, "{content_type}");
            let length = headers
                .get(CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                length,
                body_expected.then(|| body.len().to_string()),
                "{content_type}"
            );
            if !body_expected {
                assert_eq!(headers[&GRPC_STATUS], "14");
                assert_eq!(headers[&GRPC_RETRY_PUSHBACK_MS], "1500");
            }
        }
    }
}
