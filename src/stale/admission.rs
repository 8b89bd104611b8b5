//! Which responses the store admits (RFC 9111 §3), and what of one is kept: the copy being
//! recorded, from its head until its body completes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::copy::{StoredCopy, Variant, signed_seconds, staleness_secs, whole_seconds};
use super::directives::{Delta, ResponseDirectives};
use super::policy::Policy;
use super::request::{Access, CapturedRequest, Key};

/// What a copy is assumed to cost in the store besides its body, head and key: the copy itself,
/// its slot and its place in the index.
const COPY_OVERHEAD: usize = 256;

/// What one header field is assumed to cost besides its name and value (as HTTP/2 counts it).
const FIELD_OVERHEAD: usize = 32;

/// A response admitted to the store, waiting for its body to complete.
pub(crate) struct Admission {
    key: Key,
    variant: Variant,
    status: StatusCode,
    headers: HeaderMap,
    /// When the head arrived (RFC 9111 §4.2.3's `response_time`).
    received_at: Instant,
    /// Its `Date`, for which of two responses is the more recent (RFC 9111 §4).
    dated: SystemTime,
    initial_age: Duration,
    lifetime: Duration,
    window: Duration,
    /// Whether `window` is the origin's own `stale-if-error`.
    origin_window: bool,
    /// The write generation of its key when the request arrived.
    epoch: u32,
    /// The `Content-Length` the origin declared, if any.
    pub(crate) declared_len: Option<u64>,
}

/// Why a response is not stored, for tests and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Method,
    RequestNoStore,
    Status,
    NoStore,
    Private,
    ForbidsStale,
    Authorization,
    SetCookie,
    VaryStar,
    VaryUnknown,
    VaryRepeated,
    TooLarge,
    NoWindow,
    TooStale,
    BadLength,
}

