//! The body and head of a generated error in the form the caller gets: the negotiated format, or
//! gRPC's own answer. Built once and kept where the answer depends on its form, kind and retry
//! hint alone.

use std::time::SystemTime;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderValue};

use super::head::{ErrorHead, grpc_reused, with_member};
use crate::cache::{Answer, MAX_KEPT_DELAY};
use crate::grpc::GrpcCode;
use crate::grpc::answer::{self as grpc_answer, GrpcStatus};
use crate::grpc::call::GrpcCall;
use crate::kind::ProxyErrorKind;
use crate::render::ErrorView;
use crate::render::negotiate::Format;
use crate::retry::after::RetryAfter;

/// The body in the negotiated format, and its head; `detailed` is our `Proxy-Status` member with
/// its details, if any.
pub(super) fn answer_negotiated(
    head: &ErrorHead<'_>,
    view: &ErrorView<'_>,
    retryable: bool,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let config = head.config;
    let format = head.format;
    let keep = if view.request_id.is_some() || config.templates.has_renderer() {
        Keep::Never
    } else {
        keep(head)
    };
    let build = |detailed: Option<HeaderValue>| {
        let body = config.templates.render(view, format);
        let headers = head.headers(&body, detailed);
        Answer { body, headers }
    };
    // A clone of the kept head costs the map's two allocations and no hashing.
    let kept = match keep {
        Keep::Never => {
            let built = build(detailed);
            return (built.body, built.headers);
        }
        Keep::BySlot => config
            .answers
            .get_or_build(format.index(), head.kind, retryable, || build(None)),
        Keep::ByDelay(seconds) => config.answers.get_or_build_delayed(
            format.index(),
            head.kind,
            retryable,
            seconds,
            || build(None),
        ),
    };
    (
        kept.body.clone(),
        with_member(kept.headers.clone(), detailed),
    )
}

/// A gRPC caller's answer ([`grpc_answer::body`], [`ErrorHead::grpc_headers`]): the error in
/// gRPC's own fields, with the same `Proxy-Status` and `Retry-After` as any generated error.
pub(super) fn answer_grpc(
    head: &ErrorHead<'_>,
    call: GrpcCall,
    code: GrpcCode,
    detail: &str,
    detailed: Option<HeaderValue>,
) -> (Bytes, HeaderMap) {
    let build = |detailed: Option<HeaderValue>| {
        // The delay the caller is told, an origin's own on a rewrite included.
        let pushback = head
            .retry_after_sent()
            .map(|after| after.delay_from(SystemTime::now()));
        let status = GrpcStatus::new(code, detail, pushback);
        let body = grpc_answer::body(call, &status);
        let headers = head.grpc_headers(call, &status, &body, detailed);
        Answer { body, headers }
    };
    // Kept once per framing, not per retry hint: a gRPC answer does not state the hint.
    let form = Format::ALL.len() + call.framing_index();
    let answers = &head.config.answers;
    let kept = match keep(head) {
        Keep::Never => {
            let built = build(detailed);
            return (built.body, built.headers);
        }
        Keep::BySlot => answers.get_or_build(form, head.kind, false, || build(None)),
        Keep::ByDelay(seconds) => {
            answers.get_or_build_delayed(form, head.kind, false, seconds, || build(None))
        }
    };
    (
        kept.body.clone(),
        grpc_reused(kept.headers.clone(), call, detailed),
    )
}

/// How much of a generated answer can be built once and kept.
enum Keep {
    /// Built every time.
    Never,
    /// It depends on the form, kind and retry hint alone.
    BySlot,
    /// It depends on those and on a delay of this many whole seconds that the error stated
    /// itself (the seconds until an unavailable upstream's next probe).
    ByDelay(u64),
}

/// Whether `head` (and the body for it) can be built once and kept, and under which key.
/// Not for a rewrite (it keeps the old response's fields), a status a classifier chose over
/// the kind's, a date (it changes by the second), or a delay of the error's own that is not
/// whole seconds or longer than [`MAX_KEPT_DELAY`].
fn keep(head: &ErrorHead<'_>) -> Keep {
    let plain = head.rewritten.is_none()
        && head.status
            == head
                .kind
                .map_or(StatusCode::BAD_GATEWAY, ProxyErrorKind::status);
    if !plain {
        return Keep::Never;
    }
    let configured = head.config.retry.retry_after(head.kind, head.status);
    match head.retry_after {
        Some(RetryAfter::At(_)) => Keep::Never,
        after if after == configured => Keep::BySlot,
        Some(RetryAfter::Delay(delay))
            if delay.subsec_nanos() == 0 && (1..=MAX_KEPT_DELAY).contains(&delay.as_secs()) =>
        {
            Keep::ByDelay(delay.as_secs())
        }
        _ => Keep::Never,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::config::{Config, Settings};
    use crate::testing::header_map;

    fn head(config: &Config) -> ErrorHead<'_> {
        ErrorHead {
            config,
            format: Format::ProblemJson,
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: Some(ProxyErrorKind::DestinationUnavailable),
            retry_after: None,
            received: None,
            rewritten: None,
        }
    }

    #[test]
    fn only_an_answer_that_depends_on_its_form_kind_and_whole_delay_is_kept() {
        let config = Config::new(Settings::default());
        let delay = |d: Duration| ErrorHead {
            retry_after: Some(RetryAfter::Delay(d)),
            ..head(&config)
        };
        assert!(matches!(keep(&head(&config)), Keep::BySlot));
        assert!(matches!(
            keep(&delay(Duration::from_secs(30))),
            Keep::ByDelay(30)
        ));
        assert!(matches!(
            keep(&delay(Duration::from_millis(1500))),
            Keep::Never
        ));
        assert!(matches!(
            keep(&delay(Duration::from_secs(MAX_KEPT_DELAY + 1))),
            Keep::Never
        ));
        let dated = ErrorHead {
            retry_after: Some(RetryAfter::At(SystemTime::UNIX_EPOCH)),
            ..head(&config)
        };
        assert!(matches!(keep(&dated), Keep::Never));
        let old = header_map(&[]);
        let rewrite = ErrorHead {
            rewritten: Some(&old),
            ..head(&config)
        };
        assert!(matches!(keep(&rewrite), Keep::Never));
        let chosen_status = ErrorHead {
            status: StatusCode::BAD_GATEWAY,
            ..head(&config)
        };
        assert!(matches!(keep(&chosen_status), Keep::Never));
    }

    #[test]
    fn a_kept_answer_is_served_again_with_this_answers_own_member() {
        let config = Config::new(Settings::default());
        let view = ErrorView {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: Some(ProxyErrorKind::DestinationUnavailable),
            detail: "down",
            request_id: None,
            retryable: true,
            retry_after_seconds: None,
            proxy: "gateway",
        };
        let (first, plain) = answer_negotiated(&head(&config), &view, true, None);
        let detailed = HeaderValue::from_static("gateway; error=destination_unavailable; x=1");
        let (second, headers) =
            answer_negotiated(&head(&config), &view, true, Some(detailed.clone()));
        // The same bytes: one body, kept.
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_eq!(
            plain["proxy-status"],
            "gateway; error=destination_unavailable"
        );
        assert_eq!(headers["proxy-status"], detailed);
        assert_eq!(headers["content-length"], plain["content-length"]);
    }
}
