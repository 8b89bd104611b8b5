//! `Accept` → body [`Format`], per RFC 9110 §12.5.1.
//!
//! The parser is our own, for two reasons: it runs for every generated error, thousands of times a
//! second when an upstream dies, and the well-kept crates allocate for each media range
//! (`mediatype` collects each range's parameters into a `Vec`). This one makes one pass over the
//! bytes, allocates nothing, and is linear in the length of the header whatever the header holds:
//! a hostile `Accept` costs what a long one does. The layer also remembers, per thread, the last few
//! values it negotiated ([`negotiate_line`]), so a storm of identical browsers parses once.
//!
//! Rules:
//! - each format takes the quality of the most specific range that matches it
//!   (`text/html` over `text/*` over `*/*`; a range with parameters over one without);
//! - a range matches only if its parameters hold for the body: `charset=utf-8` does, anything
//!   else (`text/html;level=1`) does not;
//! - `application/json` asks for problem+json, unless `application/problem+json` is named too;
//! - `q=0` means "not this"; a malformed range or q-value is ignored, not fatal;
//! - several `Accept` field lines count as one list; names are case-insensitive;
//! - ties go to the configured default format, then problem+json, HTML, text;
//! - when nothing is acceptable the default format is used: an error is never turned into a 406.

use http::HeaderValue;

use crate::headers::{is_token, list_elements};

/// The form of a generated error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `application/problem+json` (RFC 9457), also served for `application/json`.
    ProblemJson,
    /// `text/html; charset=utf-8`, a page for people.
    Html,
    /// `text/plain; charset=utf-8`.
    Text,
}

impl Format {
    /// Every format, in the order used to break ties.
    pub const ALL: [Format; 3] = [Format::ProblemJson, Format::Html, Format::Text];

    /// The `Content-Type` of a body of this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::ProblemJson => "application/problem+json",
            Format::Html => "text/html; charset=utf-8",
            Format::Text => "text/plain; charset=utf-8",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// Picks the body format for the `Accept` field lines of a request.
///
/// ```
/// use gateway_errors::render::negotiate;
/// use gateway_errors::render::Format;
/// use http::HeaderValue;
///
/// let browser = HeaderValue::from_static(
///     "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
/// );
/// assert_eq!(negotiate([&browser], Format::ProblemJson), Format::Html);
///
/// let no_html = HeaderValue::from_static("text/html;q=0, text/*");
/// assert_eq!(negotiate([&no_html], Format::ProblemJson), Format::Text);
///
/// // Nothing acceptable: the default, never a 406.
/// let png = HeaderValue::from_static("image/png");
/// assert_eq!(negotiate([&png], Format::ProblemJson), Format::ProblemJson);
/// ```
pub fn negotiate<'a, I>(accept: I, default: Format) -> Format
where
    I: IntoIterator<Item = &'a HeaderValue>,
{
    let mut best = [Match::NONE; CANDIDATES.len()];
    let mut any = false;
    for value in accept {
        for range in list_elements(value.as_bytes()) {
            if let Some(range) = MediaRange::parse(range) {
                any = true;
                for (candidate, best) in CANDIDATES.iter().zip(best.iter_mut()) {
                    let specificity = range.specificity_for(candidate);
                    if specificity > best.specificity {
                        *best = Match {
                            specificity,
                            quality: range.quality,
                        };
                    }
                }
            }
        }
    }
    if !any {
        return default;
    }
    // A format served for several media types (problem+json also answers `application/json`)
    // takes the quality of its most specific match; on a tie, the type it is served as wins, so
    // `application/problem+json;q=0` refuses JSON whatever `application/json` says.
    let quality = |format: Format| -> u16 {
        CANDIDATES
            .iter()
            .zip(best.iter())
            .filter(|(candidate, _)| candidate.format == format)
            .fold(Match::NONE, |chosen, (_, m)| {
                if m.specificity > chosen.specificity {
                    *m
                } else {
                    chosen
                }
            })
            .quality
    };
    let mut chosen = default;
    let mut chosen_quality = quality(default);
    for format in Format::ALL {
        let q = quality(format);
        if q > chosen_quality {
            chosen = format;
            chosen_quality = q;
        }
    }
    if chosen_quality == 0 { default } else { chosen }
}

/// Negotiates one `Accept` field line, remembering the last few answers on this thread.
///
/// When an upstream dies, the same few `Accept` values (one per kind of client) arrive thousands of
/// times a second. Parsing one costs a few thousand instructions, comparing it with a remembered
/// copy a few dozen. The answer depends on the bytes and the default alone, so a remembered answer
/// is always the one [`negotiate`] would give. Values longer than [`MEMO_MAX_LEN`] are parsed every
/// time; the memo never allocates and holds about 1 KiB per thread.
pub(crate) fn negotiate_line(line: &HeaderValue, default: Format) -> Format {
    let bytes = line.as_bytes();
    if bytes.len() > MEMO_MAX_LEN {
        return negotiate([line], default);
    }
    // `try_with`: a thread being torn down negotiates without the memo.
    MEMO.try_with(|memo| {
        if let Some(format) = memo.borrow().get(bytes, default) {
            return format;
        }
        let format = negotiate([line], default);
        memo.borrow_mut().put(bytes, default, format);
        format
    })
    .unwrap_or_else(|_| negotiate([line], default))
}

/// The longest `Accept` value the memo keeps. Browsers send about 100 to 150 bytes.
const MEMO_MAX_LEN: usize = 224;
const MEMO_ENTRIES: usize = 4;

thread_local! {
    static MEMO: std::cell::RefCell<Memo> = const { std::cell::RefCell::new(Memo::EMPTY) };
}

struct Memo {
    entries: [MemoEntry; MEMO_ENTRIES],
    /// The entry the next miss replaces (round robin).
    next: usize,
}

#[derive(Clone, Copy)]
struct MemoEntry {
    /// `None` until the entry is first filled.
    answer: Option<(Format, Format)>,
    len: u8,
    bytes: [u8; MEMO_MAX_LEN],
}

impl Memo {
    const EMPTY: Memo = Memo {
        entries: [MemoEntry {
            answer: None,
            len: 0,
            bytes: [0; MEMO_MAX_LEN],
        }; MEMO_ENTRIES],
        next: 0,
    };

