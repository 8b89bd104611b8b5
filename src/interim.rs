//! Interim responses handed over as final: a 1xx is never an answer, and a 101 is one only to
//! a request that asked to switch to that protocol (RFC 9110 §7.8, §15.2.2).
//!
//! hyper reads 100 Continue and 103 Early Hints itself and waits on for the final response, so a
//! 1xx that reaches the layer as the inner service's answer means the exchange broke.

use std::error::Error as StdError;
use std::fmt;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

use crate::error::ProxyError;
use crate::kind::ProxyErrorKind;

/// What is wrong with an interim or protocol-switching response the origin gave as final.
#[derive(Debug)]
enum BadSwitch {
    /// A 1xx other than 101 as the final response.
    Interim(StatusCode),
    /// A 101 to a request that asked for no upgrade (RFC 9110 §15.2.2).
    Unasked,
    /// A 101 that names no protocol, or one the client did not offer (RFC 9110 §7.8).
    Unoffered,
}

impl fmt::Display for BadSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadSwitch::Interim(status) => {
                write!(
                    f,
                    "upstream gave the interim status {status} as its final response"
                )
            }
            BadSwitch::Unasked => {
                f.write_str("upstream switched protocols for a request that sent no Upgrade")
            }
            BadSwitch::Unoffered => f.write_str(
                "upstream switched protocols without naming one the request offered in Upgrade",
            ),
        }
    }
}

impl StdError for BadSwitch {}

/// Checks a 1xx response given as final: only a 101 that answers the request's `Upgrade`
/// (`offered`) may pass. `headers` are the response's.
pub(crate) fn check_final_interim(
    status: StatusCode,
    offered: Option<&HeaderValue>,
    headers: &HeaderMap,
) -> Option<ProxyError> {
    let bad = if status != StatusCode::SWITCHING_PROTOCOLS {
        BadSwitch::Interim(status)
    } else {
        let Some(offered) = offered else {
            return Some(
                ProxyError::new(ProxyErrorKind::HttpProtocolError).with_source(BadSwitch::Unasked),
            );
        };
        let chosen = headers.get(header::UPGRADE).map(HeaderValue::as_bytes);
        if chosen.is_some_and(|chosen| offers(offered.as_bytes(), chosen)) {
            return None;
        }
        return Some(
            ProxyError::new(ProxyErrorKind::HttpUpgradeFailed).with_source(BadSwitch::Unoffered),
        );
    };
    Some(ProxyError::new(ProxyErrorKind::HttpProtocolError).with_source(bad))
}

/// Whether every protocol in the 101's `Upgrade` (usually one) is among those the request
/// offered. Protocol names compare case-insensitively, versions included (`websocket`,
/// `HTTP/2.0`).
fn offers(offered: &[u8], chosen: &[u8]) -> bool {
    let mut any = false;
    for protocol in chosen.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if protocol.is_empty() {
            continue;
        }
        any = true;
        let found = offered
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|o| o.eq_ignore_ascii_case(protocol));
        if !found {
            return false;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static(value));
        headers
    }

    fn kind(error: Option<ProxyError>) -> Option<ProxyErrorKind> {
        error.and_then(|e| e.kind())
    }

    #[test]
    fn only_a_101_to_an_offered_protocol_passes() {
        let offered = HeaderValue::from_static("websocket, h2c");
        let switch = StatusCode::SWITCHING_PROTOCOLS;
        assert!(check_final_interim(switch, Some(&offered), &upgrade("WebSocket")).is_none());
        assert_eq!(
            kind(check_final_interim(
                switch,
                Some(&offered),
                &upgrade("http/2.0")
            )),
            Some(ProxyErrorKind::HttpUpgradeFailed)
        );
        assert_eq!(
            kind(check_final_interim(
                switch,
                Some(&offered),
                &HeaderMap::new()
            )),
            Some(ProxyErrorKind::HttpUpgradeFailed)
        );
        assert_eq!(
            kind(check_final_interim(switch, None, &upgrade("websocket"))),
            Some(ProxyErrorKind::HttpProtocolError)
        );
        assert_eq!(
            kind(check_final_interim(
                StatusCode::CONTINUE,
                Some(&offered),
                &HeaderMap::new()
            )),
            Some(ProxyErrorKind::HttpProtocolError)
        );
    }
}
