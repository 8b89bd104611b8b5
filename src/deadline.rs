//! The clocks on an upstream's answer: the upstream timeout on the head, the read timeout between
//! body frames, and the response deadline on both.
//!
//! Every clock here keeps its `Sleep` inline next to the [`Limit`] it stands for, so that when
//! it fires there is nothing to work out again: the limit says what the error is. Where two
//! limits apply, the timer is set for the sooner one ([`sooner`]); a tie goes to the response
//! deadline, the limit the operator set for the whole answer.
//!
//! When a limit runs out, the upstream's future (or body) is dropped, not failed: a layer inside
//! sees only the drop. [`drop_timed_out`] says why while it happens, so that such a layer (the
//! [upstream health](crate::health) layer) can tell a timeout from a client that went away.

use std::cell::Cell;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::kind::ProxyErrorKind;

/// One limit on an upstream's answer, with its configured length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The upstream timeout (or a gRPC caller's own deadline): time until the response head.
    Head(Duration),
    /// The read timeout: the longest silence between two frames of the body.
    Read(Duration),
    /// The response deadline: head and body together.
    Response(Duration),
}

/// When the whole response must be over, set when the request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseDeadline {
    at: Instant,
    after: Duration,
}

impl ResponseDeadline {
    /// Starts the clock: the deadline is `after` from now.
    pub(crate) fn start(after: Duration) -> Self {
        ResponseDeadline {
            at: Instant::now() + after,
            after,
        }
    }

    fn due(self) -> (Instant, Limit) {
        (self.at, Limit::Response(self.after))
    }

    /// When the clock was started: the request's arrival, without reading the clock again.
    fn started(self) -> Instant {
        self.at - self.after
    }
}

/// The sooner of two due times and the limit behind it; on a tie, `tie_winner`.
fn sooner(
    other: Option<(Instant, Limit)>,
    tie_winner: Option<(Instant, Limit)>,
) -> Option<(Instant, Limit)> {
    match (other, tie_winner) {
        (Some(other), Some(winner)) => Some(if other.0 < winner.0 { other } else { winner }),
        (other, winner) => winner.or(other),
    }
}

/// A limit ran out: the error the head's future, or the body, ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut {
    limit: Limit,
    /// Whether the response head had arrived (the body was cut).
    after_head: bool,
}

impl TimedOut {
    /// The RFC 9209 kind: a body that went silent is `connection_read_timeout`, a head or a whole
    /// response that did not come in time `http_response_timeout`.
    pub(crate) fn kind(self) -> ProxyErrorKind {
        match self.limit {
            Limit::Read(_) => ProxyErrorKind::ConnectionReadTimeout,
            Limit::Head(_) | Limit::Response(_) => ProxyErrorKind::HttpResponseTimeout,
        }
    }
}

impl TimedOut {
    /// The upstream timeout that ran out, if it was that limit.
    pub(crate) fn upstream_timeout(self) -> Option<Duration> {
        match self.limit {
            Limit::Head(after) => Some(after),
            _ => None,
        }
    }

    /// Whether it was the response deadline that ran out.
    pub(crate) fn is_response_deadline(self) -> bool {
        matches!(self.limit, Limit::Response(_))
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.limit, self.after_head) {
            (Limit::Head(after), _) => {
                write!(f, "upstream sent no response head within {after:?}")
            }
            (Limit::Response(after), false) => write!(
                f,
                "upstream sent no response head within the response deadline of {after:?}"
            ),
            (Limit::Response(after), true) => write!(
                f,
                "upstream response not complete within {after:?} (response deadline)"
            ),
            (Limit::Read(after), _) => {
                write!(f, "upstream sent no body data for {after:?} (read timeout)")
            }
        }
    }
}

impl StdError for TimedOut {}

thread_local! {
    /// Set while an upstream's future or body is dropped because a limit ran out.
    static DROPPED_FOR: Cell<Option<TimedOut>> = const { Cell::new(None) };
}

/// Runs `drop`, which drops an upstream's future or body, with `timed_out` as the reason that
/// [`dropped_for`] reports to whatever is dropped inside it.
pub(crate) fn drop_timed_out(timed_out: TimedOut, drop: impl FnOnce()) {
    /// Puts back the reason that was set before, even if a drop panics.
    struct Restore(Option<TimedOut>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DROPPED_FOR.set(self.0);
        }
    }
    let _restore = Restore(DROPPED_FOR.replace(Some(timed_out)));
    drop();
}

/// Why the future or body being dropped right now is dropped: the limit that ran out, or `None`
/// when nothing timed out (its client went away, or it was simply done with).
pub(crate) fn dropped_for() -> Option<TimedOut> {
    DROPPED_FOR.get()
}