    fn get(&self, bytes: &[u8], default: Format) -> Option<Format> {
        self.entries.iter().find_map(|entry| match entry.answer {
            Some((d, format)) if d == default && entry.value() == bytes => Some(format),
            _ => None,
        })
    }

    fn put(&mut self, bytes: &[u8], default: Format, format: Format) {
        let Ok(len) = u8::try_from(bytes.len()) else {
            return;
        };
        let entry = &mut self.entries[self.next];
        entry.bytes[..bytes.len()].copy_from_slice(bytes);
        entry.len = len;
        entry.answer = Some((default, format));
        self.next = (self.next + 1) % MEMO_ENTRIES;
    }
}

impl MemoEntry {
    fn value(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

struct Candidate {
    ty: &'static [u8],
    subtype: &'static [u8],
    format: Format,
}

const CANDIDATES: [Candidate; 4] = [
    Candidate {
        ty: b"application",
        subtype: b"problem+json",
        format: Format::ProblemJson,
    },
    Candidate {
        ty: b"application",
        subtype: b"json",
        format: Format::ProblemJson,
    },
    Candidate {
        ty: b"text",
        subtype: b"html",
        format: Format::Html,
    },
    Candidate {
        ty: b"text",
        subtype: b"plain",
        format: Format::Text,
    },
];

#[derive(Clone, Copy)]
struct Match {
    /// 0: no range matched; 1: `*/*`; 2: `type/*`; 3: `type/subtype`; +1 with parameters.
    specificity: u8,
    /// The q-value in thousandths.
    quality: u16,
}

impl Match {
    const NONE: Match = Match {
        specificity: 0,
        quality: 0,
    };
}

struct MediaRange<'a> {
    ty: &'a [u8],
    subtype: &'a [u8],
    has_params: bool,
    /// Every parameter is one that the served bodies have: `charset=utf-8`. A range with any
    /// other parameter (`text/html;level=1`) matches none of them (RFC 9110 §12.5.1).
    params_match: bool,
    quality: u16,
}

impl<'a> MediaRange<'a> {
    fn parse(element: &'a [u8]) -> Option<Self> {
        let element = element.trim_ascii();
        let (media, mut params) = match element.iter().position(|&b| b == b';') {
            Some(i) => (&element[..i], &element[i + 1..]),
            None => (element, &[][..]),
        };
        let media = media.trim_ascii();
        let slash = media.iter().position(|&b| b == b'/')?;
        let (ty, subtype) = (&media[..slash], &media[slash + 1..]);
        if !is_token(ty) || !is_token(subtype) || (ty == b"*" && subtype != b"*") {
            return None;
        }
        let mut range = MediaRange {
            ty,
            subtype,
            has_params: false,
            params_match: true,
            quality: 1000,
        };
        while !params.is_empty() {
            let (param, rest) = next_param(params)?;
            params = rest;
            let (name, value) = param;
            if name.eq_ignore_ascii_case(b"q") {
                range.quality = parse_qvalue(value)?;
                // Parameters after q are accept-ext (RFC 7231); they do not change the match.
                break;
            }
            range.has_params = true;
            range.params_match &=
                name.eq_ignore_ascii_case(b"charset") && value.eq_ignore_ascii_case(b"utf-8");
        }
        Some(range)
    }

