//! `Proxy-Status` (RFC 9209) and `Retry-After` (RFC 9110 §10.2.3).

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::HeaderName;
use http::HeaderValue;

use crate::kind::ProxyErrorKind;

/// The `Proxy-Status` header name.
pub static PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");

/// The name by which this gateway identifies itself in `Proxy-Status`.
///
/// RFC 9209 asks for a name of the deployment (`edge-1`, `checkout-gw`), not of the product. A name
/// that is a Structured Field token is written bare; any other printable ASCII is written as a
/// quoted string.
///
/// ```
/// use gateway_errors::ProxyName;
///
/// assert_eq!(ProxyName::new("edge-1").unwrap().as_str(), "edge-1");
/// assert_eq!(ProxyName::new("edge 1").unwrap().as_str(), "\"edge 1\"");
/// assert!(ProxyName::new("édge").is_err());
/// assert!(ProxyName::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyName {
    member: Box<str>,
}

impl ProxyName {
    /// Validates `name` and encodes it as a Structured Field item.
    pub fn new(name: &str) -> Result<Self, InvalidProxyName> {
        if name.is_empty() || name.len() > 256 {
            return Err(InvalidProxyName(()));
        }
        if is_sf_token(name) {
            return Ok(ProxyName {
                member: name.into(),
            });
        }
        if !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(InvalidProxyName(()));
        }
        let mut member = String::with_capacity(name.len() + 2);
        member.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                member.push('\\');
            }
            member.push(c);
        }
        member.push('"');
        Ok(ProxyName {
            member: member.into(),
        })
    }

    /// The name as it appears in the header (a token, or a quoted string).
    pub fn as_str(&self) -> &str {
        &self.member
    }
}

impl fmt::Debug for ProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.member)
    }
}

impl std::str::FromStr for ProxyName {
    type Err = InvalidProxyName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyName::new(s)
    }
}

/// The error for a proxy name that cannot be written in a header: empty, longer than 256 bytes, or
/// with characters outside printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidProxyName(());

impl fmt::Display for InvalidProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a proxy name must be 1 to 256 printable ASCII characters")
    }
}

impl std::error::Error for InvalidProxyName {}

/// RFC 9651 §3.3.4: `( ALPHA / "*" ) *( tchar / ":" / "/" )`.
pub(crate) fn is_sf_token(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'*' => {}
        _ => return false,
    }
    bytes.all(|b| is_tchar(b) || b == b':' || b == b'/')
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Proxy-Status` values for one proxy name, made once per configuration: one per error kind, and
/// one without an error type for unrecognised errors. Cloning a value is a reference-count bump.
#[derive(Clone)]
pub(crate) struct ProxyStatusValues {
    by_kind: Box<[HeaderValue]>,
    unrecognized: HeaderValue,
}

impl ProxyStatusValues {
    pub(crate) fn new(name: &ProxyName) -> Self {
        let by_kind = ProxyErrorKind::ALL
            .iter()
            .map(|kind| shared_value(format!("{}; error={}", name.as_str(), kind.token())))
            .collect();
        ProxyStatusValues {
            by_kind,
            unrecognized: shared_value(name.as_str().to_owned()),
        }
    }

    pub(crate) fn get(&self, kind: Option<ProxyErrorKind>) -> HeaderValue {
        match kind {
            Some(kind) => self.by_kind[kind.index()].clone(),
            None => self.unrecognized.clone(),
        }
    }
}

fn shared_value(s: String) -> HeaderValue {
    // Built from a validated name and registry tokens: always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(s)).expect("proxy-status member is visible ASCII")
}

/// Our member appended to the members an upstream proxy already sent, in one field line: the
/// member nearest the origin stays first (RFC 9209 §2).
pub(crate) fn append_member<'a>(
    existing: impl Iterator<Item = &'a HeaderValue>,
    ours: &HeaderValue,
) -> HeaderValue {
    let mut out = BytesMut::new();
    for value in existing {
        let trimmed = value.as_bytes().trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        out.put_slice(trimmed);
        out.put_slice(b", ");
    }
    out.put_slice(ours.as_bytes());
    // Existing values were valid header values and ours is; joining them keeps them valid.
    HeaderValue::from_maybe_shared(out.freeze()).unwrap_or_else(|_| ours.clone())
}

/// The longest `details` parameter value written, quotes and escapes included.
pub(crate) const MAX_DETAILS_LEN: usize = 256;

/// The `details` parameter of our `Proxy-Status` member (RFC 9209 §2.1.5): the error and its
/// `source()` chain as a Structured Field string, quotes included. Printable ASCII passes, `"` and
/// `\` are escaped, any other character becomes `?`; the whole value is at most
/// [`MAX_DETAILS_LEN`] bytes, cut with `...` when longer. Only sent when the operator opts in: the
/// chain may name internal hosts.
pub(crate) fn details_param(chain: &dyn std::error::Error) -> String {
    use std::fmt::Write as _;

    /// Writes sanitized characters until the budget is spent, then remembers that it cut.
    struct Sanitized {
        out: String,
        cut: bool,
    }
    impl fmt::Write for Sanitized {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            // Room for the closing quote, and for `...` if a cut is needed.
            const BUDGET: usize = MAX_DETAILS_LEN - 1 - 3;
            for c in s.chars() {
                let plain = [c as u8];
                let escaped: &[u8] = match c {
                    '"' => b"\\\"",
                    '\\' => b"\\\\",
                    ' '..='~' => &plain,
                    _ => b"?",
                };
                if self.out.len() + escaped.len() > BUDGET {
                    self.cut = true;
                    return Err(fmt::Error);
                }
                // Every byte pushed is printable ASCII.
                self.out.extend(escaped.iter().map(|&b| char::from(b)));
            }
            Ok(())
        }
    }

    let mut sanitized = Sanitized {
        out: String::with_capacity(64),
        cut: false,
    };
    sanitized.out.push('"');
    let _ = write!(sanitized, "{chain}");
    let mut next = chain.source();
    let mut depth = 0;
    while let (Some(error), false) = (next, sanitized.cut) {
        depth += 1;
        if depth > 32 {
            break;
        }
        let _ = write!(sanitized, ": {error}");
        next = error.source();
    }
    if sanitized.cut {
        sanitized.out.push_str("...");
    }
    sanitized.out.push('"');
    sanitized.out
}

