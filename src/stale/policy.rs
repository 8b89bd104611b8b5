//! What the operator decided: the store's bounds, the default window, the request headers a
//! variant may depend on, and the origin statuses a copy may answer.

use std::hash::RandomState;
use std::time::Duration;

use http::{HeaderName, StatusCode, header};

/// The most request headers a response's `Vary` may name and still be stored.
pub(crate) const MAX_VARY_HEADERS: usize = 6;

/// The most variants kept for one key; a new one replaces the least recently used.
pub(crate) const MAX_VARIANTS_PER_KEY: usize = 8;

#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The store's budget: bodies, heads and keys together.
    pub(crate) max_bytes: usize,
    /// The largest body kept; a longer one streams on and is not stored.
    pub(crate) max_response_bytes: usize,
    /// The most copies (every variant counts) the store holds.
    pub(crate) max_entries: usize,
    /// The operator's window (RFC 9111 §4.2.4's out-of-band contract), for a response that
    /// gives no `stale-if-error` of its own. `None`: only the origin's own windows apply.
    pub(crate) default_window: Option<Duration>,
    /// The request headers a stored variant may depend on (`Vary`), at most
    /// [`MAX_VARY_HEADERS`].
    pub(crate) vary_headers: Vec<HeaderName>,
    /// Origin statuses a copy may answer instead of passing them through.
    pub(crate) origin_statuses: Vec<StatusCode>,
    /// Store a response that sets cookies, without its `Set-Cookie` fields.
    pub(crate) strip_set_cookie: bool,
    /// Hashes the values of the `vary_headers` a request sent, with keys of its own.
    pub(crate) vary_hasher: RandomState,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_bytes: 64 * 1024 * 1024,
            max_response_bytes: 1024 * 1024,
            max_entries: 10_000,
            default_window: None,
            vary_headers: vec![
                header::ACCEPT_ENCODING,
                header::ACCEPT,
                header::ACCEPT_LANGUAGE,
                header::ORIGIN,
            ],
            origin_statuses: Vec::new(),
            strip_set_cookie: false,
            vary_hasher: RandomState::new(),
        }
    }
}

impl Policy {
    /// The statuses whose responses are kept: those RFC 9110 §15.1 makes heuristically
    /// cacheable, less 206 (a part of a body), and less 405, 414 and 501 (errors: a copy of one
    /// hides nothing).
    pub(crate) fn stores_status(status: StatusCode) -> bool {
        matches!(
            status.as_u16(),
            200 | 203 | 204 | 300 | 301 | 308 | 404 | 410
        )
    }

    /// Whether a copy may stand in for a response with this status: RFC 5861 §4's errors, 500,
    /// 502, 503 and 504.
    pub(crate) fn is_error(status: StatusCode) -> bool {
        matches!(status.as_u16(), 500 | 502 | 503 | 504)
    }

    /// Whether a copy may answer in place of this origin status.
    pub(crate) fn answers_origin_status(&self, status: StatusCode) -> bool {
        self.origin_statuses.contains(&status)
    }

    /// The index of `name` among the headers variants may depend on, compared without case.
    pub(crate) fn vary_index(&self, name: &[u8]) -> Option<usize> {
        self.vary_headers
            .iter()
            .position(|known| known.as_str().as_bytes().eq_ignore_ascii_case(name))
    }
}
