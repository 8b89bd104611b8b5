//! Body templates: compiled once when the layer is configured, rendered per error without parsing.

use std::fmt;
use std::ops::Range;

use super::ErrorView;
use crate::render::negotiate::Format;

/// A compiled body template for one [`Format`].
///
/// A template is text with placeholders in braces. `{{` and `}}` stand for literal braces (as in
/// Rust's `format!`), which CSS and JSON templates need. Placeholders:
///
/// | placeholder | value |
/// |---|---|
/// | `{status}` | the status code, e.g. `502` |
/// | `{title}` | the status's reason phrase, e.g. `Bad Gateway` |
/// | `{detail}` | a sentence for the client saying what failed |
/// | `{advice}` | a sentence saying whether waiting or retrying will help |
/// | `{error_type}` | the RFC 9209 token, e.g. `connection_refused` (empty if unknown) |
/// | `{request_id}` | the request id (empty if none) |
/// | `{retryable}` | `true` or `false` |
/// | `{retry_after}` | the advised delay in seconds (empty if none) |
/// | `{proxy}` | the configured proxy name |
///
/// Sections show text only when a value is present: `{#request_id}<p>Request {request_id}</p>{/request_id}`
/// renders its inside when the request has an id, and `{^request_id}...{/request_id}` when it has
/// none. `{#retryable}` renders when a retry is safe, `{#error_type}` and `{#retry_after}` when
/// known. Sections nest.
///
/// Values are escaped for the template's format: HTML-escaped in HTML, JSON-string-escaped in JSON
/// (write the quotes around string placeholders yourself; `{status}` and `{retryable}` are bare
/// JSON values), and written as they are in text, where no request value can be dangerous.
///
/// Mistakes are errors when the template is made, with the byte offset, line and column:
///
/// ```
/// use gateway_errors::render::Template;
///
/// let page = Template::html("<h1>{status} {title}</h1><p>{detail}</p>").unwrap();
/// # let _ = page;
/// let err = Template::html("<h1>{staus}</h1>").unwrap_err();
/// assert_eq!(err.to_string(), "unknown placeholder `{staus}` at line 1, column 5 (byte 4)");
/// assert!(Template::text("{status").is_err());
///
/// // JSON templates must render valid JSON; checked with sample values, optional ones present
/// // and absent.
/// assert!(Template::problem_json(r#"{{"status":{status},"title":"{title}"}}"#).is_ok());
/// assert!(Template::problem_json(r#"{{"title":{title}}}"#).is_err());
/// assert!(Template::problem_json(r#"{{"retry_after":{retry_after}}}"#).is_err());
/// ```
#[derive(Clone)]
pub struct Template {
    format: Format,
    /// Literal text with escapes resolved; parts index into it.
    text: Box<str>,
    parts: Box<[Part]>,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(Range<usize>),
    Field(Field),
    /// `{#field}` (or `{^field}` when `inverted`): the parts up to `end` render only when the
    /// field is present (or absent).
    Section {
        field: Field,
        inverted: bool,
        end: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Status,
    Title,
    Detail,
    Advice,
    ErrorType,
    RequestId,
    Retryable,
    RetryAfter,
    Proxy,
}

impl Field {
    const NAMES: [(&'static str, Field); 9] = [
        ("status", Field::Status),
        ("title", Field::Title),
        ("detail", Field::Detail),
        ("advice", Field::Advice),
        ("error_type", Field::ErrorType),
        ("request_id", Field::RequestId),
        ("retryable", Field::Retryable),
        ("retry_after", Field::RetryAfter),
        ("proxy", Field::Proxy),
    ];

    fn from_name(name: &str) -> Option<Field> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, field)| *field)
    }

    /// Whether a section on this field renders: optional values when present, `retryable` when
    /// true, the others always.
    fn is_present(self, view: &ErrorView<'_>) -> bool {
        match self {
            Field::ErrorType => view.error_type().is_some(),
            Field::RequestId => view.request_id().is_some(),
            Field::RetryAfter => view.retry_after_seconds().is_some(),
            Field::Retryable => view.retryable(),
            _ => true,
        }
    }
}

