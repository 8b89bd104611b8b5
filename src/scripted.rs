//! A body whose frames a test sends by hand, for the tests of the bodies that wrap one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

/// What a test sends: the next frame's data, or the error the body fails with.
pub(crate) type Frames = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

/// A body whose frames a test sends by hand; it ends when the sender is dropped.
pub(crate) struct Scripted(mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>);

impl Scripted {
    /// The body, and the sender of its frames.
    pub(crate) fn channel() -> (Frames, Scripted) {
        let (send, receive) = mpsc::unbounded_channel();
        (send, Scripted(receive))
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|r| r.map(Frame::data)))
    }
}
