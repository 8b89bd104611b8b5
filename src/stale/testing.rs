//! What the unit tests of the store share: requests captured under one policy, and response
//! heads admitted under it.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};

use super::admission::{Admission, Refused};
use super::policy::Policy;
use super::request::CapturedRequest;

/// One policy for every request a test captures: the values a variant depends on are hashed
/// with its keys, as every request to one store is.
static CAPTURING: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

/// A request for `/page` of `site.example`, as the store captures it.
pub(crate) fn request(method: &str, headers: &[(&str, &str)]) -> CapturedRequest {
    let mut builder = Request::builder()
        .method(method)
        .uri("/page")
        .header("host", "site.example");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    CapturedRequest::capture(&CAPTURING, &builder.body(()).unwrap()).unwrap()
}

fn head(fields: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

/// Whether `policy` admits a response to `request` with this status and these header fields.
pub(crate) fn decide(
    policy: &Policy,
    request: &CapturedRequest,
    status: u16,
    fields: &[(&str, &str)],
) -> Result<Admission, Refused> {
    Admission::decide(
        policy,
        request,
        StatusCode::from_u16(status).unwrap(),
        &head(fields),
    )
}

/// The default policy with the operator's window of a minute.
pub(crate) fn windowed() -> Policy {
    Policy {
        default_window: Some(Duration::from_secs(60)),
        ..Policy::default()
    }
}
