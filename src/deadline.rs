//! The clock on an origin's body: the read timeout between frames, and the whole-response
//! deadline.
//!
//! One timer per body, created the first time the body makes the gateway wait and moved forward
//! only when it fires early: a frame costs a store, a wait costs one clock read, and nothing
//! allocates (the timer lives inline in the body).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::kind::ProxyErrorKind;

/// The limits on one body, decided when the response head arrives.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BodyLimits {
    /// The longest the origin may keep the gateway waiting for a frame.
    pub(crate) read_timeout: Option<Duration>,
    /// When the whole response must be over, and the configured length of that deadline.
    pub(crate) response_deadline: Option<(Instant, Duration)>,
}

impl BodyLimits {
    fn is_off(&self) -> bool {
        self.read_timeout.is_none() && self.response_deadline.is_none()
    }

    /// When the wait that began at `waiting_since` must end, and which limit ends it.
    fn due(&self, waiting_since: Instant) -> Option<(Instant, BodyTimedOut)> {
        let read = self
            .read_timeout
            .map(|after| (waiting_since + after, BodyTimedOut::Read(after)));
        let whole = self
            .response_deadline
            .map(|(at, after)| (at, BodyTimedOut::Response(after)));
        match (read, whole) {
            (Some(read), Some(whole)) => Some(if whole.0 <= read.0 { whole } else { read }),
            (read, whole) => read.or(whole),
        }
    }
}

pin_project! {
    /// The running clock of one body.
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
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BodyTimedOut> {
        let mut this = self.project();
        if this.limits.is_off() {
            return Poll::Pending;
        }
        let waiting_since = *this.waiting_since.get_or_insert_with(Instant::now);
        let Some((due, expired)) = this.limits.due(waiting_since) else {
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
                return Poll::Ready(expired);
            }
            timer.as_mut().reset(due);
        }
    }
}

/// A limit on an origin's body ran out: the error the body ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyTimedOut {
    /// No frame within the read timeout.
    Read(Duration),
    /// The whole-response deadline passed.
    Response(Duration),
}

impl BodyTimedOut {
    pub(crate) fn kind(self) -> ProxyErrorKind {
        match self {
            BodyTimedOut::Read(_) => ProxyErrorKind::ConnectionReadTimeout,
            BodyTimedOut::Response(_) => ProxyErrorKind::HttpResponseTimeout,
        }
    }
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyTimedOut::Read(after) => {
                write!(f, "upstream sent no body data for {after:?} (read timeout)")
            }
            BodyTimedOut::Response(after) => {
                write!(
                    f,
                    "upstream response not complete within {after:?} (response deadline)"
                )
            }
        }
    }
}

impl StdError for BodyTimedOut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_limit_decides() {
        let now = Instant::now();
        let limits = BodyLimits {
            read_timeout: Some(Duration::from_secs(5)),
            response_deadline: Some((now + Duration::from_secs(2), Duration::from_secs(2))),
        };
        let (due, which) = limits.due(now).unwrap();
        assert_eq!(due, now + Duration::from_secs(2));
        assert_eq!(which.kind(), ProxyErrorKind::HttpResponseTimeout);
        let (due, which) = limits.due(now - Duration::from_secs(4)).unwrap();
        assert_eq!(due, now + Duration::from_secs(1));
        assert_eq!(which.kind(), ProxyErrorKind::ConnectionReadTimeout);
        assert!(BodyLimits::default().due(now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_restarts_the_clock_and_a_frame_stops_it() {
        let limits = BodyLimits {
            read_timeout: Some(Duration::from_secs(1)),
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
            Poll::Ready(BodyTimedOut::Read(Duration::from_secs(1)))
        );
    }
}
