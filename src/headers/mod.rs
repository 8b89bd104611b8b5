//! The header fields the layer reads and writes: `Proxy-Status` (RFC 9209), `CDN-Loop` (RFC
//! 8586), `Cache-Status` (RFC 9211), `Retry-After` (RFC 9110 §10.2.3), and the Structured Field
//! syntax (RFC 9651) under them.

pub(crate) mod cdn_loop;
mod proxy_status;
pub(crate) mod retry_after;
pub(crate) mod sf;

use http::header::HeaderName;

pub use cdn_loop::CDN_LOOP;
pub(crate) use proxy_status::{DEFAULT_NAME, ProxyStatusValues, append_member, with_details};
pub use proxy_status::{InvalidProxyName, ProxyName};

/// The `Proxy-Status` header name (RFC 9209).
pub static PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");

/// The `Cache-Status` header name (RFC 9211), sent on an answer from a
/// [stale copy](crate::stale).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// RFC 9110 `tchar`, one lookup per byte: negotiation and parsing run on every request.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// Whether `b` is an RFC 9110 `tchar`.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Whether `s` is an RFC 9110 `token`: one or more `tchar`.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}
