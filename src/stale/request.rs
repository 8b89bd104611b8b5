//! What a request brings to the store, captured when it arrives: its key, the values of the
//! headers a variant may depend on, and its own `Cache-Control`.
//!
//! Nothing here allocates, and little is kept: the capture lives in every request's future, so
//! it is kept small. The target's path and authority are kept as the request held them (cloning
//! a parsed value shares its bytes: hyper parses a request into one shared buffer); the values a
//! variant may depend on are kept as keyed hashes.

use std::borrow::Borrow;
use std::hash::BuildHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request};
use tokio::time::Instant;

use super::directives::RequestDirectives;
use super::policy::{MAX_VARY_HEADERS, Policy};

/// What the store may do for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// GET or HEAD: its response may be stored (GET only), and a copy may answer it.
    Read { head: bool },
    /// A method that may change the resource: a success removes the copies of its URI
    /// (RFC 9111 §4.4).
    Write,
}

/// The values a request sent for the headers a variant may depend on (the policy's
/// `vary_headers`, in order): a hash of each, keyed per store, so that eight bytes stand for a
/// value of any length. Two values match when their hashes do; with a 64-bit key unknown to
/// clients, two different values of one header of one page match by chance about once in 2^64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VaryValues {
    hashes: [u64; MAX_VARY_HEADERS],
    /// Bit `i`: header `i` was sent, on one line.
    present: u8,
    /// Bit `i`: header `i` was sent on more than one line: no variant is stored for, or
    /// matched to, such a request.
    several: u8,
}

impl VaryValues {
    fn capture(policy: &Policy, headers: &HeaderMap) -> Self {
        let mut values = VaryValues::default();
        for (i, name) in policy.vary_headers.iter().enumerate() {
            let mut lines = headers.get_all(name).iter();
            match (lines.next(), lines.next()) {
                (None, _) => {}
                (Some(value), None) => {
                    values.hashes[i] = policy.vary_hasher.hash_one(value.as_bytes());
                    values.present |= 1 << i;
                }
                (Some(_), Some(_)) => values.several |= 1 << i,
            }
        }
        values
    }

    /// The values of the headers in `names` (a bit set) alone; `None` when one of them was sent
    /// on more than one line.
    pub(crate) fn select(&self, names: u8) -> Option<VaryValues> {
        if self.several & names != 0 {
            return None;
        }
        let mut selected = VaryValues {
            present: self.present & names,
            ..VaryValues::default()
        };
        for i in 0..MAX_VARY_HEADERS {
            if selected.present & (1 << i) != 0 {
                selected.hashes[i] = self.hashes[i];
            }
        }
        Some(selected)
    }
}

/// The authority the client asked for.
enum Target {
    /// The URI's (HTTP/2, or an absolute-form request).
    Uri(Authority),
    /// `Host`, when the URI has none (HTTP/1.1's origin form).
    Host(HeaderValue),
    Neither,
}

/// The request, as the store needs it.
pub(crate) struct CapturedRequest {
    pub(crate) access: Access,
    pub(crate) authorization: bool,
    pub(crate) directives: RequestDirectives,
    authority: Target,
    path: PathAndQuery,
    pub(crate) vary: VaryValues,
    /// When the request arrived (RFC 9111 §4.2.3's `request_time`).
    pub(crate) arrived: Instant,
    /// The write generation of its key when it arrived (a GET's; the store sets it): its response
    /// is not stored if a write has invalidated the key since.
    pub(crate) epoch: u32,
}

impl CapturedRequest {
    /// `None` for a request the store has nothing to do with: OPTIONS, TRACE, CONNECT, and
    /// anything that asks to switch protocols.
    pub(crate) fn capture<B>(policy: &Policy, request: &Request<B>) -> Option<Self> {
        let headers = request.headers();
        let access = match *request.method() {
            Method::GET => Access::Read { head: false },
            Method::HEAD => Access::Read { head: true },
            Method::OPTIONS | Method::TRACE | Method::CONNECT => return None,
            _ => Access::Write,
        };
        if headers.contains_key(header::UPGRADE) {
            return None;
        }
        let uri = request.uri();
        let authority = match (uri.authority(), headers.get(header::HOST)) {
            (Some(authority), _) => Target::Uri(authority.clone()),
            (None, Some(host)) => Target::Host(host.clone()),
            (None, None) => Target::Neither,
        };
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut vary = VaryValues::default();
        let mut directives = RequestDirectives::default();
        if matches!(access, Access::Read { .. }) {
            vary = VaryValues::capture(policy, headers);
            if headers.contains_key(header::CACHE_CONTROL) {
                directives = RequestDirectives::parse(headers);
            }
        }
        Some(CapturedRequest {
            access,
            authorization: headers.contains_key(header::AUTHORIZATION),
            directives,
            authority,
            path,
            vary,
            arrived: Instant::now(),
            epoch: 0,
        })
    }

    /// The key of the request's target: the authority the client asked for, path and query.
    pub(crate) fn key(&self) -> KeyView<'_> {
        let authority = match &self.authority {
            Target::Uri(authority) => authority.as_str().as_bytes(),
            Target::Host(host) => host.as_bytes(),
            Target::Neither => b"",
        };
        KeyView {
            authority,
            path: self.path.as_str().as_bytes(),
        }
    }
}

