//! `Cache-Control` (RFC 9111 §5.2), read for what a last-good-copy store needs: whether a
//! response may be stored and served stale, its freshness, and its `stale-if-error` (RFC 5861).
//!
//! The field is read in one pass over its bytes, whatever they hold: a hostile value costs time
//! in proportion to its length, never a panic. A directive this crate does not know is skipped; a
//! malformed element is skipped up to the next comma outside a quoted string. A field with a
//! malformed element fails closed: if its bytes name `private`, `no-store` or `no-cache` anywhere
//! (`max-age=60; private`), that directive is taken as given, since the sender plainly meant to
//! restrict the response and a cache that cannot read how must not guess in favour of storing it.

use http::HeaderMap;
use http::header::{self, HeaderValue};

/// The greatest delta-seconds value kept: RFC 9111 §1.2.2 has a larger value read as 2^31.
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The directives of a response's `Cache-Control` that decide storing and serving stale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    /// With or without a field list: either way the response is not kept.
    pub(crate) no_cache: bool,
    /// With or without a field list: either way a shared cache does not keep the response.
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    /// Present, whatever its value: a shared cache may then not serve the response stale
    /// (RFC 9111 §5.2.2, `s-maxage`).
    pub(crate) s_maxage: bool,
    pub(crate) max_age: Option<Delta>,
    pub(crate) stale_if_error: Option<Delta>,
}

impl ResponseDirectives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut directives = ResponseDirectives::default();
        let malformed = for_each_directive(headers, |name, value| {
            let d = &mut directives;
            match name {
                n if n.eq_ignore_ascii_case(b"no-store") => d.no_store = true,
                n if n.eq_ignore_ascii_case(b"no-cache") => d.no_cache = true,
                n if n.eq_ignore_ascii_case(b"private") => d.private = true,
                n if n.eq_ignore_ascii_case(b"public") => d.public = true,
                n if n.eq_ignore_ascii_case(b"must-revalidate") => d.must_revalidate = true,
                n if n.eq_ignore_ascii_case(b"proxy-revalidate") => d.proxy_revalidate = true,
                n if n.eq_ignore_ascii_case(b"s-maxage") => d.s_maxage = true,
                // The first occurrence counts (RFC 9111 §4.2.1 allows that reading).
                n if n.eq_ignore_ascii_case(b"max-age") => {
                    d.max_age.get_or_insert(Delta::parse(value));
                }
                n if n.eq_ignore_ascii_case(b"stale-if-error") => {
                    d.stale_if_error.get_or_insert(Delta::parse(value));
                }
                _ => {}
            }
        });
        if malformed {
            directives.no_store |= names(headers, b"no-store");
            directives.no_cache |= names(headers, b"no-cache");
            directives.private |= names(headers, b"private");
        }
        directives
    }

    /// Whether RFC 9111 §4.2.4 forbids serving the response stale: `no-cache`,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`.
    pub(crate) fn forbids_stale(&self) -> bool {
        self.no_cache || self.must_revalidate || self.proxy_revalidate || self.s_maxage
    }

    /// Whether RFC 9111 §3.5 lets a shared cache store the response to a request that carried
    /// `Authorization`.
    pub(crate) fn allows_authorized(&self) -> bool {
        self.public || self.s_maxage || self.must_revalidate
    }
}

/// The directives of a request's `Cache-Control` that bear on the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    /// The client asks that its request and the response not be stored (RFC 9111 §5.2.1, `no-store`).
    pub(crate) no_store: bool,
    /// The client asks for a response validated by the origin (RFC 9111 §5.2.1, `no-cache`).
    pub(crate) no_cache: bool,
    /// See [`stale_if_error`](Self::stale_if_error); [`NO_WINDOW`] when the request gave none.
    /// Without an `Option`'s tag: every request carries this, and it is kept small.
    stale_if_error: u32,
}