impl Admission {
    /// Whether a response with `status` and `headers`, to `request`, may be stored; if so, what
    /// is kept of its head and how old it already is.
    pub(crate) fn decide(
        policy: &Policy,
        request: &CapturedRequest,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<Admission, Refused> {
        if request.access != (Access::Read { head: false }) {
            return Err(Refused::Method);
        }
        if request.directives.no_store {
            return Err(Refused::RequestNoStore);
        }
        if !Policy::stores_status(status) {
            return Err(Refused::Status);
        }
        let directives = ResponseDirectives::parse(headers);
        if directives.no_store {
            return Err(Refused::NoStore);
        }
        if directives.private {
            return Err(Refused::Private);
        }
        // A copy that may never answer stale is not worth its bytes.
        if directives.forbids_stale() {
            return Err(Refused::ForbidsStale);
        }
        if request.authorization && !directives.allows_authorized() {
            return Err(Refused::Authorization);
        }
        if headers.contains_key(header::SET_COOKIE) && !policy.strip_set_cookie {
            return Err(Refused::SetCookie);
        }
        let variant = variant_of(policy, request, headers)?;
        let declared_len = declared_length(headers)?;
        if declared_len.is_some_and(|len| len > policy.max_response_bytes as u64) {
            return Err(Refused::TooLarge);
        }

        // RFC 9111 §4.2.3.
        let received_at = Instant::now();
        let now = SystemTime::now();
        let date = single(headers, &header::DATE).and_then(http_date);
        let apparent_age = date
            .and_then(|date| now.duration_since(date).ok())
            .unwrap_or_default();
        let age_value = single(headers, &header::AGE)
            .and_then(|age| Delta::parse(Some(age.as_bytes())).seconds())
            .unwrap_or(0);
        let response_delay = received_at.saturating_duration_since(request.arrived);
        let corrected_age_value = Duration::from_secs(age_value).saturating_add(response_delay);
        let initial_age = apparent_age.max(corrected_age_value);

        // RFC 9111 §4.2.1, for a shared cache that has no s-maxage to read (a response with
        // one is not stored) and uses no heuristic: without explicit freshness a copy is stale
        // from the start, which counts its staleness from the moment it was sent.
        let lifetime = match directives.max_age {
            Some(delta) => delta.seconds().unwrap_or(0),
            None => match headers.get(header::EXPIRES) {
                None => 0,
                // An invalid date means already expired (RFC 9111 §5.3).
                Some(expires) => http_date(expires)
                    .and_then(|expires| expires.duration_since(date.unwrap_or(now)).ok())
                    .map_or(0, |lifetime| lifetime.as_secs()),
            },
        };
        let lifetime = Duration::from_secs(lifetime);

        // The origin's window, else the operator's; an invalid origin value is no window.
        let origin_window = directives.stale_if_error.and_then(Delta::seconds);
        let window = match origin_window {
            Some(seconds) => Duration::from_secs(seconds),
            None => policy.default_window.ok_or(Refused::NoWindow)?,
        };
        if staleness_secs(whole_seconds(initial_age), lifetime) > signed_seconds(window) {
            return Err(Refused::TooStale);
        }

        Ok(Admission {
            key: request.key().to_key(),
            variant,
            status,
            headers: kept_head(policy, headers, now),
            received_at,
            // A Date ahead of our clock counts as now: an origin's clock cannot keep its copy
            // the newest for longer than it is. Now in whole seconds, as a Date is: else a
            // response dated this second would count as older than one clamped to now.
            dated: {
                let now = in_whole_seconds(now);
                date.map_or(now, |date| date.min(now))
            },
            initial_age,
            lifetime,
            window,
            origin_window: origin_window.is_some(),
            epoch: request.epoch,
            declared_len,
        })
    }

    /// The copy, once its whole body has arrived; `None` when the body is not the length the
    /// origin declared (an origin that lies is not replayed).
    pub(crate) fn complete(self, body: Bytes) -> Option<StoredCopy> {
        if self
            .declared_len
            .is_some_and(|declared| declared != body.len() as u64)
        {
            return None;
        }
        let head_size: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
            .sum();
        Some(StoredCopy {
            size: COPY_OVERHEAD + self.key.len() + head_size + body.len(),
            key: self.key,
            variant: self.variant,
            status: self.status,
            headers: self.headers,
            body,
            received_at: self.received_at,
            dated: self.dated,
            initial_age: self.initial_age,
            lifetime: self.lifetime,
            window: self.window,
            origin_window: self.origin_window,
            epoch: self.epoch,
        })
    }
}

/// The variant a response is stored as: its `Vary` names, each one the policy lets a variant
/// depend on, with the request's values for them.
fn variant_of(
    policy: &Policy,
    request: &CapturedRequest,
    headers: &HeaderMap,
) -> Result<Variant, Refused> {
    let mut names = 0u8;
    for line in headers.get_all(header::VARY) {
        for name in line.as_bytes().split(|&b| b == b',') {
            let name = name.trim_ascii();
            if name.is_empty() {
                continue;
            }
            if name == b"*" {
                return Err(Refused::VaryStar);
            }
            let index = policy.vary_index(name).ok_or(Refused::VaryUnknown)?;
            names |= 1 << index;
        }
    }
    let values = request.vary.select(names).ok_or(Refused::VaryRepeated)?;
    Ok(Variant { names, values })
}

/// The declared `Content-Length`: `Ok(None)` when there is none, an error when it is not one
/// number (the response is then not stored).
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, Refused> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let parsed = std::str::from_utf8(first.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or(Refused::BadLength)?;
    if values.any(|other| other != first) {
        return Err(Refused::BadLength);
    }
    Ok(Some(parsed))
}

/// The fields of a response head that are never stored (besides `Keep-Alive`,
/// `Proxy-Connection` and the fields `Connection` names).
static NOT_KEPT: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::AGE,
    header::SET_COOKIE,
];

