//! The retry hint of a generated error: the rule, the idempotent methods, the configured
//! `Retry-After`, and the request's `Idempotency-Key`.

use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode};

use super::RetryFacts;
use super::after::RetryAfter;
use crate::headers::sf::{BareItemType, item_type};
use crate::kind::ProxyErrorKind;

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

    #[inline]
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

/// A request's `Idempotency-Key` field, kept as it arrived (a shared reference to its bytes, not a
/// copy) until an error needs to know whether it is valid: a successful request never parses it.
#[derive(Debug, Clone, Default)]
pub(crate) enum IdempotencyKey {
    #[default]
    Absent,
    One(HeaderValue),
    /// More than one field line: never one valid Item.
    Several,
}

impl IdempotencyKey {
    #[cfg(test)]
    fn capture(headers: &http::HeaderMap) -> Self {
        let mut lines = headers.get_all(&super::IDEMPOTENCY_KEY).iter();
        match (lines.next(), lines.next()) {
            (None, _) => IdempotencyKey::Absent,
            (Some(line), None) => IdempotencyKey::One(line.clone()),
            (Some(_), Some(_)) => IdempotencyKey::Several,
        }
    }

    /// Whether the request carries exactly one valid key: a Structured Field Item (RFC 9651)
    /// whose value is a non-empty String, with any valid parameters. Parsed strictly: a value
    /// that is anything else, or more than one Item (several field lines are joined with commas),
    /// is no key, and the request is not taken for one that may be repeated.
    pub(crate) fn is_valid(&self) -> bool {
        match self {
            IdempotencyKey::One(value) => is_idempotency_key(value.as_bytes()),
            IdempotencyKey::Absent | IdempotencyKey::Several => false,
        }
    }
}

/// Whether `value` is a valid `Idempotency-Key` field value (see [`IdempotencyKey::is_valid`]).
/// An empty key identifies nothing, so it does not count.
pub(crate) fn is_idempotency_key(value: &[u8]) -> bool {
    matches!(item_type(value), Some(BareItemType::String { len }) if len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::IDEMPOTENCY_KEY;
    use http::HeaderMap;

    #[test]
    fn idempotency_keys_are_non_empty_sf_strings() {
        assert!(is_idempotency_key(
            br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#
        ));
        assert!(is_idempotency_key(br#" "a\"b" "#));
        // A parameter's string may hold a comma: still one valid key.
        assert!(is_idempotency_key(br#""k1";note="a, b""#));
        assert!(!is_idempotency_key(b"8e03978e"));
        assert!(!is_idempotency_key(br#""""#));
        assert!(!is_idempotency_key(br#""unterminated"#));
        assert!(!is_idempotency_key(br#""a\x""#));
        assert!(!is_idempotency_key(br#""a", "b""#));
        assert!(!is_idempotency_key(br#""a";"#));
        assert!(!is_idempotency_key(br#""a";Bad=1"#));
        assert!(!is_idempotency_key(b"\"caf\xc3\xa9\""));
    }

    #[test]
    fn several_lines_are_no_key() {
        let mut headers = HeaderMap::new();
        assert!(!IdempotencyKey::capture(&headers).is_valid());
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("\"a\""));
        assert!(IdempotencyKey::capture(&headers).is_valid());
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("\"b\""));
        assert!(!IdempotencyKey::capture(&headers).is_valid());
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
