//! `CDN-Loop` (RFC 8586): the intermediaries a request has passed through, for loop detection.
//!
//! ```text
//! CDN-Loop  = #cdn-info
//! cdn-info  = cdn-id *( OWS ";" OWS parameter )
//! cdn-id    = ( uri-host [ ":" port ] ) / pseudonym
//! parameter = token "=" ( token / quoted-string )
//! ```
//!
//! Reading is one pass over the bytes, whatever they hold, and allocates nothing. A member that
//! does not parse (an unterminated quote, a character no cdn-id has, a broken parameter) is
//! skipped: it is never taken for this gateway's name.

use http::HeaderValue;
use http::header::HeaderName;

use super::{is_tchar, list_elements};

/// The `CDN-Loop` header name (RFC 8586).
pub static CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");

/// How many well-formed members of the `CDN-Loop` field lines `lines` have `name` as their
/// cdn-id (compared ASCII case-insensitively, as host names are), counting no further than
/// `enough`.
pub(crate) fn count_member<'a>(
    lines: impl Iterator<Item = &'a HeaderValue>,
    name: &[u8],
    enough: u32,
) -> u32 {
    let mut seen = 0;
    for line in lines {
        for member in list_elements(line.as_bytes()) {
            if cdn_id(member).is_some_and(|id| id.eq_ignore_ascii_case(name)) {
                seen += 1;
                if seen >= enough {
                    return seen;
                }
            }
        }
    }
    seen
}

/// The cdn-id of a well-formed member, or `None` (an empty list element, as `#rule` allows,
/// counts as none too).
fn cdn_id(member: &[u8]) -> Option<&[u8]> {
    let member = trim_ows(member);
    let end = member
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(member.len());
    let (id, mut params) = member.split_at(end);
    // A host, `host:port`, an IPv6 literal or a pseudonym (a token).
    let id_valid = !id.is_empty()
        && id
            .iter()
            .all(|&b| is_tchar(b) || matches!(b, b':' | b'[' | b']'));
    if !id_valid {
        return None;
    }
    loop {
        params = trim_ows(params);
        if params.is_empty() {
            return Some(id);
        }
        params = trim_ows(params.strip_prefix(b";")?);
        params = parameter(params)?;
    }
}

/// One `token "=" ( token / quoted-string )`; what follows it.
fn parameter(s: &[u8]) -> Option<&[u8]> {
    let name_end = s.iter().position(|&b| !is_tchar(b)).unwrap_or(s.len());
    if name_end == 0 {
        return None;
    }
    let s = s[name_end..].strip_prefix(b"=")?;
    if let Some(quoted) = s.strip_prefix(b"\"") {
        let mut escaped = false;
        for (i, &b) in quoted.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return Some(&quoted[i + 1..]),
                // qdtext and quoted-pair: HTAB, SP, visible ASCII, obs-text.
                b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                _ => return None,
            }
        }
        return None;
    }
    let value_end = s.iter().position(|&b| !is_tchar(b)).unwrap_or(s.len());
    (value_end > 0).then(|| &s[value_end..])
}

/// A request that arrived carrying this gateway's name in `CDN-Loop`: the source of its
/// `proxy_loop_detected` error, for the span.
#[derive(Debug)]
pub(crate) struct LoopDetected {
    /// How many times the request had passed through this gateway before.
    pub(crate) times: u32,
}

impl std::fmt::Display for LoopDetected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let times = self.times;
        let plural = if times == 1 { "" } else { "s" };
        write!(
            f,
            "the request names this gateway in CDN-Loop {times} time{plural}: it has been here before"
        )
    }
}

impl std::error::Error for LoopDetected {}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(lines: &[&'static str], name: &str) -> u32 {
        let values: Vec<HeaderValue> = lines.iter().map(|l| HeaderValue::from_static(l)).collect();
        count_member(values.iter(), name.as_bytes(), u32::MAX)
    }

    #[test]
    fn counts_our_well_formed_members_in_every_line() {
        assert_eq!(count(&["edge-1"], "edge-1"), 1);
        assert_eq!(count(&["cdn-a, edge-1; v=2, EDGE-1"], "edge-1"), 2);
        assert_eq!(
            count(&["cdn-a", " edge-1 ; a=b ; c=\"x, edge-1\""], "edge-1"),
            1
        );
        assert_eq!(
            count(
                &["gw.example.net:8443, [2001:db8::1]:443"],
                "gw.example.net:8443"
            ),
            1
        );
        assert_eq!(count(&["[2001:db8::1]:443"], "[2001:db8::1]:443"), 1);
        assert_eq!(count(&[",, edge-1 ,,"], "edge-1"), 1);
        assert_eq!(count(&[""], "edge-1"), 0);
    }

    #[test]
    fn a_malformed_member_is_never_ours() {
        for line in [
            "edge-1;",
            "edge-1; =x",
            "edge-1; a",
            "edge-1; a=",
            "edge-1; a=\"unterminated",
            "edge-1 x",
            "edge-1/2",
            "\"edge-1\"",
            "edge-1; a=b c",
            "edge-1=1",
        ] {
            assert_eq!(count(&[line], "edge-1"), 0, "{line:?}");
        }
        // A quote left open hides the rest of its line, but not the next line.
        assert_eq!(count(&["cdn-a; n=\"open, edge-1", "edge-1"], "edge-1"), 1);
        // Our name as a parameter value, or inside another id, is not our member.
        assert_eq!(count(&["cdn-a; via=edge-1, edge-10, xedge-1"], "edge-1"), 0);
    }

    #[test]
    fn counting_stops_at_enough() {
        let line = HeaderValue::from_static("edge-1, edge-1, edge-1");
        assert_eq!(count_member([&line].into_iter(), b"edge-1", 2), 2);
    }
}
