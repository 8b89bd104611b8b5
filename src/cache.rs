//! Generated answers, kept per configuration.
//!
//! When an upstream dies, every request becomes the same error at once. Most of those answers are
//! identical: same form (a negotiated format, or a gRPC framing), same kind, same retry hint, and
//! no request id. The first one is built and kept, body and head; the rest share its body's bytes
//! and clone its header map. An answer that shows a request id, a date-based `Retry-After`, a
//! status a classifier changed, a rewritten origin response, or the output of a custom renderer
//! is built every time.
//!
//! The cache belongs to one frozen configuration: a layer that is configured again gets a new,
//! empty one, so an answer built from old settings is never served.

use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderMap;

use crate::kind::{KIND_SLOTS, ProxyErrorKind, kind_slot};

/// A generated error's body and head, identical for every request of its slot.
pub(crate) struct Answer {
    pub(crate) body: Bytes,
    pub(crate) headers: HeaderMap,
}

/// Answers in numbered slots: forms × (kinds + unrecognised) × retryable, each built once, on
/// first use.
pub(crate) struct AnswerCache {
    forms: usize,
    slots: Box<[OnceLock<Answer>]>,
}

impl AnswerCache {
    /// An empty cache for answers in `forms` forms.
    pub(crate) fn new(forms: usize) -> Self {
        AnswerCache {
            forms,
            slots: (0..forms * KIND_SLOTS * 2)
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    fn slot(&self, form: usize, kind: Option<ProxyErrorKind>, retryable: bool) -> usize {
        debug_assert!(form < self.forms);
        (form * KIND_SLOTS + kind_slot(kind)) * 2 + usize::from(retryable)
    }

    /// The answer of this slot, built by `build` the first time.
    pub(crate) fn get_or_build(
        &self,
        form: usize,
        kind: Option<ProxyErrorKind>,
        retryable: bool,
        build: impl FnOnce() -> Answer,
    ) -> &Answer {
        self.slots[self.slot(form, kind, retryable)].get_or_init(build)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_in_range() {
        let cache = AnswerCache::new(6);
        let mut seen = std::collections::HashSet::new();
        for form in 0..6 {
            for kind in ProxyErrorKind::ALL.iter().copied().map(Some).chain([None]) {
                for retryable in [false, true] {
                    let slot = cache.slot(form, kind, retryable);
                    assert!(slot < cache.slots.len());
                    assert!(seen.insert(slot));
                }
            }
        }
        assert_eq!(seen.len(), cache.slots.len());
    }

    #[test]
    fn an_answer_is_built_once() {
        let answer = |body: &'static str| {
            move || Answer {
                body: Bytes::from_static(body.as_bytes()),
                headers: HeaderMap::new(),
            }
        };
        let cache = AnswerCache::new(1);
        let first = cache.get_or_build(0, None, false, answer("a"));
        assert_eq!(first.body, "a");
        let again = cache.get_or_build(0, None, false, answer("b"));
        assert_eq!(again.body, "a");
        let other = cache.get_or_build(0, None, true, answer("c"));
        assert_eq!(other.body, "c");
    }
}
