//! Which upstream a request goes to: [`KeyUpstream`], the default [`ByAuthority`], and closures.

use std::fmt;
use std::hash::{Hash, Hasher};

use http::Request;

/// Names the upstream a request goes to, so that its health is kept per upstream.
///
/// The layer hashes the key of every request (with a hasher keyed at random per layer, so that
/// nobody can choose two keys that collide) and shows the returned name in events. `None` leaves the request
/// untracked: it is forwarded, and its outcome is not recorded.
///
/// The default, [`ByAuthority`], keys by the request URI's scheme and authority: right when the
/// layer sits after the code that points the request at its upstream. A closure
/// `Fn(&Request<B>) -> Option<T>`, where `T` is `Hash + Display`, implements this trait too: give
/// one to [`key_by`](super::UpstreamHealthLayer::key_by) when the upstream is chosen some other
/// way (an extension a router set, a header). Return something that does not allocate (an index,
/// a `&'static str`, a `SocketAddr`) to keep the success path free of allocations.
///
/// ```
/// use gateway_errors::health::UpstreamHealthLayer;
/// use http::Request;
///
/// /// Set by the router on each request: which backend of the pool it picked.
/// #[derive(Clone, Copy)]
/// struct Backend(u16);
///
/// let layer = UpstreamHealthLayer::new()
///     .key_by(|request: &Request<String>| request.extensions().get::<Backend>().map(|b| b.0));
/// # let _ = layer;
/// ```
pub trait KeyUpstream<B>: Send + Sync + 'static {
    /// The upstream's name, as events show it.
    type Key: fmt::Display + Send + Sync + 'static;

    /// Feeds the identity of `request`'s upstream into `state` and returns its name, or `None` for
    /// a request that is not to be tracked.
    fn key<H: Hasher>(&self, request: &Request<B>, state: &mut H) -> Option<Self::Key>;
}

impl<B, F, T> KeyUpstream<B> for F
where
    F: Fn(&Request<B>) -> Option<T> + Send + Sync + 'static,
    T: Hash + fmt::Display + Send + Sync + 'static,
{
    type Key = T;

    fn key<H: Hasher>(&self, request: &Request<B>, state: &mut H) -> Option<T> {
        let key = self(request)?;
        key.hash(state);
        Some(key)
    }
}

/// The default key: the request URI's scheme and authority (`http://127.0.0.1:3000`), as written.
///
/// A request whose URI has no authority (origin-form, `/path`, as a server receives it) is not
/// tracked: put the layer after the code that points requests at their upstream, or key them with
/// [`key_by`](super::UpstreamHealthLayer::key_by).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByAuthority;

impl<B> KeyUpstream<B> for ByAuthority {
    type Key = AuthorityKey;

    fn key<H: Hasher>(&self, request: &Request<B>, state: &mut H) -> Option<AuthorityKey> {
        let uri = request.uri();
        let authority = uri.authority()?.as_str();
        let scheme = uri.scheme_str().unwrap_or("");
        // The whole scheme and authority decide the key; the name keeps what fits inline.
        state.write(scheme.as_bytes());
        state.write_u8(0xff);
        state.write(authority.as_bytes());
        Some(AuthorityKey::new(scheme, authority))
    }
}

/// The bytes of an authority [`AuthorityKey`] keeps for events; a longer one is shown cut.
const KEPT: usize = 46;

/// The name of an upstream keyed by [`ByAuthority`]: its scheme and authority, as events show
/// them. Kept inline (no allocation), at most 46 bytes of the authority.
#[derive(Clone, Copy)]
pub struct AuthorityKey {
    scheme: Scheme,
    len: u8,
    cut: bool,
    bytes: [u8; KEPT],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    None,
    Http,
    Https,
    Other,
}

impl AuthorityKey {
    fn new(scheme: &str, authority: &str) -> Self {
        let scheme = match scheme {
            "" => Scheme::None,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => Scheme::Other,
        };
        let mut end = authority.len().min(KEPT);
        while !authority.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; KEPT];
        bytes[..end].copy_from_slice(&authority.as_bytes()[..end]);
        AuthorityKey {
            scheme,
            len: end as u8,
            cut: end < authority.len(),
            bytes,
        }
    }

    fn authority(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl fmt::Display for AuthorityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::None => "",
            Scheme::Http => "http://",
            Scheme::Https => "https://",
            Scheme::Other => "(other)://",
        };
        write!(
            f,
            "{scheme}{}{}",
            self.authority(),
            if self.cut { "..." } else { "" }
        )
    }
}

impl fmt::Debug for AuthorityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorityKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};

    use super::*;

    fn key_of(uri: &str) -> (u64, Option<String>) {
        let request = Request::get(uri).body(()).unwrap();
        let mut state = RandomState::new();
        // One seed for the whole test, so that hashes compare.
        state = SEED.with(|seed| seed.clone()).unwrap_or(state);
        let mut hasher = state.build_hasher();
        let key = ByAuthority.key(&request, &mut hasher);
        (hasher.finish(), key.map(|k| k.to_string()))
    }

    thread_local! {
        static SEED: Option<RandomState> = Some(RandomState::new());
    }

    #[test]
    fn the_default_key_is_the_scheme_and_authority() {
        let (a, name) = key_of("http://127.0.0.1:3000/orders?id=1");
        assert_eq!(name.as_deref(), Some("http://127.0.0.1:3000"));
        let (same, _) = key_of("http://127.0.0.1:3000/other");
        assert_eq!(a, same, "the path does not count");
        let (port, _) = key_of("http://127.0.0.1:3001/orders");
        let (scheme, _) = key_of("https://127.0.0.1:3000/orders");
        assert_ne!(a, port);
        assert_ne!(a, scheme);
        assert_eq!(key_of("/orders").1, None, "origin-form: untracked");
    }

    #[test]
    fn a_long_authority_is_keyed_whole_and_shown_cut() {
        let long = format!("http://{}.example:8080/", "a".repeat(60));
        let other = format!("http://{}.example:8081/", "a".repeat(60));
        let (a, name) = key_of(&long);
        let (b, _) = key_of(&other);
        assert_ne!(a, b, "the part that is not shown still counts");
        let name = name.unwrap();
        assert!(name.ends_with("..."), "{name}");
        assert_eq!(name.len(), "http://".len() + KEPT + 3);
    }
}
