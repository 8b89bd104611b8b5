//! What the unit tests share: a body whose frames a test sends by hand, and a capture of the
//! events a subscriber at `warn` would print.

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

/// The message of every event a subscriber filtered at `WARN` sees.
#[derive(Clone, Default)]
pub(crate) struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    /// Captures on this thread until the guard drops.
    pub(crate) fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt;

        let subscriber = tracing_subscriber::registry().with(
            self.clone()
                .with_filter(tracing::level_filters::LevelFilter::WARN),
        );
        let guard = tracing::subscriber::set_default(subscriber);
        // A callsite first met on another thread, while no subscriber was set, may have cached
        // "never": ask again now that this one is.
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// The messages seen so far.
    pub(crate) fn messages(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    *self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        self.0.lock().unwrap().push(message);
    }
}

/// A header map of `fields`, in order, each line appended.
pub(crate) fn header_map(fields: &[(&'static str, &'static str)]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in fields {
        headers.append(*name, http::HeaderValue::from_static(value));
    }
    headers
}