/// A `Retry-After` value: a delay in seconds or an HTTP-date.
///
/// ```
/// use std::time::Duration;
/// use gateway_errors::RetryAfter;
///
/// let after = RetryAfter::from(Duration::from_secs(30));
/// assert_eq!(after.to_header_value(), "30");
/// assert_eq!(RetryAfter::parse(b"120"), Some(RetryAfter::Delay(Duration::from_secs(120))));
/// assert!(RetryAfter::parse(b"Sun, 06 Nov 1994 08:49:37 GMT").is_some());
/// assert_eq!(RetryAfter::parse(b"soon"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// Retry after this long (written in whole seconds, rounded up).
    Delay(Duration),
    /// Retry after this moment.
    At(SystemTime),
}

impl RetryAfter {
    /// Parses a `Retry-After` field value: `delay-seconds` or an HTTP-date. Anything else is `None`.
    pub fn parse(value: &[u8]) -> Option<RetryAfter> {
        let value = value.trim_ascii();
        if !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
            let seconds = std::str::from_utf8(value).ok()?.parse::<u64>().ok()?;
            return Some(RetryAfter::Delay(Duration::from_secs(seconds)));
        }
        if value.len() > 64 {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        httpdate::parse_http_date(text).ok().map(RetryAfter::At)
    }

    /// How long from `now` until a retry is advised (zero for a date in the past).
    pub fn delay_from(&self, now: SystemTime) -> Duration {
        match *self {
            RetryAfter::Delay(delay) => delay,
            RetryAfter::At(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        }
    }

    /// The advised delay from `now` in whole seconds, rounded up (a retry is never advised
    /// early), as `Retry-After` and the `{retry_after}` placeholder state it.
    pub fn seconds_from(&self, now: SystemTime) -> u64 {
        let delay = self.delay_from(now);
        delay
            .as_secs()
            .saturating_add(u64::from(delay.subsec_nanos() > 0))
    }

    /// The header value: whole seconds (rounded up), or an IMF-fixdate.
    pub fn to_header_value(&self) -> HeaderValue {
        match *self {
            RetryAfter::Delay(_) => HeaderValue::from(self.seconds_from(SystemTime::now())),
            RetryAfter::At(at) => HeaderValue::from_str(&httpdate::fmt_http_date(at))
                .expect("an HTTP-date is visible ASCII"),
        }
    }
}

impl From<Duration> for RetryAfter {
    fn from(delay: Duration) -> Self {
        RetryAfter::Delay(delay)
    }
}

impl From<SystemTime> for RetryAfter {
    fn from(at: SystemTime) -> Self {
        RetryAfter::At(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_values_name_each_kind() {
        let values = ProxyStatusValues::new(&ProxyName::new("edge-1").unwrap());
        assert_eq!(
            values.get(Some(ProxyErrorKind::ConnectionRefused)),
            "edge-1; error=connection_refused"
        );
        assert_eq!(values.get(None), "edge-1");
    }

    #[test]
    fn appends_after_upstream_members() {
        let upstream = [HeaderValue::from_static(
            "origin-lb; error=http_response_timeout ",
        )];
        let ours = HeaderValue::from_static("edge-1; received-status=504");
        assert_eq!(
            append_member(upstream.iter(), &ours),
            "origin-lb; error=http_response_timeout, edge-1; received-status=504"
        );
    }

    #[test]
    fn quoted_names_escape_quotes_and_backslashes() {
        assert_eq!(
            ProxyName::new(r#"a "b" \c"#).unwrap().as_str(),
            r#""a \"b\" \\c""#
        );
        assert!(ProxyName::new("tab\tname").is_err());
    }

    #[test]
    fn details_are_a_bounded_sf_string() {
        let error = std::io::Error::other("host \"db\" \\ caf\u{e9}\r\nx");
        assert_eq!(details_param(&error), r#""host \"db\" \\ caf???x""#);
        let long = std::io::Error::other("a".repeat(1000));
        let details = details_param(&long);
        assert_eq!(details.len(), MAX_DETAILS_LEN);
        assert!(details.ends_with("...\""), "{details}");
        let escapes = std::io::Error::other("\"".repeat(1000));
        let details = details_param(&escapes);
        assert!(details.len() <= MAX_DETAILS_LEN, "{}", details.len());
        assert!(details.ends_with("\\\"...\""), "{details}");
    }

    #[test]
    fn retry_after_rounds_up_and_rejects_garbage() {
        assert_eq!(
            RetryAfter::Delay(Duration::from_millis(1500)).to_header_value(),
            "2"
        );
        assert_eq!(RetryAfter::parse(b"99999999999999999999999"), None);
        assert_eq!(RetryAfter::parse(b"-1"), None);
        assert_eq!(RetryAfter::parse(b""), None);
        assert_eq!(RetryAfter::parse(&[0xff, 0xfe]), None);
    }
}
