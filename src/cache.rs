//! Rendered bodies, kept per configuration.
//!
//! When an upstream dies, every request becomes the same error at once. Most of those bodies are
//! identical: same kind, same format, same retry hint, and no request id. The first one is rendered
//! and kept, with its `Content-Length` value; the rest share its bytes. A body that shows a request
//! id, a date-based `Retry-After`, a status a classifier changed, or the output of a custom
//! renderer is rendered every time.

use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderValue;

use crate::kind::ProxyErrorKind;
use crate::negotiate::Format;

/// Slots: formats × (kinds + unrecognised) × retryable.
const KIND_SLOTS: usize = ProxyErrorKind::ALL.len() + 1;
const SLOTS: usize = Format::ALL.len() * KIND_SLOTS * 2;

#[derive(Clone)]
pub(crate) struct CachedBody {
    pub(crate) body: Bytes,
    pub(crate) content_length: HeaderValue,
}

impl CachedBody {
    pub(crate) fn new(body: Bytes) -> Self {
        CachedBody {
            content_length: HeaderValue::from(body.len()),
            body,
        }
    }
}

pub(crate) struct BodyCache {
    slots: Box<[OnceLock<CachedBody>]>,
}

impl BodyCache {
    fn slot(format: Format, kind: Option<ProxyErrorKind>, retryable: bool) -> usize {
        let kind = kind.map_or(KIND_SLOTS - 1, ProxyErrorKind::index);
        (format.index() * KIND_SLOTS + kind) * 2 + usize::from(retryable)
    }

    pub(crate) fn get_or_render(
        &self,
        format: Format,
        kind: Option<ProxyErrorKind>,
        retryable: bool,
        render: impl FnOnce() -> Bytes,
    ) -> CachedBody {
        self.slots[Self::slot(format, kind, retryable)]
            .get_or_init(|| CachedBody::new(render()))
            .clone()
    }
}

impl Default for BodyCache {
    fn default() -> Self {
        BodyCache {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// A configuration that changes starts with an empty cache: a clone never carries bodies rendered
/// from the templates it had before.
impl Clone for BodyCache {
    fn clone(&self) -> Self {
        BodyCache::default()
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
                    let slot = BodyCache::slot(format, kind, retryable);
                    assert!(slot < SLOTS);
                    assert!(seen.insert(slot));
                }
            }
        }
        assert_eq!(seen.len(), SLOTS);
    }

    #[test]
    fn a_clone_starts_empty() {
        let cache = BodyCache::default();
        let first = cache.get_or_render(Format::Text, None, false, || Bytes::from_static(b"a"));
        assert_eq!(first.body, "a");
        let again = cache.get_or_render(Format::Text, None, false, || Bytes::from_static(b"b"));
        assert_eq!(again.body, "a");
        let cloned = cache.clone();
        let fresh = cloned.get_or_render(Format::Text, None, false, || Bytes::from_static(b"c"));
        assert_eq!(fresh.body, "c");
        assert_eq!(fresh.content_length, "1");
    }
}