/// The head as stored: without the fields that belong to one connection (RFC 9110 §7.6.1, as
/// RFC 9111 §3.1 asks), without `Age` (it is worked out when the copy answers), and without
/// `Set-Cookie` (present only when the policy strips it). A response without `Date` gets the time
/// it was `received` (RFC 9110 §6.6.1 asks that of a cache), so that a copy's `Date` and `Age`
/// agree rather than the server dating the copy when it answers.
fn kept_head(policy: &Policy, headers: &HeaderMap, received: SystemTime) -> HeaderMap {
    let connection_names: Vec<&[u8]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
        .collect();
    let dropped = |name: &HeaderName| {
        NOT_KEPT.contains(name)
            || name == "keep-alive"
            || name == "proxy-connection"
            || connection_names
                .iter()
                .any(|listed| listed.eq_ignore_ascii_case(name.as_str().as_bytes()))
    };
    debug_assert!(policy.strip_set_cookie || !headers.contains_key(header::SET_COOKIE));
    let mut kept = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        if !dropped(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    if !kept.contains_key(header::DATE) {
        // An IMF-fixdate is 29 bytes.
        let mut date = [0u8; 29];
        let written = {
            use std::io::Write as _;
            let mut cursor = &mut date[..];
            write!(cursor, "{}", httpdate::HttpDate::from(received)).is_ok()
        };
        if let (true, Ok(value)) = (written, HeaderValue::from_bytes(&date)) {
            kept.insert(header::DATE, value);
        }
    }
    kept
}

/// `time` without its fraction of a second, as a `Date` states it.
fn in_whole_seconds(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        // A clock before 1970: left as it is.
        Err(_) => time,
    }
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stale::testing::{decide, request, windowed};

    #[test]
    fn what_a_shared_cache_may_store_is_admitted_and_nothing_else() {
        let policy = windowed();
        let get = request("GET", &[]);
        let sie = [("cache-control", "stale-if-error=60")];
        for status in [200, 203, 204, 300, 301, 308, 404, 410] {
            assert!(decide(&policy, &get, status, &sie).is_ok(), "{status}");
        }
        for status in [206, 302, 304, 400, 403, 405, 500, 502, 503] {
            assert_eq!(
                decide(&policy, &get, status, &sie).err(),
                Some(Refused::Status),
                "{status}"
            );
        }
        for (fields, refused) in [
            (vec![("cache-control", "no-store")], Refused::NoStore),
            (vec![("cache-control", "private")], Refused::Private),
            (
                vec![("cache-control", "private=\"x-user\"")],
                Refused::Private,
            ),
            (vec![("cache-control", "no-cache")], Refused::ForbidsStale),
            (
                vec![("cache-control", "max-age=5, must-revalidate")],
                Refused::ForbidsStale,
            ),
            (
                vec![("cache-control", "proxy-revalidate")],
                Refused::ForbidsStale,
            ),
            (
                vec![("cache-control", "s-maxage=60")],
                Refused::ForbidsStale,
            ),
            (vec![("set-cookie", "id=1")], Refused::SetCookie),
            (vec![("vary", "accept-encoding, *")], Refused::VaryStar),
            (vec![("vary", "user-agent")], Refused::VaryUnknown),
            (vec![("content-length", "2000000")], Refused::TooLarge),
            (vec![("content-length", "1, 2")], Refused::BadLength),
        ] {
            assert_eq!(
                decide(&policy, &get, 200, &fields).err(),
                Some(refused),
                "{fields:?}"
            );
        }
        assert_eq!(
            decide(&policy, &request("HEAD", &[]), 200, &[]).err(),
            Some(Refused::Method)
        );
        assert_eq!(
            decide(
                &policy,
                &request("GET", &[("cache-control", "no-store")]),
                200,
                &[]
            )
            .err(),
            Some(Refused::RequestNoStore)
        );
        let repeated = request(
            "GET",
            &[("accept-language", "en"), ("accept-language", "fr")],
        );
        assert_eq!(
            decide(&policy, &repeated, 200, &[("vary", "accept-language")]).err(),
            Some(Refused::VaryRepeated)
        );
    }

    #[test]
    fn an_authorized_request_is_stored_only_when_the_response_says_public() {
        let policy = windowed();
        let authorized = request("GET", &[("authorization", "Bearer x")]);
        assert_eq!(
            decide(&policy, &authorized, 200, &[("cache-control", "max-age=5")]).err(),
            Some(Refused::Authorization)
        );
        assert!(decide(&policy, &authorized, 200, &[("cache-control", "public")]).is_ok());
    }

    #[test]
    fn without_a_window_nothing_is_stored() {
        let get = request("GET", &[]);
        let policy = Policy::default();
        assert_eq!(
            decide(&policy, &get, 200, &[("cache-control", "max-age=600")]).err(),
            Some(Refused::NoWindow)
        );
        assert!(decide(&policy, &get, 200, &[("cache-control", "stale-if-error=5")]).is_ok());
        // An invalid origin value is no window of the origin's: the operator's applies.
        assert_eq!(
            decide(
                &policy,
                &get,
                200,
                &[("cache-control", "stale-if-error=soon")]
            )
            .err(),
            Some(Refused::NoWindow)
        );
        assert!(
            decide(
                &windowed(),
                &get,
                200,
                &[("cache-control", "stale-if-error=x")]
            )
            .is_ok()
        );
    }

    #[test]
    fn set_cookie_is_stripped_when_the_policy_says_so() {
        let policy = Policy {
            strip_set_cookie: true,
            ..windowed()
        };
        let admitted = decide(
            &policy,
            &request("GET", &[]),
            200,
            &[("set-cookie", "id=1"), ("content-type", "text/plain")],
        )
        .unwrap();
        assert!(!admitted.headers.contains_key(header::SET_COOKIE));
        assert_eq!(admitted.headers["content-type"], "text/plain");
    }

    #[test]
    fn connection_fields_and_age_are_not_kept() {
        let admitted = decide(
            &windowed(),
            &request("GET", &[]),
            200,
            &[
                ("connection", "keep-alive, x-hop"),
                ("keep-alive", "timeout=5"),
                ("x-hop", "1"),
                ("transfer-encoding", "chunked"),
                ("age", "3"),
                ("etag", "\"v1\""),
                ("x-kept", "a"),
                ("x-kept", "b"),
            ],
        )
        .unwrap();
        let names: Vec<_> = admitted.headers.keys().map(|n| n.as_str()).collect();
        // And a Date, as the origin sent none.
        assert_eq!(names, ["etag", "x-kept", "date"]);
        let date = admitted.headers["date"].to_str().unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(admitted.headers.get_all("x-kept").iter().count(), 2);
    }

    #[test]
    fn a_body_of_another_length_than_declared_is_not_kept() {
        let policy = windowed();
        let get = request("GET", &[]);
        let admitted = decide(&policy, &get, 200, &[("content-length", "5")]).unwrap();
        assert!(admitted.complete(Bytes::from_static(b"1234")).is_none());
        let admitted = decide(&policy, &get, 200, &[("content-length", "5")]).unwrap();
        assert!(admitted.complete(Bytes::from_static(b"12345")).is_some());
    }

    #[test]
    fn variants_match_on_the_values_their_vary_names() {
        let policy = windowed();
        let gzip = request("GET", &[("accept-encoding", "gzip"), ("accept", "a/b")]);
        let admitted = decide(&policy, &gzip, 200, &[("vary", "Accept-Encoding")]).unwrap();
        let plain = request("GET", &[("accept", "x/y")]);
        let other_accept = request("GET", &[("accept-encoding", "gzip"), ("accept", "x/y")]);
        assert!(admitted.variant.matches(&gzip.vary));
        assert!(
            admitted.variant.matches(&other_accept.vary),
            "accept is not named"
        );
        assert!(!admitted.variant.matches(&plain.vary));
        let identity = decide(&policy, &plain, 200, &[("vary", "accept-encoding")]).unwrap();
        assert!(identity.variant.matches(&plain.vary));
        assert!(!identity.variant.matches(&gzip.vary));
        assert!(!identity.variant.same_as(&admitted.variant));
    }

    #[test]
    fn whether_the_window_is_the_origins_is_kept_with_the_copy() {
        let policy = windowed();
        let get = request("GET", &[]);
        let kept = |cache_control: &str| {
            decide(&policy, &get, 200, &[("cache-control", cache_control)])
                .unwrap()
                .complete(Bytes::new())
                .unwrap()
                .origin_window
        };
        assert!(kept("max-age=60, stale-if-error=30"));
        assert!(!kept("max-age=60"));
        // An invalid origin value is no window of the origin's.
        assert!(!kept("max-age=60, stale-if-error=soon"));
    }
}