pin_project! {
    /// The clock on the response head: one timer, set for the sooner of the upstream timeout and
    /// the response deadline.
    pub(crate) struct HeadClock {
        #[pin]
        timer: Option<Sleep>,
        limit: Limit,
        // Kept for `postpone`: the upstream timeout may move, the response deadline never does.
        deadline: Option<ResponseDeadline>,
    }
}

impl HeadClock {
    /// The clock for a head due within `timeout`, under the whole response's `deadline`. The
    /// clock is read once (by the deadline's start, when there is one).
    pub(crate) fn new(timeout: Option<Duration>, deadline: Option<ResponseDeadline>) -> Self {
        let started = match deadline {
            Some(deadline) => deadline.started(),
            None if timeout.is_some() => Instant::now(),
            None => return HeadClock::off(),
        };
        let head = timeout.map(|after| (started + after, Limit::Head(after)));
        match sooner(head, deadline.map(ResponseDeadline::due)) {
            Some((due, limit)) => HeadClock {
                timer: Some(tokio::time::sleep_until(due)),
                limit,
                deadline,
            },
            None => HeadClock::off(),
        }
    }

    /// The upstream timeout of `after` now runs out at `due` (the time the gateway spent waiting
    /// on the client is not the upstream's); the response deadline still fires first if it is
    /// sooner.
    pub(crate) fn postpone(self: Pin<&mut Self>, due: Instant, after: Duration) {
        let mut this = self.project();
        let head = Some((due, Limit::Head(after)));
        let Some((due, limit)) = sooner(head, this.deadline.map(ResponseDeadline::due)) else {
            return;
        };
        *this.limit = limit;
        match this.timer.as_mut().as_pin_mut() {
            Some(timer) => timer.reset(due),
            None => this.timer.set(Some(tokio::time::sleep_until(due))),
        }
    }

    /// A clock that never fires.
    pub(crate) fn off() -> Self {
        HeadClock {
            timer: None,
            limit: Limit::Head(Duration::ZERO),
            deadline: None,
        }
    }

    /// Ready once the limit has run out.
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TimedOut> {
        let this = self.project();
        match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).map(|()| TimedOut {
                limit: *this.limit,
                after_head: false,
            }),
            None => Poll::Pending,
        }
    }
}

/// The limits on one body, decided when the response head arrives.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodyLimits {
    /// The longest the origin may keep the gateway waiting for a frame.
    pub(crate) read_timeout: Option<Duration>,
    /// When the whole response must be over.
    pub(crate) response_deadline: Option<ResponseDeadline>,
}

impl BodyLimits {
    fn is_off(&self) -> bool {
        self.read_timeout.is_none() && self.response_deadline.is_none()
    }

    /// When the wait that began at `waiting_since` must end, and which limit ends it.
    fn due(&self, waiting_since: Instant) -> Option<(Instant, Limit)> {
        let read = self
            .read_timeout
            .map(|after| (waiting_since + after, Limit::Read(after)));
        sooner(read, self.response_deadline.map(ResponseDeadline::due))
    }
}

