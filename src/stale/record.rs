//! The copy being recorded: what the store reads of a request when it arrives, and what it does
//! with the origin's response head (a write drops copies; a response it admits gets its body
//! copied as it passes).

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Request, StatusCode};

use super::Store;
use super::admission::Admission;
use super::request::{Access, CapturedRequest};
use super::tee::Tee;

impl Store {
    /// What the store needs of `request`, read when it arrives; `None` when it has no use for it.
    pub(crate) fn capture<B>(&self, request: &Request<B>) -> Option<CapturedRequest> {
        let mut captured = CapturedRequest::capture(&self.store.policy, request)?;
        // Only a GET's response is stored: only a GET needs to know of a write after it.
        if captured.access == (Access::Read { head: false }) {
            captured.epoch = self.store.epoch(&captured.key());
        }
        Some(captured)
    }

    /// An origin's response head arrived for `request`. A successful write drops the copies of
    /// its URI; a response that may be stored gets the copy of its body to carry, or is stored
    /// at once when it has no body to send (`no_body`).
    pub(crate) fn on_response(
        &self,
        request: &CapturedRequest,
        status: StatusCode,
        headers: &HeaderMap,
        no_body: bool,
    ) -> Option<Box<Tee>> {
        if request.access == Access::Write {
            if status.as_u16() < 400 {
                self.store.invalidate(&request.key());
            }
            return None;
        }
        let admission = Admission::decide(&self.store.policy, request, status, headers).ok()?;
        // A write has outdated the page since the request arrived: no copy is made of it (the
        // insert would refuse it anyway, and checks again under its lock).
        if self.store.epoch(&request.key()) != request.epoch {
            return None;
        }
        if no_body {
            if let Some(copy) = admission.complete(Bytes::new()) {
                self.store.insert(copy);
            }
            return None;
        }
        Tee::new(self.store.clone(), admission)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_read_that_began_before_a_successful_write_does_not_store_its_response() {
        let store = Store::new().default_window(Duration::from_secs(60));
        let request = |method: http::Method| {
            let request = Request::builder()
                .method(method)
                .uri("/doc")
                .header("host", "site.example")
                .body(())
                .unwrap();
            store.capture(&request).unwrap()
        };
        let empty = HeaderMap::new();
        let before = request(http::Method::GET);
        let failed = request(http::Method::PUT);
        assert!(
            store
                .on_response(&failed, StatusCode::CONFLICT, &empty, true)
                .is_none()
        );
        let written = request(http::Method::PUT);
        assert!(
            store
                .on_response(&written, StatusCode::NO_CONTENT, &empty, true)
                .is_none()
        );
        // The read ends after the write: its page is the one from before it.
        assert!(
            store
                .on_response(&before, StatusCode::OK, &empty, false)
                .is_none()
        );
        store.on_response(&before, StatusCode::OK, &empty, true);
        assert_eq!(store.len(), 0);
        // A read after the write is stored, however many failed writes came between.
        let after = request(http::Method::GET);
        let failed = request(http::Method::POST);
        assert!(
            store
                .on_response(&failed, StatusCode::BAD_REQUEST, &empty, true)
                .is_none()
        );
        store.on_response(&after, StatusCode::OK, &empty, true);
        assert_eq!(store.len(), 1);
    }
}
