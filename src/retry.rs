//! Retry hints: is sending the request again safe, and when.
//!
//! RFC 9110 §9.2.2: a proxy "MUST NOT automatically retry non-idempotent requests". What the layer
//! knows and no client can is whether the request ever left the gateway. The default rule:
//!
//! - a failure before the request was sent ([`Phase::NotSent`]) is safe to retry for every method;
//! - after it may have reached the origin, only an idempotent method (GET, HEAD, OPTIONS, TRACE,
//!   PUT, DELETE) or a request with a valid `Idempotency-Key` (a Structured Field string) is.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, StatusCode};

use crate::headers::RetryAfter;
use crate::kind::{Phase, ProxyErrorKind};

/// The `Idempotency-Key` header name (draft-ietf-httpapi-idempotency-key-header).
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// What the retry rule may look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryFacts {
    /// Whether the request may have reached the origin.
    pub phase: Phase,
    /// The kind of the failure, if recognised.
    pub kind: Option<ProxyErrorKind>,
    /// Whether the request's method is in the idempotent set.
    pub idempotent_method: bool,
    /// Whether the request carried a valid `Idempotency-Key`.
    pub idempotency_key: bool,
}

impl RetryFacts {
    /// The default rule: not sent, or an idempotent method, or an idempotency key.
    pub fn default_rule(&self) -> bool {
        self.phase == Phase::NotSent || self.idempotent_method || self.idempotency_key
    }
}

type Rule = Arc<dyn Fn(&RetryFacts) -> bool + Send + Sync>;

#[derive(Clone)]
pub(crate) struct RetryRules {
    /// Bit i set: `STANDARD_METHODS[i]` is idempotent.
    idempotent_standard: u16,
    idempotent_extension: Vec<Method>,
    rule: Option<Rule>,
    after_by_kind: Vec<(ProxyErrorKind, RetryAfter)>,
    after_by_status: Vec<(StatusCode, RetryAfter)>,
}

const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
    Method::POST,
    Method::PATCH,
    Method::CONNECT,
];

fn standard_bit(method: &Method) -> Option<u16> {
    STANDARD_METHODS
        .iter()
        .position(|m| m == method)
        .map(|i| 1 << i)
}

impl Default for RetryRules {
    fn default() -> Self {
        RetryRules {
            // GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
            idempotent_standard: 0b11_1111,
            idempotent_extension: Vec::new(),
            rule: None,
            after_by_kind: Vec::new(),
            after_by_status: Vec::new(),
        }
    }
}

impl RetryRules {
    pub(crate) fn set_idempotent_methods(&mut self, methods: impl IntoIterator<Item = Method>) {
        self.idempotent_standard = 0;
        self.idempotent_extension.clear();
        for method in methods {
            match standard_bit(&method) {
                Some(bit) => self.idempotent_standard |= bit,
                None => self.idempotent_extension.push(method),
            }
        }
    }

    pub(crate) fn set_rule(&mut self, rule: Rule) {
        self.rule = Some(rule);
    }

    pub(crate) fn set_after_for_kind(&mut self, kind: ProxyErrorKind, after: RetryAfter) {
        self.after_by_kind.retain(|(k, _)| *k != kind);
        self.after_by_kind.push((kind, after));
    }

    pub(crate) fn set_after_for_status(&mut self, status: StatusCode, after: RetryAfter) {
        self.after_by_status.retain(|(s, _)| *s != status);
        self.after_by_status.push((status, after));
    }

    pub(crate) fn is_idempotent(&self, method: &Method) -> bool {
        match standard_bit(method) {
            Some(bit) => self.idempotent_standard & bit != 0,
            None => self.idempotent_extension.contains(method),
        }
    }

    pub(crate) fn retryable(&self, facts: &RetryFacts) -> bool {
        match &self.rule {
            Some(rule) => rule(facts),
            None => facts.default_rule(),
        }
    }

    pub(crate) fn retry_after(
        &self,
        kind: Option<ProxyErrorKind>,
        status: StatusCode,
    ) -> Option<RetryAfter> {
        let by_kind = kind.and_then(|kind| self.after_by_kind.iter().find(|(k, _)| *k == kind));
        by_kind.map(|(_, after)| *after).or_else(|| {
            let by_status = self.after_by_status.iter().find(|(s, _)| *s == status);
            by_status.map(|(_, after)| *after)
        })
    }
}

/// Whether `headers` carry exactly one valid `Idempotency-Key`: a Structured Field string
/// (`"` printable ASCII with `\"` and `\\` escapes `"`), optionally with parameters.
pub(crate) fn has_idempotency_key(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => is_sf_string_item(value.as_bytes()),
        _ => false,
    }
}

/// An sf-string, optionally followed by parameters (`;key` or `;key=value`), with surrounding
/// spaces. Parameters are checked loosely: the key must be the string; what follows must not be
/// another list member.
pub(crate) fn is_sf_string_item(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    let Some(rest) = value.strip_prefix(b"\"") else {
        return false;
    };
    let mut escaped = false;
    let mut len = 0usize;
    for (i, &b) in rest.iter().enumerate() {
        if escaped {
            if b != b'"' && b != b'\\' {
                return false;
            }
            escaped = false;
            len += 1;
            continue;
        }
        match b {
            b'\\' => escaped = true,
            b'"' => {
                let after = &rest[i + 1..];
                // An empty key identifies nothing.
                return len > 0
                    && (after.is_empty() || after.first() == Some(&b';'))
                    && !after.contains(&b',');
            }
            0x20..=0x7e => len += 1,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_must_be_sf_strings() {
        assert!(is_sf_string_item(
            br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#
        ));
        assert!(is_sf_string_item(br#" "a\"b" "#));
        assert!(!is_sf_string_item(b"8e03978e"));
        assert!(!is_sf_string_item(br#""""#));
        assert!(!is_sf_string_item(br#""unterminated"#));
        assert!(!is_sf_string_item(br#""a\x""#));
        assert!(!is_sf_string_item(br#""a", "b""#));
        assert!(!is_sf_string_item(b"\"caf\xc3\xa9\""));
    }

    #[test]
    fn default_idempotent_methods() {
        let rules = RetryRules::default();
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(rules.is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!rules.is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }
}