pin_project! {
    /// The running clock of one body.
    ///
    /// One timer per body, created the first time the body makes the gateway wait and moved
    /// forward only when it fires early: a frame costs a store, a wait costs one clock read, and
    /// nothing allocates (the timer lives inline in the body).
    pub(crate) struct BodyClock {
        limits: BodyLimits,
        // When the gateway began waiting on the origin for the next frame; `None` while it is
        // not waiting (a frame just arrived, or the server has not asked for the next one).
        waiting_since: Option<Instant>,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl BodyClock {
    pub(crate) fn new(limits: BodyLimits) -> Self {
        BodyClock {
            limits,
            waiting_since: None,
            timer: None,
        }
    }

    /// A frame arrived: the next wait starts from scratch.
    #[inline]
    pub(crate) fn frame_arrived(self: Pin<&mut Self>) {
        *self.project().waiting_since = None;
    }

    /// The origin made the gateway wait. Ready once a limit has run out.
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TimedOut> {
        let mut this = self.project();
        if this.limits.is_off() {
            return Poll::Pending;
        }
        let waiting_since = *this.waiting_since.get_or_insert_with(Instant::now);
        let Some((due, limit)) = this.limits.due(waiting_since) else {
            return Poll::Pending;
        };
        let mut timer = match this.timer.as_mut().as_pin_mut() {
            Some(timer) => timer,
            None => {
                this.timer.set(Some(tokio::time::sleep_until(due)));
                this.timer.as_mut().as_pin_mut().expect("just set")
            }
        };
        // A timer set for an earlier wait fires early; it is moved to `due` then, not on every
        // frame. A due date that came closer (the response deadline) moves it at once.
        if timer.deadline() > due {
            timer.as_mut().reset(due);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= due {
                return Poll::Ready(TimedOut {
                    limit,
                    after_head: true,
                });
            }
            timer.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_sooner_limit_decides_and_a_tie_goes_to_the_deadline() {
        let now = Instant::now();
        let deadline = ResponseDeadline {
            at: now + 2 * SECOND,
            after: 2 * SECOND,
        };
        let limits = BodyLimits {
            read_timeout: Some(5 * SECOND),
            response_deadline: Some(deadline),
        };
        assert_eq!(
            limits.due(now),
            Some((now + 2 * SECOND, Limit::Response(2 * SECOND)))
        );
        assert_eq!(
            limits.due(now - 4 * SECOND),
            Some((now + SECOND, Limit::Read(5 * SECOND)))
        );
        assert_eq!(
            limits.due(now - 3 * SECOND),
            Some((now + 2 * SECOND, Limit::Response(2 * SECOND))),
            "a tie"
        );
        assert!(BodyLimits::default().due(now).is_none());
    }

    #[test]
    fn what_a_timeout_is_called() {
        let head = TimedOut {
            limit: Limit::Head(SECOND),
            after_head: false,
        };
        assert_eq!(head.kind(), ProxyErrorKind::HttpResponseTimeout);
        assert_eq!(head.to_string(), "upstream sent no response head within 1s");
        let read = TimedOut {
            limit: Limit::Read(SECOND),
            after_head: true,
        };
        assert_eq!(read.kind(), ProxyErrorKind::ConnectionReadTimeout);
        let cut = TimedOut {
            limit: Limit::Response(SECOND),
            after_head: true,
        };
        assert_eq!(cut.kind(), ProxyErrorKind::HttpResponseTimeout);
        assert!(cut.to_string().contains("not complete"), "{cut}");
    }

    fn poll_head(clock: Pin<&mut HeadClock>) -> Poll<TimedOut> {
        clock.poll_expired(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_clock_fires_at_the_sooner_limit() {
        // The upstream timeout first.
        let mut clock = Box::pin(HeadClock::new(
            Some(SECOND),
            Some(ResponseDeadline::start(3 * SECOND)),
        ));
        tokio::time::advance(SECOND - Duration::from_millis(1)).await;
        assert!(poll_head(clock.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            poll_head(clock.as_mut()),
            Poll::Ready(TimedOut {
                limit: Limit::Head(SECOND),
                after_head: false
            })
        );

        // The deadline first, and on a tie.
        for timeout in [Some(5 * SECOND), Some(2 * SECOND), None] {
            let mut clock = Box::pin(HeadClock::new(
                timeout,
                Some(ResponseDeadline::start(2 * SECOND)),
            ));
            tokio::time::advance(2 * SECOND).await;
            assert_eq!(
                poll_head(clock.as_mut()),
                Poll::Ready(TimedOut {
                    limit: Limit::Response(2 * SECOND),
                    after_head: false
                }),
                "{timeout:?}"
            );
        }

        // Neither: never.
        let mut off = Box::pin(HeadClock::new(None, None));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(poll_head(off.as_mut()).is_pending());
    }

    #[test]
    fn the_drop_reason_holds_only_while_the_drop_runs() {
        let head = TimedOut {
            limit: Limit::Head(SECOND),
            after_head: false,
        };
        assert_eq!(dropped_for(), None);
        let mut seen = None;
        drop_timed_out(head, || seen = dropped_for());
        assert_eq!(seen, Some(head));
        assert_eq!(dropped_for(), None, "reset after the drop");

        // Nested: the inner reason wins inside, the outer one comes back after.
        let read = TimedOut {
            limit: Limit::Read(SECOND),
            after_head: true,
        };
        let mut inner = None;
        let mut outer = None;
        drop_timed_out(head, || {
            drop_timed_out(read, || inner = dropped_for());
            outer = dropped_for();
        });
        assert_eq!((inner, outer), (Some(read), Some(head)));

        // A panicking drop does not leave the reason set.
        let panicked = std::panic::catch_unwind(|| drop_timed_out(head, || panic!("in drop")));
        assert!(panicked.is_err());
        assert_eq!(dropped_for(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_restarts_the_body_clock_and_a_frame_stops_it() {
        let limits = BodyLimits {
            read_timeout: Some(SECOND),
            response_deadline: None,
        };
        let mut clock = Box::pin(BodyClock::new(limits));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        // A frame arrives: the next wait has a whole second again, though the timer was set
        // for the first one.
        clock.as_mut().frame_arrived();
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(700)).await;
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            clock.as_mut().poll_expired(&mut cx),
            Poll::Ready(TimedOut {
                limit: Limit::Read(SECOND),
                after_head: true
            })
        );
    }
}
