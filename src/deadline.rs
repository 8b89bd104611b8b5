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
//!
//! Not every limit that runs out is the upstream's fault ([`TimedOut::is_upstreams`]): a gRPC
//! caller's own deadline is the caller's ([`Limit::Caller`]), and a response deadline that ran out
//! while the gateway waited on its client to read, not on the origin, is the client's. Either is
//! answered as any timeout is, but a memory across requests (the health layer) must not be moved by
//! what one client controls.
//!
//! A limit too long to be reached (`Duration::MAX`) is no limit: no due time is computed that
//! could overflow.

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
    /// The upstream timeout: time until the response head.
    Head(Duration),
    /// A gRPC caller's own deadline (`grpc-timeout`), when it is sooner than the upstream
    /// timeout: time until the response head. The caller's limit, never the upstream's failure.
    Caller(Duration),
    /// The read timeout: the longest silence between two frames of the body.
    Read(Duration),
    /// The response deadline: head and body together.
    Response(Duration),
}

/// When the whole response must be over, set when the request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseDeadline {
    started: Instant,
    after: Duration,
}

impl ResponseDeadline {
    /// Starts the clock: the deadline is `after` from now.
    pub(crate) fn start(after: Duration) -> Self {
        ResponseDeadline {
            started: Instant::now(),
            after,
        }
    }

    /// When it runs out; `None` for a deadline too far away for the clock to name (never).
    fn due(self) -> Option<(Instant, Limit)> {
        due(self.started, Limit::Response(self.after))
    }
}

impl Limit {
    /// Its configured length.
    fn length(self) -> Duration {
        match self {
            Limit::Head(after)
            | Limit::Caller(after)
            | Limit::Read(after)
            | Limit::Response(after) => after,
        }
    }
}

/// When `limit`, counted from `from`, runs out; `None` when that is beyond what the clock can
/// name, which is never.
fn due(from: Instant, limit: Limit) -> Option<(Instant, Limit)> {
    from.checked_add(limit.length()).map(|at| (at, limit))
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
    /// Whether it ran out while the gateway waited on its client to read the body, not on the
    /// origin: the response deadline had passed before the current wait on the origin began.
    waiting_on_client: bool,
}

impl TimedOut {
    /// The RFC 9209 kind: a body that went silent is `connection_read_timeout`, a head or a whole
    /// response that did not come in time `http_response_timeout`. Whoever's limit it was, the
    /// client is answered the same way.
    pub(crate) fn kind(self) -> ProxyErrorKind {
        match self.limit {
            Limit::Read(_) => ProxyErrorKind::ConnectionReadTimeout,
            Limit::Head(_) | Limit::Caller(_) | Limit::Response(_) => {
                ProxyErrorKind::HttpResponseTimeout
            }
        }
    }

