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

/// Responses in numbered slots, each built once, on first use. A clone starts empty: a changed
/// configuration never carries responses built from what it had before.
pub(crate) struct Slots {
    slots: Box<[OnceLock<CachedResponse>]>,
}

impl Slots {
    pub(crate) fn new(len: usize) -> Self {
        Slots {
            slots: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    pub(crate) fn get_or_init(
        &self,
        slot: usize,
        build: impl FnOnce() -> CachedResponse,
    ) -> &CachedResponse {
        self.slots[slot].get_or_init(build)
    }
}

impl Clone for Slots {
    fn clone(&self) -> Self {
        Slots::new(self.slots.len())
    }
}

#[derive(Clone)]
pub(crate) struct ResponseCache {
    slots: Slots,
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
        self.slots
            .get_or_init(Self::slot(format, kind, retryable), render)
    }
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache {
            slots: Slots::new(SLOTS),
        }
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
