//! `Proxy-Status` (RFC 9209): this gateway's name, and the members it writes.

use std::error::Error as StdError;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};

use crate::kind::{KIND_SLOTS, ProxyErrorKind, kind_slot};

/// The name of this gateway: in `Proxy-Status` (RFC 9209), in `CDN-Loop` (RFC 8586), and in the
/// `{proxy}` placeholder of the body templates.
///
/// RFC 9209 asks for the name of the deployment (`edge-1`, `checkout-gw.example.net`), not of the
/// product; RFC 8586 asks that it be unique to the deployment, since a request that arrives
/// carrying it is taken for a loop. A name is 1 to 256 characters, each an RFC 9110 token
/// character (letters, digits and ``!#$%&'*+-.^_`|~``) or `:`, so that it can stand in both
/// headers as it is: a token, a host name, or `host:port`.
///
/// In `Proxy-Status` a name that is a Structured Field token is written bare and any other (one
/// that starts with a digit, such as an address) as a quoted string.
///
/// ```
/// use gateway_errors::ProxyName;
///
/// let name = ProxyName::new("edge-1").unwrap();
/// assert_eq!(name.as_str(), "edge-1");
/// assert_eq!(ProxyName::from_static("127.0.0.1:8080").as_str(), "127.0.0.1:8080");
/// assert!(ProxyName::new("edge 1").is_err());
/// assert!(ProxyName::new("édge").is_err());
/// assert!(ProxyName::new("").is_err());
/// assert_eq!(ProxyName::default().as_str(), "gateway");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyName {
    name: Box<str>,
}

/// The name of a gateway that was not given one.
pub(crate) const DEFAULT_NAME: &str = "gateway";

/// The longest proxy name, in bytes.
const MAX_NAME_LEN: usize = 256;

impl ProxyName {
    /// Checks `name`: 1 to 256 characters, each a token character or `:`.
    pub fn new(name: &str) -> Result<Self, InvalidProxyName> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.bytes().all(|b| super::is_tchar(b) || b == b':');
        if !valid {
            return Err(InvalidProxyName(()));
        }
        Ok(ProxyName { name: name.into() })
    }

    /// A name known when the program is written, such as a literal.
    ///
    /// # Panics
    ///
    /// If `name` is not valid (see [`ProxyName::new`]), as `http::HeaderValue::from_static` does
    /// for a literal that is no header value. Check a name from configuration with
    /// [`ProxyName::new`], which returns an error instead.
    pub fn from_static(name: &'static str) -> Self {
        match ProxyName::new(name) {
            Ok(name) => name,
            Err(_) => {
                panic!("invalid proxy name: a proxy name is 1 to 256 token characters or ':'")
            }
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The name as a `Proxy-Status` member: a Structured Field token, or else a string.
    fn member(&self) -> String {
        let mut bytes = self.name.bytes();
        let token = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*');
        if token {
            return self.name.to_string();
        }
        // Token characters and `:` hold no `"` or `\`: nothing to escape.
        format!("\"{}\"", self.name)
    }
}

impl Default for ProxyName {
    /// `gateway`: set the name of your deployment instead.
    fn default() -> Self {
        ProxyName::from_static(DEFAULT_NAME)
    }
}

impl fmt::Debug for ProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.name, f)
    }
}

impl fmt::Display for ProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl std::str::FromStr for ProxyName {
    type Err = InvalidProxyName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyName::new(s)
    }
}

impl TryFrom<&str> for ProxyName {
    type Error = InvalidProxyName;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ProxyName::new(s)
    }
}

/// The error for a name that cannot be a proxy name: empty, longer than 256 bytes, or with a
/// character that is neither a token character nor `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidProxyName(());

impl fmt::Display for InvalidProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a proxy name must be 1 to 256 token characters (letters, digits, !#$%&'*+-.^_`|~) or ':'")
    }
}

impl StdError for InvalidProxyName {}

/// This gateway's `Proxy-Status` members, made once per configuration: one per error kind, and
/// one without an error type. Cloning a value is a reference-count bump.
pub(crate) struct ProxyStatusValues {
    by_kind: [HeaderValue; KIND_SLOTS],
}

impl ProxyStatusValues {
    pub(crate) fn new(name: &ProxyName) -> Self {
        let member = name.member();
        let by_kind = std::array::from_fn(|slot| match ProxyErrorKind::ALL.get(slot) {
            Some(kind) => shared_value(format!("{member}; error={}", kind.token())),
            None => shared_value(member.clone()),
        });
        ProxyStatusValues { by_kind }
    }

    /// `<name>; error=<kind>`, or `<name>` alone for an unrecognised error.
    pub(crate) fn get(&self, kind: Option<ProxyErrorKind>) -> HeaderValue {
        self.by_kind[kind_slot(kind)].clone()
    }

    /// `<name>; received-status=<code>`, for an origin error whose body was replaced.
    pub(crate) fn received(&self, received: StatusCode) -> HeaderValue {
        let member = self.get(None);
        let mut value = Vec::with_capacity(member.len() + 24);
        value.extend_from_slice(member.as_bytes());
        value.extend_from_slice(b"; received-status=");
        value.extend_from_slice(received.as_str().as_bytes());
        HeaderValue::from_bytes(&value).unwrap_or(member)
    }
}

