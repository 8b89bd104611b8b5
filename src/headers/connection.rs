//! `Connection` (RFC 9110 §7.6.1): the fields that belong to one connection, removed before a
//! request goes on, so that what the layer reads is what the next hop will see.
//!
//! ```text
//! Connection        = #connection-option
//! connection-option = token
//! ```
//!
//! Reading is one pass over the bytes of `Connection`, whatever they hold; each option is one
//! look-up in the header map by its bytes, so nothing is allocated unless `Connection` comes on
//! more than one line.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{is_token, list_elements};

/// Fields no proxy forwards whether or not `Connection` names them: HTTP/1.0's `Keep-Alive`
/// (RFC 2068 §19.7.1) and the unregistered `Proxy-Connection` (RFC 9112 Appendix C.2.2).
/// Static names: a look-up by one is a hash and a compare, with no parsing.
pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub(crate) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Options that are not fields, or that name a field only the connection's own machinery
/// reads: nothing to remove for them.
///
/// Fields a client may name but that are kept, because removing them would break the request
/// rather than keep it from the next hop:
/// - `Host`: the target's authority (RFC 9110 §7.2), not a property of the connection. The
///   proxy routes by it, and the stale store keys its copies by it: a request stripped of it would
///   share one key with every other host's.
/// - `Content-Length`, `Transfer-Encoding`: the framing of the body the server has already read
///   by them. The inner service's client frames the body again for its own connection; taking the
///   length away from it (or a `chunked` it relies on) changes how the body is sent, which is
///   what request smuggling looks for.
/// - `CDN-Loop` (RFC 8586): the record of the intermediaries a request passed. A client that
///   could erase it by naming it would make a forwarding loop invisible, which is the attack the
///   field exists to stop; the gateway counts it and appends its own member to it.
///
/// Everything else named is removed, `Accept`, `Accept-Language` and the rest that key a stored
/// copy included: the origin never sees them, so the gateway must not read them either.
const NOT_REMOVED: [&str; 6] = [
    "close",
    "keep-alive",
    "host",
    "content-length",
    "transfer-encoding",
    "cdn-loop",
];

