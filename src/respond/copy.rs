//! A stored copy answering in place of an error (RFC 5861 `stale-if-error`): the layer's own
//! error, or an origin's that the copy's origin or the operator lets a copy hide.

use std::error::Error as StdError;

use http::{Response, StatusCode};

use super::Pending;
use super::head::{self, Generated, detailed_member, plain_member};
use crate::body::GatewayBody;
use crate::classify::classification::Classification;
use crate::error::ProxyError;
use crate::kind::RequestSent;
use crate::stale::{Hides, StaleCopy, Store};
use crate::trace;

/// An origin error a copy answers in place of, when one may: a copy whose origin sent
/// `stale-if-error`, or any copy for a status the operator names (see
/// [`Store::failure_statuses`](crate::stale::Store::failure_statuses)).
// Inlined: without a store (or a capture) it is two tests, not a call.
#[inline]
pub(super) fn origin_error_from_copy<B>(
    pending: &Pending,
    status: StatusCode,
) -> Option<Response<GatewayBody<B>>> {
    if pending.config.stale.is_none()
        || pending.facts.stale().is_none()
        || !Store::may_hide(status, None)
    {
        return None;
    }
    let error = ProxyError::from_classification(
        Classification::unrecognized()
            .with_status(status)
            .with_request_sent(RequestSent::MaybeSent),
    );
    from_copy(pending, error, Some(status), Hides::OriginError(status)).ok()
}

/// A stale copy in place of the error the layer would answer a GET or HEAD with (a 500, 502,
/// 503 or 504, RFC 5861's errors), when the store has one that may answer; else the error,
/// untouched. `received` is the origin's status when the error stands for one.
pub(super) fn from_copy<B>(
    pending: &Pending,
    error: ProxyError,
    received: Option<StatusCode>,
    hides: Hides,
) -> Result<Response<GatewayBody<B>>, ProxyError> {
    let (Some(store), Some(request)) = (&pending.config.stale, pending.facts.stale()) else {
        return Err(error);
    };
    let hidden = error.status();
    // A copy stands in only for the upstream's failure: never for what a client did.
    if !error.fault().is_upstream() || !Store::may_hide(hidden, error.kind()) {
        return Err(error);
    }
    let Some(answer) = store.answer(request, hides) else {
        return Err(error);
    };
    let config = &pending.config;
    let kind = error.kind();
    let plain = || plain_member(config, kind, received);
    let member = detailed_member(config, &error, received, plain).unwrap_or_else(plain);
    let age = answer.age;
    let headers = head::copy_head(
        answer.headers(),
        age,
        answer.ttl(),
        &config.proxy_status.get(None),
        hidden,
        member,
    );
    let (sent, body) = answer.into_parts();
    trace::record_stale(
        &pending.span,
        &trace::StaleAnswer {
            error_type: match kind {
                Some(kind) => kind.token(),
                None => hidden.as_str(),
            },
            sent,
            age,
            cause: StdError::source(&error),
        },
    );
    #[cfg(feature = "metrics")]
    crate::metrics::stale_served(
        config.metrics.as_ref(),
        pending.facts.metrics.as_ref(),
        sent,
        kind,
        hidden,
    );
    let mut response = Response::new(GatewayBody::generated(body));
    *response.status_mut() = sent;
    *response.headers_mut() = headers;
    response.extensions_mut().insert(StaleCopy::new(age, error));
    // An outer layer leaves it alone, as it leaves a generated error.
    response.extensions_mut().insert(Generated);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::header::HeaderValue;

    use super::*;
    use crate::config::Settings;
    use crate::kind::ProxyErrorKind;
    use crate::respond::tests::{body_of, get, origin, pending};
    use crate::respond::{Outcome, finish, from_response};

    /// Settings with a store that keeps a page for a minute past its freshness; and the store.
    fn storing() -> (Settings, Store) {
        let store = Store::new().default_window(Duration::from_secs(60));
        let settings = Settings {
            stale: Some(store.clone()),
            ..Settings::default()
        };
        (settings, store)
    }

    fn request() -> http::Request<()> {
        get(&[("host", "site.example")])
    }

    /// Has the store keep the page the origin sends for `request()`.
    async fn store_page(settings: &Settings, cache_control: &'static str) {
        let mut page = origin(StatusCode::OK, "the page");
        page.headers_mut()
            .insert("cache-control", HeaderValue::from_static(cache_control));
        let answer = from_response(&mut pending(settings.clone(), &request()), page);
        assert_eq!(body_of(answer).await, "the page");
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_answers_in_place_of_the_upstreams_failure() {
        let (settings, store) = storing();
        store_page(&settings, "max-age=1").await;
        assert_eq!(store.len(), 1);
        tokio::time::advance(Duration::from_secs(3)).await;

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let answer = finish::<http_body_util::Full<Bytes>>(
            &mut pending(settings, &request()),
            Outcome::Failed(Box::new(refused)),
        );
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["age"], "3");
        assert_eq!(
            answer.headers()["proxy-status"],
            "gateway; error=connection_refused"
        );
        assert!(
            answer.headers()["cache-status"]
                .to_str()
                .unwrap()
                .starts_with("gateway; fwd=stale; fwd-status=502")
        );
        let from_copy = answer.extensions().get::<StaleCopy>().unwrap();
        assert_eq!(
            from_copy.error().kind(),
            Some(ProxyErrorKind::ConnectionRefused)
        );
        assert_eq!(body_of(answer).await, "the page");
    }

    #[tokio::test(start_paused = true)]
    async fn an_origin_error_is_hidden_only_when_the_origin_asked() {
        for (cache_control, hidden) in
            [("max-age=1", false), ("max-age=1, stale-if-error=60", true)]
        {
            let (settings, _store) = storing();
            store_page(&settings, cache_control).await;
            tokio::time::advance(Duration::from_secs(3)).await;
            let failed = origin(StatusCode::SERVICE_UNAVAILABLE, "origin error");
            let answer = from_response(&mut pending(settings, &request()), failed);
            if hidden {
                assert_eq!(answer.status(), StatusCode::OK, "{cache_control}");
                assert_eq!(
                    answer.headers()["proxy-status"],
                    "gateway; received-status=503"
                );
                assert_eq!(body_of(answer).await, "the page");
            } else {
                assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(body_of(answer).await, "origin error");
            }
        }
    }
}
