//! Generated answers, kept per configuration.
//!
//! When an upstream dies, every request becomes the same error at once. Most of those answers are
//! identical: same form (a negotiated format, or a gRPC framing), same kind, same retry hint, and
//! no request id. The first one is built and kept, body and head; the rest share its body's bytes
//! and clone its header map. An answer that shows a request id, a date-based `Retry-After`, a
//! status a classifier changed, a rewritten origin response, or the output of a custom renderer
//! is built every time.
//!
//! An error that states its own delay (an upstream marked unavailable: the seconds until its next
//! probe) changes its answer once a second, not per request: those answers are kept per whole
//! second too, up to [`MAX_KEPT_DELAY`].
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

/// The longest delay, in whole seconds, of an error's own `Retry-After` whose answers are kept:
/// an unavailable upstream's longest default open time.
pub(crate) const MAX_KEPT_DELAY: u64 = 300;

/// Answers in numbered slots: forms × (kinds + unrecognised) × retryable, each built once, on
/// first use; and per slot, the answers of each whole-second delay an error stated itself.
pub(crate) struct AnswerCache {
    forms: usize,
    slots: Box<[OnceLock<Answer>]>,
    /// Made for a slot the first time one of its errors states its own delay.
    delayed: Box<[OnceLock<ByDelay>]>,
}

/// A slot's answers by the delay its errors stated, one per whole second up to
/// [`MAX_KEPT_DELAY`].
type ByDelay = Box<[OnceLock<Answer>]>;

impl AnswerCache {
    /// An empty cache for answers in `forms` forms.
    pub(crate) fn new(forms: usize) -> Self {
        AnswerCache {
            forms,
            slots: (0..forms * KIND_SLOTS * 2)
                .map(|_| OnceLock::new())
                .collect(),
            delayed: (0..forms * KIND_SLOTS * 2)
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

    /// The answer of this slot for an error that states its own delay of `seconds` (1 to
    /// [`MAX_KEPT_DELAY`]), built by `build` the first time.
    pub(crate) fn get_or_build_delayed(
        &self,
        form: usize,
        kind: Option<ProxyErrorKind>,
        retryable: bool,
        seconds: u64,
        build: impl FnOnce() -> Answer,
    ) -> &Answer {
        debug_assert!((1..=MAX_KEPT_DELAY).contains(&seconds));
        let by_delay = self.delayed[self.slot(form, kind, retryable)]
            .get_or_init(|| (0..MAX_KEPT_DELAY).map(|_| OnceLock::new()).collect());
        by_delay[(seconds - 1) as usize].get_or_init(build)
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

    #[test]
    fn an_answer_with_its_own_delay_is_kept_per_second() {
        let answer = |body: &'static str| {
            move || Answer {
                body: Bytes::from_static(body.as_bytes()),
                headers: HeaderMap::new(),
            }
        };
        let cache = AnswerCache::new(1);
        let kind = Some(ProxyErrorKind::DestinationUnavailable);
        assert_eq!(
            cache
                .get_or_build_delayed(0, kind, true, 7, answer("7"))
                .body,
            "7"
        );
        assert_eq!(
            cache
                .get_or_build_delayed(0, kind, true, 7, answer("x"))
                .body,
            "7"
        );
        assert_eq!(
            cache
                .get_or_build_delayed(0, kind, true, 6, answer("6"))
                .body,
            "6"
        );
        let last = cache.get_or_build_delayed(0, kind, true, MAX_KEPT_DELAY, answer("max"));
        assert_eq!(last.body, "max");
        // The plain slot is apart from its delays.
        assert_eq!(
            cache.get_or_build(0, kind, true, answer("plain")).body,
            "plain"
        );
    }
}