/// No `stale-if-error` in the request: above any value kept (2^31).
const NO_WINDOW: u32 = u32::MAX;

impl Default for RequestDirectives {
    fn default() -> Self {
        RequestDirectives {
            no_store: false,
            no_cache: false,
            stale_if_error: NO_WINDOW,
        }
    }
}

impl RequestDirectives {
    /// The longest staleness the client accepts for an answer on error (RFC 5861 §4); only a
    /// valid value counts, the first. At most 2^31.
    pub(crate) fn stale_if_error(&self) -> Option<u32> {
        (self.stale_if_error != NO_WINDOW).then_some(self.stale_if_error)
    }

    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut directives = RequestDirectives::default();
        let malformed = for_each_directive(headers, |name, value| {
            if name.eq_ignore_ascii_case(b"no-store") {
                directives.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                directives.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"stale-if-error") {
                if let (None, Delta::Seconds(seconds)) =
                    (directives.stale_if_error(), Delta::parse(value))
                {
                    // At most 2^31 (`Delta` saturates there): always below `NO_WINDOW`.
                    directives.stale_if_error = u32::try_from(seconds).unwrap_or(NO_WINDOW - 1);
                }
            }
        });
        // As for a response: a client that asked not to be stored, or for a validated answer,
        // in a field the store cannot read, gets what it plainly asked for.
        if malformed {
            directives.no_store |= names(headers, b"no-store");
            directives.no_cache |= names(headers, b"no-cache");
        }
        directives
    }
}

/// A delta-seconds value (RFC 9111 §1.2.2), or a directive whose value is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delta {
    Seconds(u64),
    Invalid,
}

impl Delta {
    /// Digits, bare or quoted (a recipient accepts both forms), saturating at 2^31.
    pub(crate) fn parse(value: Option<&[u8]>) -> Self {
        let Some(value) = value else {
            return Delta::Invalid;
        };
        let digits = match value {
            [b'"', inner @ .., b'"'] => inner,
            _ => value,
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Delta::Invalid;
        }
        let seconds = digits.iter().fold(0u64, |n, &d| {
            (n * 10 + u64::from(d - b'0')).min(MAX_DELTA_SECONDS)
        });
        Delta::Seconds(seconds)
    }

    pub(crate) fn seconds(self) -> Option<u64> {
        match self {
            Delta::Seconds(seconds) => Some(seconds),
            Delta::Invalid => None,
        }
    }
}

/// Calls `each(name, value)` for every well-formed directive of every `Cache-Control` line, in
/// order. The value is the raw token or quoted string (quotes included), or `None` without `=`.
/// Returns whether any element was malformed (and skipped).
fn for_each_directive(headers: &HeaderMap, mut each: impl FnMut(&[u8], Option<&[u8]>)) -> bool {
    let mut malformed = false;
    for line in headers.get_all(header::CACHE_CONTROL) {
        malformed |= directives_of(line, &mut each);
    }
    malformed
}

/// Whether any `Cache-Control` line holds `word`, without case, anywhere (inside a quoted string
/// or a malformed element too). Linear in the field's length: `word` is a few bytes.
fn names(headers: &HeaderMap, word: &[u8]) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|line| {
        line.as_bytes()
            .windows(word.len())
            .any(|window| window.eq_ignore_ascii_case(word))
    })
}

