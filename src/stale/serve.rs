//! A copy being served: whether one may stand in for an error, and the answer made of it (its
//! head with `Age`, `Cache-Status` and `Proxy-Status`, and what the response carries in its
//! extensions).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderMap;

use super::Store;
use super::copy::{StoredCopy, Verdict};
use super::policy::Policy;
use super::request::{Access, CapturedRequest};
use crate::error::ProxyError;
use crate::kind::ProxyErrorKind;

impl Store {
    /// Whether a copy may stand in for an error of this status and kind: a 500, 502, 503 or 504,
    /// but never a forwarding loop, which is this gateway's own configuration (a copy would hide
    /// it for as long as the copy lasts).
    pub(crate) fn may_hide(status: StatusCode, kind: Option<ProxyErrorKind>) -> bool {
        Policy::is_error(status) && kind != Some(ProxyErrorKind::ProxyLoopDetected)
    }

    /// Whether the operator lets any copy answer in place of this origin status
    /// ([`failure_statuses`](Self::failure_statuses)).
    pub(crate) fn answers_origin_status(&self, status: StatusCode) -> bool {
        self.store.policy.answers_origin_status(status)
    }

    /// The copy that may answer `request` now, in place of the error `hides`, if any.
    pub(crate) fn answer(&self, request: &CapturedRequest, hides: Hides) -> Option<Answer> {
        if !matches!(request.access, Access::Read { .. }) || request.directives.no_cache {
            return None;
        }
        let copy = self.store.find(&request.key(), &request.vary)?;
        if let Hides::OriginError(status) = hides {
            // The origin asked for its copies in place of its own errors when it sent
            // `stale-if-error` (RFC 5861 §4); under the operator's window only, the operator
            // decides which.
            if !Policy::is_error(status)
                || !(copy.origin_window || self.answers_origin_status(status))
            {
                return None;
            }
        }
        let now = tokio::time::Instant::now();
        match copy.verdict(now, request.directives.stale_if_error()) {
            Verdict::Answers { age, ttl } => Some(Answer {
                copy,
                age,
                ttl,
                head: request.access == Access::Read { head: true },
            }),
            Verdict::TooStaleForRequest => None,
            Verdict::Expired => {
                self.store.remove(&copy);
                None
            }
        }
    }
}

/// The error a copy would stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hides {
    /// An error the layer answers itself: the origin could not be reached or did not answer in
    /// time, a breaker refused, or the layer intercepts the origin's error. Any copy within its
    /// window may answer.
    LayerError,
    /// An origin's own error, which otherwise passes through: a copy may answer when its origin
    /// sent `stale-if-error`, or when the operator named the status.
    OriginError(StatusCode),
}

/// A copy about to answer, with its age and remaining freshness in whole seconds.
pub(crate) struct Answer {
    copy: Arc<StoredCopy>,
    pub(crate) age: u64,
    ttl: i64,
    head: bool,
}

impl Answer {
    /// The copy's own stored fields; the head the client gets is made from them by the one
    /// place that writes answers' heads.
    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.copy.headers
    }

    /// The copy's remaining freshness in whole seconds (negative once stale).
    pub(crate) fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The copy's status and body (none for a HEAD).
    pub(crate) fn into_parts(self) -> (StatusCode, Bytes) {
        let body = if self.head {
            Bytes::new()
        } else {
            self.copy.body.clone()
        };
        (self.copy.status, body)
    }
}

/// What a response answered from a copy carries in its extensions: the copy's age as sent
/// in `Age`, and the error the copy hid.
///
/// ```
/// use gateway_errors::stale::StaleCopy;
/// # fn inspect(response: http::Response<()>) {
/// if let Some(stale_copy) = response.extensions().get::<StaleCopy>() {
///     println!("a copy {:?} old hid {:?}", stale_copy.age(), stale_copy.error().kind());
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StaleCopy {
    age: Duration,
    error: ProxyError,
}

impl StaleCopy {
    pub(crate) fn new(age: u64, error: ProxyError) -> Self {
        StaleCopy {
            age: Duration::from_secs(age),
            error,
        }
    }

    /// The copy's age, as sent in `Age`.
    pub fn age(&self) -> Duration {
        self.age
    }

    /// The failure the copy stands in for: its kind, status, phase and source, as the layer would
    /// have answered it. (The retry hint is not worked out for it: the client got an answer.)
    pub fn error(&self) -> &ProxyError {
        &self.error
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Request;
    use http::header::{self, HeaderValue};

    use super::*;

    #[tokio::test]
    async fn an_origin_error_is_answered_by_a_copy_its_origin_asked_for_or_the_operator_allows() {
        let get = || {
            Request::get("/page")
                .header("host", "site.example")
                .body(())
                .unwrap()
        };
        let answers = |store: &Store, cache_control: &'static str, hides: Hides| {
            store.clear();
            let request = store.capture(&get()).unwrap();
            let mut head = HeaderMap::new();
            head.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            );
            assert!(
                store
                    .on_response(&request, StatusCode::OK, &head, true)
                    .is_none()
            );
            assert_eq!(store.len(), 1);
            store.answer(&request, hides).is_some()
        };
        let origin = |code: u16| Hides::OriginError(StatusCode::from_u16(code).unwrap());
        let asked = "max-age=60, stale-if-error=60";
        let unasked = "max-age=60";

        let store = Store::new().default_window(Duration::from_secs(60));
        for code in [500, 502, 503, 504] {
            assert!(answers(&store, asked, origin(code)), "{code}");
            assert!(!answers(&store, unasked, origin(code)), "{code}");
        }
        assert!(!answers(&store, asked, origin(501)));
        // The layer's own errors: either copy.
        assert!(answers(&store, asked, Hides::LayerError));
        assert!(answers(&store, unasked, Hides::LayerError));

        // The operator's statuses: any copy.
        let opted = store.failure_statuses([StatusCode::SERVICE_UNAVAILABLE]);
        assert!(answers(&opted, unasked, origin(503)));
        assert!(!answers(&opted, unasked, origin(502)));
    }
}
