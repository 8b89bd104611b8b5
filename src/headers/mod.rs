//! The header fields the layer reads and writes: `Proxy-Status` (RFC 9209), `CDN-Loop` (RFC
//! 8586), `Cache-Status` (RFC 9211), and the Structured Field syntax (RFC 9651) under them; and
//! the hop-by-hop fields (RFC 9110 §7.6.1) it removes before reading any of them. `Retry-After`
//! belongs with the retry hint: [`RetryAfter`](crate::retry::RetryAfter).

pub(crate) mod cdn_loop;
pub(crate) mod connection;
mod proxy_status;
pub(crate) mod sf;

use http::header::HeaderName;

pub use cdn_loop::CDN_LOOP;
pub use connection::remove_hop_by_hop;
pub(crate) use proxy_status::{
    DEFAULT_NAME, ProxyStatusValues, append_member, with_details, with_tls_alert,
};
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

/// Where the list element that starts at `from` ends (RFC 9110 §5.6.1): at the next comma
/// outside a quoted string, or at the end. Each byte is looked at once.
pub(crate) fn element_end(bytes: &[u8], from: usize) -> usize {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            return i;
        }
    }
    bytes.len()
}

/// The elements of a list field line: split at the commas outside quoted strings. A quoted
/// string left open makes the rest of the line one element.
pub(crate) fn list_elements(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let s = rest?;
        let end = element_end(s, 0);
        rest = s.get(end + 1..).filter(|_| end < s.len());
        Some(&s[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_elements_split_at_commas_outside_quotes() {
        fn split(line: &str) -> Vec<&[u8]> {
            list_elements(line.as_bytes()).collect()
        }
        assert_eq!(split("a, b,c"), [&b"a"[..], b" b", b"c"]);
        assert_eq!(split(r#"a;x="1,2", b"#), [&br#"a;x="1,2""#[..], b" b"]);
        assert_eq!(split(r#"a;x="\",", b"#), [&br#"a;x="\",""#[..], b" b"]);
        assert_eq!(split(r#"a;x="open, b"#), [&br#"a;x="open, b"#[..]]);
        assert_eq!(split(""), [&b""[..]]);
        assert_eq!(split("a,"), [&b"a"[..], b""]);
    }
}