/// Reads one line; returns whether an element of it was malformed.
fn directives_of(line: &HeaderValue, each: &mut impl FnMut(&[u8], Option<&[u8]>)) -> bool {
    let mut malformed = false;
    let bytes = line.as_bytes();
    let len = bytes.len();
    let skip = |mut at: usize, what: fn(u8) -> bool| {
        while at < len && what(bytes[at]) {
            at += 1;
        }
        at
    };
    let blank = |b: u8| b == b' ' || b == b'\t';
    let mut at = 0;
    // One pass: each element is a token, then optionally `=` and a token or a quoted string.
    while at < len {
        at = skip(at, |b| b == b' ' || b == b'\t' || b == b',');
        let name_start = at;
        at = skip(at, crate::headers::is_tchar);
        let name = &bytes[name_start..at];
        at = skip(at, blank);
        let mut value = None;
        if at < len && bytes[at] == b'=' {
            at = skip(at + 1, blank);
            let value_start = at;
            if at < len && bytes[at] == b'"' {
                at += 1;
                while at < len && bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
                // A quoted string that never closes is malformed.
                malformed |= at >= len;
                // Past the closing quote, if there is one.
                at = (at + 1).min(len);
            } else {
                at = skip(at, crate::headers::is_tchar);
            }
            value = Some(&bytes[value_start..at]);
            at = skip(at, blank);
        }
        if at < len && bytes[at] != b',' {
            // Malformed: skip to the next comma outside a quoted string.
            malformed = true;
            at = crate::headers::element_end(bytes, at);
            continue;
        }
        if !name.is_empty() {
            each(name, value);
        } else if value.is_some() {
            // A value without a name (`=5`).
            malformed = true;
        }
    }
    malformed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(header::CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        map
    }

    fn response(lines: &[&str]) -> ResponseDirectives {
        ResponseDirectives::parse(&headers(lines))
    }

    #[test]
    fn reads_each_directive_across_lines_and_cases() {
        let d = response(&["Public, MAX-AGE=60", "stale-if-error=\"300\""]);
        assert!(d.public && !d.private && !d.no_store && !d.forbids_stale());
        assert_eq!(d.max_age, Some(Delta::Seconds(60)));
        assert_eq!(d.stale_if_error, Some(Delta::Seconds(300)));

        for (line, forbids) in [
            ("no-cache", true),
            ("no-cache=\"set-cookie, x-a\"", true),
            ("must-revalidate", true),
            ("proxy-revalidate", true),
            ("s-maxage=10", true),
            ("max-age=10", false),
        ] {
            assert_eq!(response(&[line]).forbids_stale(), forbids, "{line}");
        }
        assert!(response(&["private=\"set-cookie\""]).private);
        assert!(response(&["no-store"]).no_store);
    }

    #[test]
    fn a_comma_inside_a_quoted_value_does_not_split() {
        let d = response(&[r#"private="a, no-store, b\"", max-age=5"#]);
        assert!(d.private);
        assert!(!d.no_store, "no-store is inside the quoted field list");
        assert_eq!(d.max_age, Some(Delta::Seconds(5)));
    }

    #[test]
    fn bad_values_are_invalid_not_zero_and_large_ones_saturate() {
        assert_eq!(response(&["max-age=abc"]).max_age, Some(Delta::Invalid));
        assert_eq!(response(&["max-age=-5"]).max_age, Some(Delta::Invalid));
        assert_eq!(response(&["max-age"]).max_age, Some(Delta::Invalid));
        assert_eq!(
            response(&["max-age=99999999999999999999999999"]).max_age,
            Some(Delta::Seconds(MAX_DELTA_SECONDS))
        );
        // The first occurrence counts.
        assert_eq!(
            response(&["max-age=5, max-age=500"]).max_age,
            Some(Delta::Seconds(5))
        );
        let request = RequestDirectives::parse(&headers(&["stale-if-error=x, stale-if-error=7"]));
        assert_eq!(request.stale_if_error(), Some(7));
    }

    #[test]
    fn request_directives() {
        let d = RequestDirectives::parse(&headers(&["no-cache, max-age=0", "no-store"]));
        assert!(d.no_cache && d.no_store);
        assert_eq!(d.stale_if_error(), None);
        let d = RequestDirectives::parse(&headers(&["max-stale=100, stale-if-error=30"]));
        assert!(!d.no_cache && !d.no_store);
        assert_eq!(d.stale_if_error(), Some(30));
        let d = RequestDirectives::parse(&headers(&["stale-if-error=0"]));
        assert_eq!(d.stale_if_error(), Some(0));
        let d = RequestDirectives::parse(&headers(&["stale-if-error=99999999999999999999"]));
        assert_eq!(d.stale_if_error(), Some(1 << 31));
    }

    #[test]
    fn garbage_is_skipped_without_a_panic() {
        for line in [
            "",
            ",,,",
            "=",
            "=5",
            "\"",
            "max-age=\"",
            "max-age=\"12",
            "no-store\"",
            "\\",
            "a b c, no-store",
            "ü-store",
        ] {
            let d = response(&[line]);
            // A well-formed no-store counts, and so does one in a field that cannot be read.
            let named = line == "a b c, no-store" || line == "no-store\"";
            assert_eq!(d.no_store, named, "{line:?}");
        }
    }

    #[test]
    fn a_field_that_cannot_be_read_and_names_a_restriction_fails_closed() {
        // Each is malformed: the restriction it names is taken as given.
        let d = response(&["max-age=60; private"]);
        assert!(d.private);
        assert_eq!(d.max_age, None, "the malformed element is not read");
        assert!(response(&["max-age=60 no-store"]).no_store);
        assert!(response(&["public, max-age=60", "max-age=\"1, NO-CACHE"]).no_cache);
        assert!(response(&["=private"]).private);
        // A malformed field that names none of them is read as before, its bad element skipped.
        let d = response(&["max-age=60; charset, stale-if-error=30"]);
        assert!(!d.private && !d.no_store && !d.no_cache);
        assert_eq!(d.stale_if_error, Some(Delta::Seconds(30)));
        // A well-formed field is read for what it says: a name inside a quoted list is a list
        // member, not a directive.
        let d = response(&[r#"no-cache="x-private", max-age=5"#]);
        assert!(d.no_cache && !d.private);
        // A request's own, alike.
        let request = RequestDirectives::parse(&headers(&["max-age=0; no-store; no-cache"]));
        assert!(request.no_store && request.no_cache);
    }

    /// The least time `parse` takes on `value`, over a few runs (noise only adds).
    fn least_time(value: &HeaderMap) -> std::time::Duration {
        (0..5)
            .map(|_| {
                let started = std::time::Instant::now();
                std::hint::black_box(ResponseDirectives::parse(std::hint::black_box(value)));
                started.elapsed()
            })
            .min()
            .expect("five runs")
    }

    #[test]
    fn a_long_hostile_value_takes_linear_time() {
        // Quotes that never close, escapes, and directives by the thousand.
        let cases: [fn(usize) -> String; 3] = [
            |n| format!("a=\"{}", "\\\",".repeat(n / 3)),
            |n| "max-age=1, ".repeat(n / 11),
            |n| ",".repeat(n),
        ];
        for case in cases {
            let small = headers(&[&case(4 * 1024)]);
            let large = headers(&[&case(64 * 1024)]);
            let (t_small, t_large) = (least_time(&small), least_time(&large));
            // 16 times the input: linear work takes about 16 times as long, quadratic 256
            // times. The bound leaves room for noise, and a floor keeps timer resolution out.
            let bound = t_small * 48 + std::time::Duration::from_millis(2);
            assert!(
                t_large <= bound,
                "64 KiB took {t_large:?}, 4 KiB {t_small:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_a_panic(value in proptest::collection::vec(0x20u8..0x7f, 0..200)) {
            let mut map = HeaderMap::new();
            map.insert(header::CACHE_CONTROL, HeaderValue::from_bytes(&value).unwrap());
            let response = ResponseDirectives::parse(&map);
            let request = RequestDirectives::parse(&map);
            // What was read is what a directive said.
            let text = String::from_utf8(value).unwrap().to_ascii_lowercase();
            proptest::prop_assert!(!response.no_store || text.contains("no-store"));
            proptest::prop_assert!(!request.no_cache || text.contains("no-cache"));
        }
    }
}