    /// Whether it counts against the upstream: one of the operator's limits ran out while the
    /// gateway waited on the origin. A gRPC caller's own deadline, or a response deadline that
    /// ran out while the gateway waited on a client that reads slowly, is the client's.
    pub(crate) fn is_upstreams(self) -> bool {
        !matches!(self.limit, Limit::Caller(_)) && !self.waiting_on_client
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
            (Limit::Caller(after), _) => write!(
                f,
                "upstream sent no response head within the caller's own deadline of {after:?} (grpc-timeout)"
            ),
            (Limit::Response(after), false) => write!(
                f,
                "upstream sent no response head within the response deadline of {after:?}"
            ),
            (Limit::Response(after), true) if self.waiting_on_client => write!(
                f,
                "response not complete within {after:?} (response deadline), which ran out while the client was still reading"
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
    /// the response deadline. The deadline itself is not kept here (the request's future holds it
    /// once, for the body too): `postpone` is given it.
    pub(crate) struct HeadClock {
        #[pin]
        timer: Option<Sleep>,
        limit: PackedLimit,
    }
}

/// A [`Limit`] in 16 bytes rather than 24: with it, the head clock is small enough to be moved
/// without a call to `memcpy` (it is moved on its way into the request's future).
#[derive(Debug, Clone, Copy)]
struct PackedLimit {
    secs: u64,
    nanos: u32,
    kind: u8,
}

impl PackedLimit {
    fn pack(limit: Limit) -> Self {
        let (kind, after) = match limit {
            Limit::Head(after) => (0, after),
            Limit::Caller(after) => (1, after),
            Limit::Read(after) => (2, after),
            Limit::Response(after) => (3, after),
        };
        PackedLimit {
            secs: after.as_secs(),
            nanos: after.subsec_nanos(),
            kind,
        }
    }

    fn unpack(self) -> Limit {
        let after = Duration::new(self.secs, self.nanos);
        match self.kind {
            0 => Limit::Head(after),
            1 => Limit::Caller(after),
            2 => Limit::Read(after),
            _ => Limit::Response(after),
        }
    }
}

impl HeadClock {
    /// The clock for a head due within `head` (the upstream timeout, [`Limit::Head`], or a gRPC
    /// caller's own deadline, [`Limit::Caller`]), under the whole response's `deadline`. The clock
    /// is read once (by the deadline's start, when there is one).
    pub(crate) fn new(head: Option<Limit>, deadline: Option<ResponseDeadline>) -> Self {
        let started = match (deadline, head) {
            (Some(deadline), _) => deadline.started,
            // The usual case, the head's limit alone: no limits to compare, and the clock read
            // by the timer itself. A limit too long for the clock to name is a timer tokio sets
            // decades away: never reached.
            (None, Some(limit)) => {
                return HeadClock {
                    timer: Some(tokio::time::sleep(limit.length())),
                    limit: PackedLimit::pack(limit),
                };
            }
            (None, None) => return HeadClock::off(),
        };
        let head = head.and_then(|limit| due(started, limit));
        match sooner(head, deadline.and_then(ResponseDeadline::due)) {
            Some((due, limit)) => HeadClock {
                timer: Some(tokio::time::sleep_until(due)),
                limit: PackedLimit::pack(limit),
            },
            None => HeadClock::off(),
        }
    }

    /// The upstream timeout of `after` now runs out at `due` (the time the gateway spent waiting
    /// on the client is not the upstream's); the response `deadline` (the one the clock was made
    /// with) still fires first if it is sooner.
    pub(crate) fn postpone(
        self: Pin<&mut Self>,
        due: Instant,
        after: Duration,
        deadline: Option<ResponseDeadline>,
    ) {
        let mut this = self.project();
        let head = Some((due, Limit::Head(after)));
        let Some((due, limit)) = sooner(head, deadline.and_then(ResponseDeadline::due)) else {
            return;
        };
        *this.limit = PackedLimit::pack(limit);
        match this.timer.as_mut().as_pin_mut() {
            Some(timer) => timer.reset(due),
            None => this.timer.set(Some(tokio::time::sleep_until(due))),
        }
    }

    /// A clock that never fires.
    pub(crate) fn off() -> Self {
        HeadClock {
            timer: None,
            limit: PackedLimit::pack(Limit::Head(Duration::ZERO)),
        }
    }

    /// Ready once the limit has run out.
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TimedOut> {
        let this = self.project();
        match this.timer.as_pin_mut() {
            // The gateway waits on the origin for the whole head: whatever ran out, the client
            // had no part in it.
            Some(timer) => timer.poll(cx).map(|()| TimedOut {
                limit: this.limit.unpack(),
                after_head: false,
                waiting_on_client: false,
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
    pub(crate) fn is_off(&self) -> bool {
        self.read_timeout.is_none() && self.response_deadline.is_none()
    }

    /// When the wait that began at `waiting_since` must end, and which limit ends it.
    fn due(&self, waiting_since: Instant) -> Option<(Instant, Limit)> {
        let read = self
            .read_timeout
            .and_then(|after| due(waiting_since, Limit::Read(after)));
        sooner(read, self.response_deadline.and_then(ResponseDeadline::due))
    }
}

pin_project! {
    /// The running clock of one body.
    ///
    /// One timer per body, created the first time the body makes the gateway wait and moved
    /// forward only when it fires early: a frame costs a store, a wait costs one clock read, and
    /// nothing allocates (the timer lives inline in the box of the body's parts, which is used
    /// again by the next body).
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
                // The response deadline runs while the client reads too. When it had passed
                // before this wait on the origin began, the time went to a client that did not
                // ask for the next frame: its fault, not the origin's.
                let waiting_on_client = matches!(limit, Limit::Response(_)) && waiting_since > due;
                return Poll::Ready(TimedOut {
                    limit,
                    after_head: true,
                    waiting_on_client,
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

    /// A limit that ran out while the gateway waited on the origin.
    fn timed_out(limit: Limit, after_head: bool) -> TimedOut {
        TimedOut {
            limit,
            after_head,
            waiting_on_client: false,
        }
    }

    #[test]
    fn the_sooner_limit_decides_and_a_tie_goes_to_the_deadline() {
        let now = Instant::now();
        let deadline = ResponseDeadline {
            started: now,
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
        let head = timed_out(Limit::Head(SECOND), false);
        assert_eq!(head.kind(), ProxyErrorKind::HttpResponseTimeout);
        assert_eq!(head.to_string(), "upstream sent no response head within 1s");
        let read = timed_out(Limit::Read(SECOND), true);
        assert_eq!(read.kind(), ProxyErrorKind::ConnectionReadTimeout);
        let cut = timed_out(Limit::Response(SECOND), true);
        assert_eq!(cut.kind(), ProxyErrorKind::HttpResponseTimeout);
        assert!(cut.to_string().contains("not complete"), "{cut}");
        for upstreams in [head, read, cut] {
            assert!(upstreams.is_upstreams(), "{upstreams}");
        }

        // The caller's own deadline is answered as a timeout, and is the caller's.
        let callers = timed_out(Limit::Caller(Duration::from_millis(1)), false);
        assert_eq!(callers.kind(), ProxyErrorKind::HttpResponseTimeout);
        assert!(!callers.is_upstreams());
        assert!(callers.to_string().contains("caller's own deadline of 1ms"));
        let slow_reader = TimedOut {
            waiting_on_client: true,
            ..cut
        };
        assert_eq!(slow_reader.kind(), ProxyErrorKind::HttpResponseTimeout);
        assert!(!slow_reader.is_upstreams());
        assert!(slow_reader.to_string().contains("client"), "{slow_reader}");
    }

    fn poll_head(clock: Pin<&mut HeadClock>) -> Poll<TimedOut> {
        clock.poll_expired(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn the_head_clock_fires_at_the_sooner_limit() {
        // The upstream timeout first.
        let mut clock = Box::pin(HeadClock::new(
            Some(Limit::Head(SECOND)),
            Some(ResponseDeadline::start(3 * SECOND)),
        ));
        tokio::time::advance(SECOND - Duration::from_millis(1)).await;
        assert!(poll_head(clock.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            poll_head(clock.as_mut()),
            Poll::Ready(timed_out(Limit::Head(SECOND), false))
        );

        // The deadline first, and on a tie.
        for timeout in [Some(5 * SECOND), Some(2 * SECOND), None] {
            let mut clock = Box::pin(HeadClock::new(
                timeout.map(Limit::Head),
                Some(ResponseDeadline::start(2 * SECOND)),
            ));
            tokio::time::advance(2 * SECOND).await;
            assert_eq!(
                poll_head(clock.as_mut()),
                Poll::Ready(timed_out(Limit::Response(2 * SECOND), false)),
                "{timeout:?}"
            );
        }

        // Neither: never.
        let mut off = Box::pin(HeadClock::new(None, None));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(poll_head(off.as_mut()).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_callers_deadline_fires_as_the_callers_and_the_operators_limits_as_the_upstreams() {
        let mut clock = Box::pin(HeadClock::new(
            Some(Limit::Caller(Duration::from_millis(1))),
            Some(ResponseDeadline::start(SECOND)),
        ));
        assert!(poll_head(clock.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        let Poll::Ready(fired) = poll_head(clock.as_mut()) else {
            panic!("the caller's deadline is over");
        };
        assert_eq!(fired.limit, Limit::Caller(Duration::from_millis(1)));
        assert!(!fired.is_upstreams());

        // The operator's response deadline, sooner than the caller's: the upstream's.
        let mut clock = Box::pin(HeadClock::new(
            Some(Limit::Caller(3 * SECOND)),
            Some(ResponseDeadline::start(SECOND)),
        ));
        tokio::time::advance(SECOND).await;
        let Poll::Ready(fired) = poll_head(clock.as_mut()) else {
            panic!("the response deadline is over");
        };
        assert_eq!(fired.limit, Limit::Response(SECOND));
        assert!(fired.is_upstreams());
    }

    #[tokio::test(start_paused = true)]
    async fn limits_too_long_for_the_clock_never_fire_and_never_overflow() {
        let mut head = Box::pin(HeadClock::new(
            Some(Limit::Head(Duration::MAX)),
            Some(ResponseDeadline::start(Duration::MAX)),
        ));
        let mut caller = Box::pin(HeadClock::new(Some(Limit::Caller(Duration::MAX)), None));
        let mut body = Box::pin(BodyClock::new(BodyLimits {
            read_timeout: Some(Duration::MAX),
            response_deadline: Some(ResponseDeadline::start(Duration::MAX)),
        }));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..3 {
            assert!(poll_head(head.as_mut()).is_pending());
            assert!(poll_head(caller.as_mut()).is_pending());
            assert!(body.as_mut().poll_expired(&mut cx).is_pending());
            tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        }
        // One long limit beside a short one: the short one still fires.
        let mut short = Box::pin(HeadClock::new(
            Some(Limit::Head(SECOND)),
            Some(ResponseDeadline::start(Duration::MAX)),
        ));
        tokio::time::advance(SECOND).await;
        assert_eq!(
            poll_head(short.as_mut()),
            Poll::Ready(timed_out(Limit::Head(SECOND), false))
        );
    }

    #[test]
    fn the_drop_reason_holds_only_while_the_drop_runs() {
        let head = timed_out(Limit::Head(SECOND), false);
        assert_eq!(dropped_for(), None);
        let mut seen = None;
        drop_timed_out(head, || seen = dropped_for());
        assert_eq!(seen, Some(head));
        assert_eq!(dropped_for(), None, "reset after the drop");

        // Nested: the inner reason wins inside, the outer one comes back after.
        let read = timed_out(Limit::Read(SECOND), true);
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
            Poll::Ready(timed_out(Limit::Read(SECOND), true))
        );
    }

    /// A body clock under a 2 s response deadline (and no read timeout), started now.
    fn deadline_clock() -> Pin<Box<BodyClock>> {
        Box::pin(BodyClock::new(BodyLimits {
            read_timeout: None,
            response_deadline: Some(ResponseDeadline::start(2 * SECOND)),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_runs_out_while_the_origin_keeps_the_gateway_waiting_is_the_upstreams()
    {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // The origin sends nothing from the start.
        let mut clock = deadline_clock();
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        tokio::time::advance(2 * SECOND).await;
        let Poll::Ready(fired) = clock.as_mut().poll_expired(&mut cx) else {
            panic!("the deadline is over");
        };
        assert!(fired.is_upstreams(), "{fired}");

        // The client read slowly at first, but the origin went silent before the deadline: the
        // wait on the origin that the deadline ends began in time.
        let mut clock = deadline_clock();
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(100)).await;
        let Poll::Ready(fired) = clock.as_mut().poll_expired(&mut cx) else {
            panic!("the deadline is over");
        };
        assert!(fired.is_upstreams(), "{fired}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_ran_out_while_the_client_was_reading_is_the_clients() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut clock = deadline_clock();
        // A first short wait on the origin, then a frame.
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(100)).await;
        clock.as_mut().frame_arrived();
        // The client does not ask for the next frame until well after the deadline.
        tokio::time::advance(3 * SECOND).await;
        let Poll::Ready(fired) = clock.as_mut().poll_expired(&mut cx) else {
            panic!("the deadline is over");
        };
        assert_eq!(fired.limit, Limit::Response(2 * SECOND));
        assert_eq!(fired.kind(), ProxyErrorKind::HttpResponseTimeout);
        assert!(!fired.is_upstreams(), "{fired}");

        // The same with a read timeout as well: the read timeout never counts the client's time,
        // and the deadline is still the client's.
        let mut clock = Box::pin(BodyClock::new(BodyLimits {
            read_timeout: Some(SECOND),
            response_deadline: Some(ResponseDeadline::start(2 * SECOND)),
        }));
        assert!(clock.as_mut().poll_expired(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(900)).await;
        clock.as_mut().frame_arrived();
        tokio::time::advance(5 * SECOND).await;
        let Poll::Ready(fired) = clock.as_mut().poll_expired(&mut cx) else {
            panic!("the deadline is over");
        };
        assert_eq!(fired.limit, Limit::Response(2 * SECOND));
        assert!(!fired.is_upstreams(), "{fired}");
    }
}