/// The two parts of a key. Hashing and comparing go through this trait, so that a stored key
/// and a request's parts find each other without building a key for the request.
pub(crate) trait KeyParts {
    /// The authority as sent: compared without case (RFC 3986 §6.2.2, case normalization, for the host).
    fn authority(&self) -> &[u8];
    fn path(&self) -> &[u8];
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // In lower case, a few bytes at a time through a buffer on the stack: a stored key and a
        // request's parts are hashed by this same code, so they hash alike.
        let mut lower = [0u8; 32];
        for chunk in self.authority().chunks(lower.len()) {
            let lower = &mut lower[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            state.write(lower);
        }
        // No authority holds a line feed, and no header value or URI does: the join is
        // unambiguous, so `Host: a/b` with path `/c` is not `Host: a` with path `/b/c`.
        state.write_u8(b'\n');
        state.write(self.path());
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.authority().eq_ignore_ascii_case(other.authority()) && self.path() == other.path()
    }
}

impl Eq for dyn KeyParts + '_ {}

/// A request's key, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyView<'a> {
    authority: &'a [u8],
    path: &'a [u8],
}

impl KeyParts for KeyView<'_> {
    fn authority(&self) -> &[u8] {
        self.authority
    }
    fn path(&self) -> &[u8] {
        self.path
    }
}

impl KeyView<'_> {
    /// The key to keep: the authority in lower case, a line feed, the path and query. One
    /// allocation: the iterator knows its length, so the shared slice is filled in place.
    pub(crate) fn to_key(self) -> Key {
        let bytes = (self.authority.iter().map(u8::to_ascii_lowercase))
            .chain(std::iter::once(b'\n'))
            .chain(self.path.iter().copied());
        Key {
            bytes: bytes.collect(),
            authority_len: self.authority.len(),
        }
    }
}

/// A stored key: the authority in lower case, a line feed, the path and query. Shared between
/// the store's index and the copy it names.
#[derive(Clone)]
pub(crate) struct Key {
    bytes: Arc<[u8]>,
    authority_len: usize,
}

impl Key {
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    fn split(&self) -> (&[u8], &[u8]) {
        (
            &self.bytes[..self.authority_len],
            &self.bytes[self.authority_len + 1..],
        )
    }
}

impl KeyParts for Key {
    fn authority(&self) -> &[u8] {
        self.split().0
    }
    fn path(&self) -> &[u8] {
        self.split().1
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyParts).hash(state);
    }
}

impl PartialEq for Key {
    /// Two stored keys are both in lower case: their bytes say it all.
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl<'a> Borrow<dyn KeyParts + 'a> for Key {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (authority, path) = self.split();
        write!(
            f,
            "{}{}",
            String::from_utf8_lossy(authority),
            String::from_utf8_lossy(path)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    /// One policy for every request a test captures: the values a variant depends on are hashed
    /// with its keys, as every request to one store is.
    static CAPTURING: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

    use super::*;

    fn captured(method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<CapturedRequest> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        CapturedRequest::capture(&CAPTURING, &builder.body(()).unwrap())
    }

    #[test]
    fn the_key_is_the_authority_asked_for_then_path_and_query() {
        let origin_form = captured("GET", "/a?b=1", &[("host", "Site.Example")]).unwrap();
        let absolute = captured("GET", "http://site.example/a?b=1", &[]).unwrap();
        let other_site = captured("GET", "/a?b=1", &[("host", "other.example")]).unwrap();
        let other_query = captured("GET", "/a?b=2", &[("host", "site.example")]).unwrap();
        let mut map = HashMap::new();
        map.insert(origin_form.key().to_key(), 1);
        assert_eq!(map.get(&absolute.key() as &dyn KeyParts), Some(&1));
        assert_eq!(map.get(&other_site.key() as &dyn KeyParts), None);
        assert_eq!(map.get(&other_query.key() as &dyn KeyParts), None);
        assert_eq!(
            format!("{:?}", origin_form.key().to_key()),
            "site.example/a?b=1"
        );
    }

    #[test]
    fn a_host_with_a_path_in_it_is_not_another_sites_page() {
        let odd = captured("GET", "/c", &[("host", "a/b")]).unwrap();
        let plain = captured("GET", "/b/c", &[("host", "a")]).unwrap();
        let mut map = HashMap::new();
        map.insert(plain.key().to_key(), ());
        assert!(!map.contains_key(&odd.key() as &dyn KeyParts));
    }

    #[test]
    fn what_each_method_may_do() {
        assert_eq!(
            captured("GET", "/", &[]).unwrap().access,
            Access::Read { head: false }
        );
        assert_eq!(
            captured("HEAD", "/", &[]).unwrap().access,
            Access::Read { head: true }
        );
        for write in ["POST", "PUT", "DELETE", "PATCH", "PURGE"] {
            assert_eq!(captured(write, "/", &[]).unwrap().access, Access::Write);
        }
        for none in ["OPTIONS", "TRACE"] {
            assert!(captured(none, "/", &[]).is_none(), "{none}");
        }
        assert!(captured("GET", "/ws", &[("upgrade", "websocket")]).is_none());
    }

    #[test]
    fn vary_values_are_taken_in_the_policys_order() {
        let request = captured(
            "GET",
            "/",
            &[
                ("accept-encoding", "gzip"),
                ("accept-language", "en"),
                ("accept-language", "fr"),
                ("cache-control", "stale-if-error=9"),
            ],
        )
        .unwrap();
        let gzip_only = captured("GET", "/", &[("accept-encoding", "gzip")]).unwrap();
        let br = captured("GET", "/", &[("accept-encoding", "br")]).unwrap();
        // Accept-Encoding is the first of the policy's headers, Accept-Language the third.
        assert_eq!(request.vary.select(0b001), gzip_only.vary.select(0b001));
        assert_ne!(request.vary.select(0b001), br.vary.select(0b001));
        assert!(
            request.vary.select(0b010).is_some(),
            "Accept: absent from both"
        );
        assert!(
            request.vary.select(0b100).is_none(),
            "two Accept-Language lines"
        );
        assert_eq!(request.directives.stale_if_error(), Some(9));
    }
}
