//! Rendered error responses, kept per configuration.
//!
//! When an upstream dies, every request becomes the same error at once. Most of those responses
//! are identical: same kind, same format, same retry hint, and no request id. The first one is
//! rendered and kept, body and head; the rest share its body's bytes and clone its header map. A
//! response that shows a request id, a date-based `Retry-After`, a status a classifier changed, a
//! rewritten origin response, or the output of a custom renderer is built every time.

use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderMap;

use crate::kind::ProxyErrorKind;
use crate::negotiate::Format;

/// Slots: formats × (kinds + unrecognised) × retryable.
const KIND_SLOTS: usize = ProxyErrorKind::ALL.len() + 1;
const SLOTS: usize = Format::ALL.len() * KIND_SLOTS * 2;

/// A generated error's body and head, identical for every request of its slot.
pub(crate) struct CachedResponse {
    pub(crate) body: Bytes,
    pub(crate) headers: HeaderMap,
}

pub(crate) struct ResponseCache {
    slots: Box<[OnceLock<CachedResponse>]>,
}

impl ResponseCache {
    fn slot(format: Format, kind: Option<ProxyErrorKind>, retryable: bool) -> usize {
        let kind = kind.map_or(KIND_SLOTS - 1, ProxyErrorKind::index);
        (format.index() * KIND_SLOTS + kind) * 2 + usize::from(retryable)
    }

    pub(crate) fn get_or_render(
        &self,
        format: Format,
        kind: Option<ProxyErrorKind>,
        retryable: bool,
        render: impl FnOnce() -> CachedResponse,
    ) -> &CachedResponse {
        self.slots[Self::slot(format, kind, retryable)].get_or_init(render)
    }
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// A configuration that changes starts with an empty cache: a clone never carries bodies rendered
/// from the templates it had before.
impl Clone for ResponseCache {
    fn clone(&self) -> Self {
        ResponseCache::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for format in Format::ALL {
            for kind in ProxyErrorKind::ALL.iter().copied().map(Some).chain([None]) {
                for retryable in [false, true] {
                    let slot = ResponseCache::slot(format, kind, retryable);
                    assert!(slot < SLOTS);
                    assert!(seen.insert(slot));
                }
            }
        }
        assert_eq!(seen.len(), SLOTS);
    }

    #[test]
    fn a_clone_starts_empty() {
        let response = |body: &'static str| {
            move || CachedResponse {
                body: Bytes::from_static(body.as_bytes()),
                headers: HeaderMap::new(),
            }
        };
        let cache = ResponseCache::default();
        let first = cache.get_or_render(Format::Text, None, false, response("a"));
        assert_eq!(first.body, "a");
        let again = cache.get_or_render(Format::Text, None, false, response("b"));
        assert_eq!(again.body, "a");
        let cloned = cache.clone();
        let fresh = cloned.get_or_render(Format::Text, None, false, response("c"));
        assert_eq!(fresh.body, "c");
    }
}