/// Removes what a proxy must not forward (RFC 9110 §7.6.1): every field that `Connection`
/// names, `Connection` itself, `Keep-Alive` and `Proxy-Connection`.
///
/// [`GatewayErrorService`](crate::GatewayErrorService) calls it on every request before it reads
/// anything, so that what it reads (the values that key a stored copy, `Accept`, `CDN-Loop`) and
/// what it writes (its own `CDN-Loop` member) is what the next hop gets. A proxy can call it on
/// the responses it forwards too. The framing fields of the next connection (`TE`, `Trailer`,
/// `Transfer-Encoding`) are left to the proxy's own HTTP client, which writes them anew.
///
/// What is kept:
/// - a protocol switch: when `Connection` names `upgrade` and an `Upgrade` field is present,
///   `Upgrade` stays and `Connection` becomes `upgrade` (other options named beside it are
///   removed). Without that option, `Upgrade` is removed: it asks nothing of anyone (RFC 9110
///   §7.8).
/// - `TE`, unless `Connection` names it: an HTTP/2 request has no `Connection`, and its
///   `te: trailers`, the one value HTTP/2 allows, is what gRPC servers require.
/// - `Host`, `Content-Length`, `Transfer-Encoding` and `CDN-Loop`, even when `Connection` names
///   them: the request's target and framing, and the loop record. The inner service's client
///   still owns the framing of its own connection (`Transfer-Encoding` and the rest of the
///   hop-by-hop fields are its business when it writes the request).
///
/// Options that are not tokens (empty list members, quoted strings, bytes outside ASCII) name
/// no field and are skipped. The work is linear in the length of `Connection`.
///
/// ```
/// use gateway_errors::headers::remove_hop_by_hop;
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", "keep-alive, accept-language".parse().unwrap());
/// headers.insert("accept-language", "fr".parse().unwrap());
/// headers.insert("keep-alive", "timeout=5".parse().unwrap());
/// headers.insert("accept", "text/html".parse().unwrap());
/// remove_hop_by_hop(&mut headers);
/// assert_eq!(headers.len(), 1);
/// assert_eq!(headers["accept"], "text/html");
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    let mut lines = headers.get_all(header::CONNECTION).iter();
    let several = match (lines.next(), lines.next()) {
        (None, _) => {
            // No option names `upgrade`: an `Upgrade` alone is no request to switch.
            headers.remove(header::UPGRADE);
            return;
        }
        (Some(_), next) => next.is_some(),
    };
    // The options are read once the lines are out of the map, so that the fields they name can
    // be removed meanwhile. One line is taken as it is; the rare further lines are cloned (a
    // parsed value shares its bytes) into a list allocated only then.
    let rest: Vec<HeaderValue> = if several {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .skip(1)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let Some(first) = headers.remove(header::CONNECTION) else {
        return;
    };
    let mut upgrade = false;
    for line in std::iter::once(&first).chain(&rest) {
        for option in list_elements(line.as_bytes()) {
            // A field value holds no other ASCII whitespace than OWS (SP, HTAB).
            upgrade |= remove_named(headers, option.trim_ascii());
        }
    }
    if upgrade && headers.contains_key(header::UPGRADE) {
        // The map had room for the `Connection` just removed: no allocation.
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Removes the field `option` names, unless it is one that stays; whether it is `upgrade`.
fn remove_named(headers: &mut HeaderMap, option: &[u8]) -> bool {
    if !is_token(option) {
        return false;
    }
    // A token is ASCII: this never fails.
    let Ok(name) = std::str::from_utf8(option) else {
        return false;
    };
    if name.eq_ignore_ascii_case("upgrade") {
        return true;
    }
    if !NOT_REMOVED
        .iter()
        .any(|kept| name.eq_ignore_ascii_case(kept))
    {
        // Looked up by its bytes, lowercased on the stack: no `HeaderName` is built.
        headers.remove(name);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::header_map as map;

    /// The fields left, in a stable order, as `name: value`.
    fn left(fields: &[(&'static str, &'static str)]) -> Vec<String> {
        let mut headers = map(fields);
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<String> = headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        left.sort();
        left
    }

    #[test]
    fn without_connection_only_the_fixed_fields_go() {
        assert_eq!(
            left(&[
                ("host", "shop.test"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "websocket"),
                ("te", "trailers"),
                ("accept", "*/*"),
            ]),
            ["accept: */*", "host: shop.test", "te: trailers"]
        );
    }

    #[test]
    fn the_fields_connection_names_go_with_it() {
        assert_eq!(
            left(&[
                ("connection", "keep-alive, Accept-Language,x-hop"),
                ("accept-language", "fr"),
                ("x-hop", "1"),
                ("x-hop", "2"),
                ("accept", "text/html"),
            ]),
            ["accept: text/html"]
        );
        // Every line of `Connection` counts.
        assert_eq!(
            left(&[
                ("connection", "x-one"),
                ("connection", "X-Two"),
                ("x-one", "1"),
                ("x-two", "2"),
                ("x-three", "3"),
            ]),
            ["x-three: 3"]
        );
        assert_eq!(
            left(&[("connection", "te"), ("te", "trailers")]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn close_and_keep_alive_name_no_field_to_keep() {
        assert_eq!(left(&[("connection", "close"), ("host", "a")]), ["host: a"]);
        assert_eq!(
            left(&[
                ("connection", "Keep-Alive"),
                ("keep-alive", "max=5"),
                ("host", "a")
            ]),
            ["host: a"]
        );
    }

    #[test]
    fn an_upgrade_keeps_its_two_fields_and_nothing_else_named() {
        assert_eq!(
            left(&[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "k"),
            ]),
            [
                "connection: upgrade",
                "sec-websocket-key: k",
                "upgrade: websocket"
            ]
        );
        assert_eq!(
            left(&[
                ("connection", "keep-alive, upgrade, http2-settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ]),
            ["connection: upgrade", "upgrade: h2c"]
        );
        // `upgrade` named with no `Upgrade` to keep: nothing to switch to.
        assert_eq!(
            left(&[("connection", "upgrade"), ("host", "a")]),
            ["host: a"]
        );
    }

    #[test]
    fn what_the_request_cannot_lose_stays_when_named() {
        assert_eq!(
            left(&[
                (
                    "connection",
                    "host, Content-Length, transfer-encoding, cdn-loop, connection"
                ),
                ("host", "shop.test"),
                ("content-length", "5"),
                ("transfer-encoding", "chunked"),
                ("cdn-loop", "cdn-x"),
            ]),
            [
                "cdn-loop: cdn-x",
                "content-length: 5",
                "host: shop.test",
                "transfer-encoding: chunked"
            ]
        );
    }

    #[test]
    fn what_is_no_token_names_nothing() {
        assert_eq!(
            left(&[
                (
                    "connection",
                    ",, \t, \"x-quoted\", x-a x-b, x-c;x=1, (x-d), , "
                ),
                ("x-quoted", "1"),
                ("x-a", "1"),
                ("x-b", "1"),
                ("x-c", "1"),
                ("x-d", "1"),
            ]),
            ["x-a: 1", "x-b: 1", "x-c: 1", "x-d: 1", "x-quoted: 1"]
        );
    }

    #[test]
    fn hostile_values_end_without_a_panic() {
        let mut headers = HeaderMap::new();
        // Bytes outside ASCII, a quote left open.
        for value in [
            &b"\xff\xfe, x-a, caf\xc3\xa9"[..],
            b"\"open, x-b",
            b"x-c\x80x, x-d",
        ] {
            headers.append(
                header::CONNECTION,
                HeaderValue::from_bytes(value).expect("a header value"),
            );
        }
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("1"));
        headers.insert("x-d", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        // `x-b` is inside a quoted string that never ends: no option names it.
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-b"));

        // Thousands of options, one name far longer than any field's, one line of 64 KiB.
        let many = "x-none, ".repeat(8_000) + "x-last";
        let long_name = "x".repeat(70_000);
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, many.parse().unwrap());
        headers.append(header::CONNECTION, long_name.parse().unwrap());
        headers.insert("x-last", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn a_long_field_name_is_found_without_its_case() {
        let name: &'static str =
            "X-A-Field-Name-Longer-Than-Sixty-Four-Bytes-Which-Http-Reads-Off-The-Stack";
        assert!(name.len() > 64);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static(name));
        headers.insert(
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
        remove_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }
}