impl Template {
    /// Compiles an HTML template; values are HTML-escaped.
    pub fn html(source: &str) -> Result<Template, TemplateError> {
        Template::compile(Format::Html, source)
    }

    /// Compiles a plain-text template; values are written as they are.
    pub fn text(source: &str) -> Result<Template, TemplateError> {
        Template::compile(Format::Text, source)
    }

    /// Compiles an `application/problem+json` template; string values are JSON-escaped. The
    /// template is rendered with sample values, hostile ones included, once for each way the
    /// optional values can be present or absent (and with a `retry_after` of 0), and must give a
    /// valid JSON object every time.
    pub fn problem_json(source: &str) -> Result<Template, TemplateError> {
        let template = Template::compile(Format::ProblemJson, source)?;
        let sample = ErrorView::sample();
        let mut out = Vec::new();
        // Sections and bare numbers make the output depend on which values are present: a
        // template valid with all of them can break without one (`"a":{retry_after}`).
        for request_id in [sample.request_id, None] {
            for kind in [sample.kind, None] {
                for retry_after_seconds in [sample.retry_after_seconds, Some(0), None] {
                    for retryable in [true, false] {
                        let view = ErrorView {
                            request_id,
                            kind,
                            retry_after_seconds,
                            retryable,
                            ..sample
                        };
                        out.clear();
                        template.render(&view, &mut out);
                        match serde_json::from_slice::<serde_json::Value>(&out) {
                            Ok(serde_json::Value::Object(_)) => {}
                            Ok(_) => {
                                return Err(TemplateError::new(source, 0, ErrorKind::NotAnObject));
                            }
                            Err(e) => {
                                let kind = ErrorKind::InvalidJson(e.to_string());
                                return Err(TemplateError::new(source, 0, kind));
                            }
                        }
                    }
                }
            }
        }
        Ok(template)
    }

