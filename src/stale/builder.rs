//! The store's public builder, and what it reports of itself: its bounds, its windows, the
//! request headers a variant may depend on, the origin statuses a copy may answer.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::HeaderName;

use super::Store;
use super::policy::{MAX_VARY_HEADERS, Policy};
use super::store::Shared;

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store: 64 MiB in all, 1 MiB per body, 10,000 copies, no default window (only
    /// responses with a `stale-if-error` of their own are stored), variants on
    /// `Accept-Encoding`, `Accept`, `Accept-Language` and `Origin`, no origin error answered.
    pub fn new() -> Self {
        Store::with_policy(Policy::default())
    }

    fn with_policy(policy: Policy) -> Self {
        Store {
            store: Arc::new(Shared::new(policy)),
        }
    }

    fn set(self, change: impl FnOnce(&mut Policy)) -> Self {
        let mut policy = self.store.policy.clone();
        change(&mut policy);
        Store::with_policy(policy)
    }

    /// The operator's window: how long past its freshness a copy of a response that names no
    /// `stale-if-error` of its own may answer. This is the "out-of-band contract" under which
    /// RFC 9111 §4.2.4 lets a cache serve stale. Off by default.
    ///
    /// An origin's own `stale-if-error=N` takes its place, shorter or longer; a response that
    /// forbids serving stale (`no-cache`, `must-revalidate`, `proxy-revalidate`, `s-maxage`) is
    /// never stored, whatever the window. Any duration is accepted: `Duration::MAX` keeps copies
    /// for as long as the budget holds them.
    ///
    /// A copy kept under this window alone answers the layer's own errors, not the origin's
    /// (see [`failure_statuses`](Self::failure_statuses)).
    pub fn default_window(self, window: Duration) -> Self {
        self.set(|p| p.default_window = Some(window))
    }

    /// The store's budget in bytes: bodies, heads and keys together (each copy also counts a
    /// fixed 256 bytes, and each header field 32), and the copies being made. Least recently
    /// used copies go first. Copies being made may hold at most half of it: a body longer than
    /// half this budget is never stored. Default 64 MiB.
    pub fn max_bytes(self, bytes: usize) -> Self {
        self.set(|p| p.max_bytes = bytes)
    }

    /// The largest body stored. A longer one streams to the client untouched and is not stored.
    /// Default 1 MiB.
    pub fn max_response_bytes(self, bytes: usize) -> Self {
        self.set(|p| p.max_response_bytes = bytes)
    }

    /// The most copies held, each variant counting as one. Default 10,000.
    pub fn max_entries(self, entries: usize) -> Self {
        self.set(|p| p.max_entries = entries)
    }

    /// The request headers a stored response may vary on (`Vary`), replacing the default
    /// `Accept-Encoding`, `Accept`, `Accept-Language` and `Origin`; at most 6.
    ///
    /// The layer hashes these request headers' values for every GET, so that a response that
    /// varies on them can be stored and found again. A response that varies on any other header
    /// is not stored.
    ///
    /// ```
    /// use gateway_errors::stale::Store;
    /// use http::header::{ACCEPT_ENCODING, HeaderName};
    ///
    /// let store = Store::new()
    ///     .vary_headers([ACCEPT_ENCODING, HeaderName::from_static("x-device")])
    ///     .unwrap();
    /// let too_many = Store::new().vary_headers(
    ///     (0..7).map(|i| HeaderName::try_from(format!("x-{i}")).unwrap()),
    /// );
    /// assert!(too_many.is_err());
    /// # let _ = store;
    /// ```
    pub fn vary_headers(
        self,
        names: impl IntoIterator<Item = HeaderName>,
    ) -> Result<Self, TooManyVaryHeaders> {
        let mut unique: Vec<HeaderName> = Vec::new();
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        if unique.len() > MAX_VARY_HEADERS {
            return Err(TooManyVaryHeaders(()));
        }
        Ok(self.set(|p| p.vary_headers = unique))
    }

    /// Origin statuses treated as the upstream failing: any copy answers in place of them, where
    /// one may (for a GET or HEAD, within the window); without a usable copy the origin's
    /// response passes through as before. Only
    /// RFC 5861's errors count, 500, 502, 503 and 504; others are ignored. None by default: an
    /// origin's own errors then pass through unchanged, except where a copy's origin sent
    /// `stale-if-error`, which asks for that copy in place of all four (RFC 5861 §4).
    ///
    /// The client then sees `Proxy-Status: <name>; received-status=503` and
    /// `Cache-Status: <name>; fwd=stale; fwd-status=503; ...`.
    pub fn failure_statuses(self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        let statuses: Vec<StatusCode> = statuses
            .into_iter()
            .filter(|&status| Policy::is_error(status))
            .collect();
        self.set(|p| {
            for status in statuses {
                if !p.origin_statuses.contains(&status) {
                    p.origin_statuses.push(status);
                }
            }
        })
    }

    /// Stores responses that set cookies, without their `Set-Cookie` fields: a copy then hands
    /// no cookie to anyone. Off by default: such a response is not stored (a site that sets a
    /// tracking cookie on every page then gets no copies; turn this on for it).
    pub fn strip_set_cookie(self, strip: bool) -> Self {
        self.set(|p| p.strip_set_cookie = strip)
    }

    /// The number of copies held (each variant counts).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the store holds no copy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes counted against [`max_bytes`](Self::max_bytes): the copies held, and the
    /// copies being made (bodies on their way to clients, copied as they pass).
    pub fn bytes(&self) -> usize {
        self.store.bytes().saturating_add(self.store.in_progress())
    }

    /// Drops every copy (after a deployment that changed every page, say). A response still on
    /// its way to a request that arrived before this is not stored either.
    pub fn clear(&self) {
        self.store.clear();
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.store.policy;
        f.debug_struct("Store")
            .field("copies", &self.len())
            .field("bytes", &self.bytes())
            .field("max_bytes", &policy.max_bytes)
            .field("max_response_bytes", &policy.max_response_bytes)
            .field("max_entries", &policy.max_entries)
            .field("default_window", &policy.default_window)
            .field("vary_headers", &policy.vary_headers)
            .field("origin_statuses", &policy.origin_statuses)
            .field("strip_set_cookie", &policy.strip_set_cookie)
            .finish()
    }
}

/// [`Store::vary_headers`] was given more than 6 distinct names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyVaryHeaders(());

impl fmt::Display for TooManyVaryHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a stored response may vary on at most {MAX_VARY_HEADERS} request headers"
        )
    }
}

impl StdError for TooManyVaryHeaders {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rfc_5861_errors_are_answered_in_place_of_the_origin() {
        let store = Store::new().failure_statuses(
            [404, 500, 501, 503, 505, 200].map(|code| StatusCode::from_u16(code).unwrap()),
        );
        for (code, answered) in [
            (404, false),
            (500, true),
            (501, false),
            (502, false),
            (503, true),
            (505, false),
            (200, false),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(store.answers_origin_status(status), answered, "{code}");
        }
    }

    #[test]
    fn each_builder_call_makes_a_new_store_and_clones_share_one() {
        let store = Store::new();
        let clone = store.clone();
        assert!(Arc::ptr_eq(&store.store, &clone.store));
        let changed = store.clone().max_entries(5);
        assert!(!Arc::ptr_eq(&store.store, &changed.store));
        assert_eq!(changed.store.policy.max_entries, 5);
        assert_eq!(store.store.policy.max_entries, 10_000);
    }
}