fn shared_value(s: String) -> HeaderValue {
    // Built from a checked name and registry tokens: always a valid header value.
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

/// `member; alert-id=<n>; alert-message="<name>"` (RFC 9209 §2.3.15): the TLS alert the upstream
/// sent, by its number and, for a registered one, its name in the TLS Alerts registry. Neither
/// names anything of the deployment.
pub(crate) fn with_tls_alert(member: HeaderValue, alert: u8) -> HeaderValue {
    let mut value = Vec::with_capacity(member.len() + 64);
    value.extend_from_slice(member.as_bytes());
    value.extend_from_slice(b"; alert-id=");
    value.extend_from_slice(itoa::Buffer::new().format(alert).as_bytes());
    if let Some(name) = tls_alert_name(alert) {
        value.extend_from_slice(b"; alert-message=\"");
        value.extend_from_slice(name.as_bytes());
        value.push(b'"');
    }
    // A header value, a number and a registry name (lowercase letters and `_`): still one.
    HeaderValue::from_bytes(&value).unwrap_or(member)
}

/// The description of a TLS alert in the IANA TLS Alerts registry, for the numbers a TLS 1.2 or
/// 1.3 peer may send (the reserved ones of older versions included, as a peer may still send them).
fn tls_alert_name(alert: u8) -> Option<&'static str> {
    Some(match alert {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        52 => "too_many_cids_requested",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => return None,
    })
}

/// The longest `details` parameter value written, quotes and escapes included.
pub(crate) const MAX_DETAILS_LEN: usize = 256;

/// `member; details="..."` (RFC 9209 §2.1.5): the messages of `chain` (an error and its sources,
/// already bounded by the caller) joined with `: ` as a Structured Field string. Printable ASCII
/// passes, `"` and `\` are escaped, any other character becomes `?`; the value is at most
/// [`MAX_DETAILS_LEN`] bytes, cut with `...` when longer. Only sent when the operator opts in: a
/// chain may name internal hosts.
pub(crate) fn with_details<'a>(
    member: HeaderValue,
    chain: impl Iterator<Item = &'a (dyn StdError + 'static)>,
) -> HeaderValue {
    let details = details_param(chain);
    let mut value = Vec::with_capacity(member.len() + 10 + details.len());
    value.extend_from_slice(member.as_bytes());
    value.extend_from_slice(b"; details=");
    value.extend_from_slice(details.as_bytes());
    // The member is a header value and the details printable ASCII: the join is one too.
    HeaderValue::from_bytes(&value).unwrap_or(member)
}

fn details_param<'a>(chain: impl Iterator<Item = &'a (dyn StdError + 'static)>) -> String {
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
    for (level, error) in chain.enumerate() {
        let written = if level == 0 {
            write!(sanitized, "{error}")
        } else {
            write!(sanitized, ": {error}")
        };
        if written.is_err() {
            break;
        }
    }
    if sanitized.cut {
        sanitized.out.push_str("...");
    }
    sanitized.out.push('"');
    sanitized.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_name_each_kind_and_quote_what_is_no_token() {
        let values = ProxyStatusValues::new(&ProxyName::from_static("edge-1"));
        assert_eq!(
            values.get(Some(ProxyErrorKind::ConnectionRefused)),
            "edge-1; error=connection_refused"
        );
        assert_eq!(values.get(None), "edge-1");
        assert_eq!(
            values.received(StatusCode::SERVICE_UNAVAILABLE),
            "edge-1; received-status=503"
        );
        let address = ProxyStatusValues::new(&ProxyName::from_static("127.0.0.1:8080"));
        assert_eq!(address.get(None), "\"127.0.0.1:8080\"");
    }

    #[test]
    fn names_are_tokens_or_host_and_port() {
        for good in [
            "edge-1",
            "gw.example.net",
            "127.0.0.1:8080",
            "a",
            "*x",
            "~!#$%&'*+-.^_`|",
        ] {
            assert!(ProxyName::new(good).is_ok(), "{good:?}");
        }
        let long = "a".repeat(257);
        for bad in [
            "",
            "edge 1",
            "a\"b",
            "a\\b",
            "a/b",
            "[::1]",
            "tab\tname",
            "é",
            &long,
        ] {
            assert!(ProxyName::new(bad).is_err(), "{bad:?}");
        }
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
    fn a_tls_alert_is_named_by_number_and_registered_name() {
        let member = HeaderValue::from_static("edge-1; error=tls_alert_received");
        assert_eq!(
            with_tls_alert(member.clone(), 116),
            r#"edge-1; error=tls_alert_received; alert-id=116; alert-message="certificate_required""#
        );
        assert_eq!(
            with_tls_alert(member.clone(), 40),
            r#"edge-1; error=tls_alert_received; alert-id=40; alert-message="handshake_failure""#
        );
        // Unassigned: the number alone.
        assert_eq!(
            with_tls_alert(member, 200),
            "edge-1; error=tls_alert_received; alert-id=200"
        );
        for alert in 0..=u8::MAX {
            if let Some(name) = tls_alert_name(alert) {
                assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            }
        }
    }

    fn details_of(error: &(dyn StdError + 'static)) -> String {
        details_param(std::iter::successors(Some(error), |&e| e.source()))
    }

    #[test]
    fn details_are_a_bounded_sf_string() {
        let error = std::io::Error::other("host \"db\" \\ caf\u{e9}\r\nx");
        assert_eq!(details_of(&error), r#""host \"db\" \\ caf???x""#);
        let long = std::io::Error::other("a".repeat(1000));
        let details = details_of(&long);
        assert_eq!(details.len(), MAX_DETAILS_LEN);
        assert!(details.ends_with("...\""), "{details}");
        let escapes = std::io::Error::other("\"".repeat(1000));
        let details = details_of(&escapes);
        assert!(details.len() <= MAX_DETAILS_LEN, "{}", details.len());
        assert!(details.ends_with("\\\"...\""), "{details}");
        let member = with_details(
            HeaderValue::from_static("edge-1"),
            [&error as _].into_iter(),
        );
        assert_eq!(member, r#"edge-1; details="host \"db\" \\ caf???x""#);
    }
}