    /// Compiles a template for `format`.
    pub fn compile(format: Format, source: &str) -> Result<Template, TemplateError> {
        let mut text = String::with_capacity(source.len());
        let mut parts = Vec::new();
        let mut literal_start = 0;
        let bytes = source.as_bytes();
        let mut i = 0;
        // (byte offset, part index) of each section still open.
        let mut open_sections: Vec<(usize, usize)> = Vec::new();
        let flush = |text: &String, parts: &mut Vec<Part>, start: usize| {
            if text.len() > start {
                parts.push(Part::Literal(start..text.len()));
            }
        };
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    text.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    text.push('}');
                    i += 2;
                }
                b'}' => return Err(TemplateError::new(source, i, ErrorKind::UnmatchedClose)),
                b'{' => {
                    let Some(len) = bytes[i + 1..].iter().position(|&b| b == b'}') else {
                        return Err(TemplateError::new(source, i, ErrorKind::Unclosed));
                    };
                    let inside = &source[i + 1..i + 1 + len];
                    let (sigil, name) = match inside.as_bytes().first() {
                        Some(&s @ (b'#' | b'^' | b'/')) => (Some(s), &inside[1..]),
                        _ => (None, inside),
                    };
                    let valid_name = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                    if !valid_name {
                        return Err(TemplateError::new(source, i, ErrorKind::NotAPlaceholder));
                    }
                    let Some(field) = Field::from_name(name) else {
                        let kind = ErrorKind::UnknownPlaceholder(inside.to_owned());
                        return Err(TemplateError::new(source, i, kind));
                    };
                    flush(&text, &mut parts, literal_start);
                    match sigil {
                        None => parts.push(Part::Field(field)),
                        Some(b'/') => {
                            let Some((_, open_index)) = open_sections.pop() else {
                                return Err(TemplateError::new(
                                    source,
                                    i,
                                    ErrorKind::UnopenedSection,
                                ));
                            };
                            let after = parts.len();
                            match &mut parts[open_index] {
                                Part::Section {
                                    field: open, end, ..
                                } if *open == field => {
                                    *end = after;
                                }
                                _ => {
                                    let kind = ErrorKind::MismatchedSection;
                                    return Err(TemplateError::new(source, i, kind));
                                }
                            }
                        }
                        Some(sigil) => {
                            open_sections.push((i, parts.len()));
                            parts.push(Part::Section {
                                field,
                                inverted: sigil == b'^',
                                end: usize::MAX,
                            });
                        }
                    }
                    literal_start = text.len();
                    i += len + 2;
                }
                _ => {
                    // Copy the run up to the next brace in one go (keeps UTF-8 intact).
                    let end = bytes[i..]
                        .iter()
                        .position(|&b| b == b'{' || b == b'}')
                        .map_or(bytes.len(), |n| i + n);
                    text.push_str(&source[i..end]);
                    i = end;
                }
            }
        }
        if let Some((open_at, _)) = open_sections.pop() {
            return Err(TemplateError::new(
                source,
                open_at,
                ErrorKind::UnclosedSection,
            ));
        }
        flush(&text, &mut parts, literal_start);
        Ok(Template {
            format,
            text: text.into_boxed_str(),
            parts: parts.into_boxed_slice(),
        })
    }

    /// The format this template renders.
    pub fn format(&self) -> Format {
        self.format
    }

    /// An upper bound guess of the rendered size, to allocate the body once.
    pub(crate) fn size_hint(&self) -> usize {
        self.text.len() + self.parts.len() * 24 + 64
    }

    /// Renders the template for `view` onto `out`.
    pub fn render(&self, view: &ErrorView<'_>, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        let mut index = 0;
        while let Some(part) = self.parts.get(index) {
            index += 1;
            match part {
                Part::Section {
                    field,
                    inverted,
                    end,
                } => {
                    if field.is_present(view) == *inverted {
                        index = *end;
                    }
                }
                Part::Literal(range) => out.extend_from_slice(self.text[range.clone()].as_bytes()),
                Part::Field(field) => match field {
                    Field::Status => out.extend_from_slice(view.status().as_str().as_bytes()),
                    Field::Title => self.write_str(view.title(), out),
                    Field::Detail => self.write_str(view.detail(), out),
                    Field::Advice => self.write_str(view.advice(), out),
                    Field::ErrorType => self.write_str(view.error_type().unwrap_or(""), out),
                    Field::RequestId => self.write_str(view.request_id().unwrap_or(""), out),
                    Field::Retryable => {
                        out.extend_from_slice(if view.retryable() { b"true" } else { b"false" })
                    }
                    Field::RetryAfter => {
                        if let Some(seconds) = view.retry_after_seconds() {
                            out.extend_from_slice(number.format(seconds).as_bytes());
                        }
                    }
                    Field::Proxy => self.write_str(view.proxy(), out),
                },
            }
        }
    }

    fn write_str(&self, value: &str, out: &mut Vec<u8>) {
        match self.format {
            Format::Html => escape_html(value, out),
            Format::ProblemJson => escape_json(value, out),
            Format::Text => out.extend_from_slice(value.as_bytes()),
        }
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("format", &self.format)
            .field("parts", &self.parts.len())
            .finish()
    }
}

pub(crate) fn escape_html(value: &str, out: &mut Vec<u8>) {
    let mut last = 0;
    for (i, b) in value.bytes().enumerate() {
        let escaped: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            _ => continue,
        };
        out.extend_from_slice(&value.as_bytes()[last..i]);
        out.extend_from_slice(escaped);
        last = i + 1;
    }
    out.extend_from_slice(&value.as_bytes()[last..]);
}

/// Escapes for the inside of a JSON string. `<`, `>` and `&` are escaped too, so that a body shown
/// inside an HTML page by a careless client cannot open a tag.
pub(crate) fn escape_json(value: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut last = 0;
    for (i, b) in value.bytes().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f | b'<' | b'>' | b'&' | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&value.as_bytes()[last..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        last = i + 1;
    }
    out.extend_from_slice(&value.as_bytes()[last..]);
}