    fn specificity_for(&self, candidate: &Candidate) -> u8 {
        if !self.params_match {
            return 0;
        }
        let base = if self.ty == b"*" {
            1
        } else if !self.ty.eq_ignore_ascii_case(candidate.ty) {
            return 0;
        } else if self.subtype == b"*" {
            2
        } else if self.subtype.eq_ignore_ascii_case(candidate.subtype) {
            3
        } else {
            return 0;
        };
        base * 2 + u8::from(self.has_params)
    }
}

type Param<'a> = (&'a [u8], &'a [u8]);

/// One `name=value` parameter and what follows it. Values may be quoted strings.
fn next_param(s: &[u8]) -> Option<(Param<'_>, &[u8])> {
    let s = s.trim_ascii_start();
    let eq = s.iter().position(|&b| b == b'=')?;
    let name = s[..eq].trim_ascii();
    if !is_token(name) {
        return None;
    }
    let after = s[eq + 1..].trim_ascii_start();
    let (value, rest) = if after.first() == Some(&b'"') {
        let mut escaped = false;
        let mut end = None;
        for (i, &b) in after.iter().enumerate().skip(1) {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                end = Some(i);
                break;
            }
        }
        let end = end?;
        (&after[1..end], &after[end + 1..])
    } else {
        let end = after.iter().position(|&b| b == b';').unwrap_or(after.len());
        (after[..end].trim_ascii(), &after[end..])
    };
    let rest = rest.trim_ascii_start();
    let rest = match rest.first() {
        None => rest,
        Some(b';') => &rest[1..],
        Some(_) => return None,
    };
    Some(((name, value), rest))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(value: &[u8]) -> Option<u16> {
    let (&first, rest) = value.split_first()?;
    let decimals = match rest {
        [] => &[][..],
        [b'.', decimals @ ..] if decimals.len() <= 3 => decimals,
        _ => return None,
    };
    if !decimals.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match first {
        b'1' if decimals.iter().all(|&d| d == b'0') => Some(1000),
        b'0' => {
            let mut thousandths = 0u16;
            for i in 0..3 {
                thousandths = thousandths * 10 + decimals.get(i).map_or(0, |d| u16::from(d - b'0'));
            }
            Some(thousandths)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str) -> Format {
        negotiate(
            [&HeaderValue::from_str(accept).unwrap()],
            Format::ProblemJson,
        )
    }

    #[test]
    fn q_values_parse_strictly() {
        assert_eq!(parse_qvalue(b"0"), Some(0));
        assert_eq!(parse_qvalue(b"0.5"), Some(500));
        assert_eq!(parse_qvalue(b"0.123"), Some(123));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"1.001"), None);
        assert_eq!(parse_qvalue(b"0.1234"), None);
        assert_eq!(parse_qvalue(b"2"), None);
        assert_eq!(parse_qvalue(b"-0"), None);
        assert_eq!(parse_qvalue(b""), None);
    }

    #[test]
    fn specificity_beats_order() {
        assert_eq!(pick("*/*;q=0.1, text/*;q=0.5, text/html;q=0"), Format::Text);
        assert_eq!(pick("text/*;q=0.2, application/json;q=0.1"), Format::Html);
    }

    #[test]
    fn quoted_commas_do_not_split() {
        assert_eq!(pick("text/html;x=\"a,b\";q=0, text/plain"), Format::Text);
    }

    #[test]
    fn parameters_must_hold_for_the_body() {
        // RFC 9110 §12.5.1: `text/html;level=1` does not match a body without that parameter.
        let pick_html = "text/html;level=1;q=0, text/html;q=0.7, text/plain;q=0.5";
        assert_eq!(pick(pick_html), Format::Html);
        assert_eq!(pick("text/html;level=1, text/plain;q=0.5"), Format::Text);
        assert_eq!(
            pick("text/html;charset=UTF-8, text/plain;q=0.5"),
            Format::Html
        );
        let refused = "application/problem+json;q=0, application/json, text/plain;q=0.1";
        assert_eq!(pick(refused), Format::Text);
    }

    #[test]
    fn the_memo_answers_as_the_parser_does() {
        let values = [
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "application/json",
            "text/plain",
            "text/html;q=0, text/*",
            "*/*",
            "image/png",
            "",
        ];
        // More values than entries, each asked twice under each default, in turns: every answer
        // is either remembered or parsed again, and both must agree with the parser.
        for _ in 0..3 {
            for value in values {
                let line = HeaderValue::from_static(value);
                for default in Format::ALL {
                    assert_eq!(
                        negotiate_line(&line, default),
                        negotiate([&line], default),
                        "{value:?} with default {default:?}"
                    );
                }
            }
        }
        let long = format!("{}, text/plain", "a/b;q=0.1,".repeat(40));
        let long = HeaderValue::from_str(&long).unwrap();
        assert!(long.len() > MEMO_MAX_LEN);
        assert_eq!(negotiate_line(&long, Format::Html), Format::Text);
    }

    #[test]
    fn several_field_lines_form_one_list() {
        let a = HeaderValue::from_static("text/html;q=0.1");
        let b = HeaderValue::from_static("text/plain;q=0.9");
        assert_eq!(negotiate([&a, &b], Format::ProblemJson), Format::Text);
    }
}