/// A template that cannot be compiled, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    kind: ErrorKind,
    byte: usize,
    line: usize,
    column: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ErrorKind {
    Unclosed,
    UnmatchedClose,
    NotAPlaceholder,
    UnknownPlaceholder(String),
    UnclosedSection,
    UnopenedSection,
    MismatchedSection,
    InvalidJson(String),
    NotAnObject,
}

impl TemplateError {
    fn new(source: &str, byte: usize, kind: ErrorKind) -> Self {
        let before = &source[..byte];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        TemplateError {
            kind,
            byte,
            line,
            column,
        }
    }

    /// The byte offset of the problem in the template source.
    pub fn byte_offset(&self) -> usize {
        self.byte
    }

    /// The line (from 1) of the problem.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The column (from 1, in characters) of the problem.
    pub fn column(&self) -> usize {
        self.column
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Unclosed => f.write_str("unclosed `{` (write `{{` for a literal brace)")?,
            ErrorKind::UnmatchedClose => {
                f.write_str("unmatched `}` (write `}}` for a literal brace)")?
            }
            ErrorKind::NotAPlaceholder => f.write_str(
                "`{` must open a placeholder such as `{status}` (write `{{` for a literal brace)",
            )?,
            ErrorKind::UnknownPlaceholder(name) => write!(f, "unknown placeholder `{{{name}}}`")?,
            ErrorKind::UnclosedSection => f.write_str("section is never closed with `{/name}`")?,
            ErrorKind::UnopenedSection => f.write_str("`{/name}` closes no open section")?,
            ErrorKind::MismatchedSection => {
                f.write_str("`{/name}` does not match the innermost open section")?
            }
            ErrorKind::InvalidJson(e) => {
                return write!(f, "the template does not render valid JSON: {e}");
            }
            ErrorKind::NotAnObject => {
                return f.write_str("a problem+json template must render a JSON object");
            }
        }
        write!(
            f,
            " at line {}, column {} (byte {})",
            self.line, self.column, self.byte
        )
    }
}

impl std::error::Error for TemplateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_escape_and_errors_carry_positions() {
        let t = Template::text("a {{b}} {status}").unwrap();
        let mut out = Vec::new();
        t.render(&ErrorView::sample(), &mut out);
        assert_eq!(out, b"a {b} 502");

        let err = Template::text("line one\n  {nope}").unwrap_err();
        assert_eq!((err.line(), err.column(), err.byte_offset()), (2, 3, 11));
        let err = Template::text("x } y").unwrap_err();
        assert!(err.to_string().starts_with("unmatched `}`"), "{err}");
        let err = Template::html("p { color: red }").unwrap_err();
        assert!(err.to_string().contains("literal brace"), "{err}");
    }

    #[test]
    fn escaping_neutralises_markup_and_json_structure() {
        let mut html = Vec::new();
        escape_html(r#"<script>alert("x")</script>&'"#, &mut html);
        assert_eq!(
            html,
            b"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        let mut json = b"\"".to_vec();
        escape_json("a\"b\\c\n\u{1}</x>", &mut json);
        json.push(b'"');
        let parsed: String = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed, "a\"b\\c\n\u{1}</x>");
        assert!(!json.windows(2).any(|w| w == b"</"));
    }

    #[test]
    fn sections_show_only_present_values() {
        let t =
            Template::text("a{#request_id}[{request_id}]{/request_id}{^request_id}-{/request_id}b")
                .unwrap();
        let mut out = Vec::new();
        t.render(&ErrorView::sample(), &mut out);
        assert_eq!(out, b"a[<req \"1\">]b");
        let mut out = Vec::new();
        t.render(&ErrorView::sample().without_request_id(), &mut out);
        assert_eq!(out, b"a-b");
        assert!(Template::text("{#request_id}x").is_err());
        assert!(Template::text("{/request_id}").is_err());
        assert!(Template::text("{#request_id}{#retryable}{/request_id}{/retryable}").is_err());
    }

    #[test]
    fn utf8_literals_survive() {
        let t = Template::text("Erreur — {status} ✓").unwrap();
        let mut out = Vec::new();
        t.render(&ErrorView::sample(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "Erreur — 502 ✓");
    }
}
