//! What a test captures of the crate's tracing: every span (with the fields recorded later, its
//! parent, and whether it closed) and every event, on the thread that installs the capture.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub name: &'static str,
    pub target: String,
    pub level: Level,
    pub parent: Option<usize>,
    pub fields: BTreeMap<String, String>,
    pub closed: bool,
}

#[derive(Debug, Clone)]
pub struct EventRecord {
    pub level: Level,
    pub target: String,
    pub parent: Option<usize>,
    pub fields: BTreeMap<String, String>,
}

impl EventRecord {
    /// The event's message.
    pub fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Store {
    spans: Vec<SpanRecord>,
    events: Vec<EventRecord>,
}

/// Spans are numbered in the order they open (tracing reuses span ids; these never are).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Store>>);

/// A span's number, kept in its extensions.
struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Captured
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("new span");
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Index>().map(|i| i.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut store = self.0.lock().unwrap();
        store.spans.push(SpanRecord {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            level: *attrs.metadata().level(),
            parent,
            fields,
            closed: false,
        });
        let index = store.spans.len() - 1;
        drop(store);
        span.extensions_mut().insert(Index(index));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(index) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<Index>().map(|i| i.0))
        else {
            return;
        };
        let mut store = self.0.lock().unwrap();
        values.record(&mut Fields(&mut store.spans[index].fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let parent = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<Index>().map(|i| i.0));
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().events.push(EventRecord {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            parent,
            fields,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(index) = ctx
            .span(&id)
            .and_then(|s| s.extensions().get::<Index>().map(|i| i.0))
        {
            self.0.lock().unwrap().spans[index].closed = true;
        }
    }
}

impl Captured {
    /// Captures everything on this thread until the guard drops.
    pub fn install(&self) -> Installed {
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()));
        // With one dispatcher alive, tracing asks the registering thread's own (none, on another
        // test's thread) whether a callsite is wanted, and caches the answer for every thread:
        // a second one, kept alive, makes it ask each live dispatcher, this one included.
        let second = tracing::Dispatch::new(tracing_subscriber::registry());
        // Callsites first met on another thread while no subscriber was set may have cached
        // "never": ask again now that this one is.
        tracing::callsite::rebuild_interest_cache();
        Installed {
            _guard: guard,
            _second: second,
        }
    }

    /// Every `gateway.request` span.
    pub fn gateway_spans(&self) -> Vec<SpanRecord> {
        let store = self.0.lock().unwrap();
        let spans = store.spans.iter();
        spans
            .filter(|s| s.name == "gateway.request")
            .cloned()
            .collect()
    }

    /// The crate's own events at `level` (hyper-util logs too).
    pub fn events_at(&self, level: Level) -> Vec<EventRecord> {
        let store = self.0.lock().unwrap();
        let events = store.events.iter();
        events
            .filter(|e| e.level == level && e.target == "gateway_errors")
            .cloned()
            .collect()
    }

    /// The only `gateway.request` span, and its number.
    pub fn gateway_span(&self) -> (usize, SpanRecord) {
        let store = self.0.lock().unwrap();
        let mut found = store
            .spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == "gateway.request");
        let (index, span) = found.next().expect("a gateway.request span");
        assert!(found.next().is_none(), "more than one gateway.request span");
        (index, span.clone())
    }

    pub fn events_of(&self, span: usize) -> Vec<EventRecord> {
        let store = self.0.lock().unwrap();
        let events = store.events.iter();
        // hyper-util logs too, inside our span; only the gateway's own events count here.
        events
            .filter(|e| e.parent == Some(span) && e.target == "gateway_errors")
            .cloned()
            .collect()
    }

    pub fn events(&self) -> Vec<EventRecord> {
        self.0.lock().unwrap().events.clone()
    }

    /// Every span, in the order they opened.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.0.lock().unwrap().spans.clone()
    }

    pub fn span(&self, index: usize) -> SpanRecord {
        self.0.lock().unwrap().spans[index].clone()
    }
}

/// A span's field, if recorded.
pub fn field<'a>(span: &'a SpanRecord, name: &str) -> Option<&'a str> {
    span.fields.get(name).map(String::as_str)
}

/// Captures on this thread until dropped.
pub struct Installed {
    _guard: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}
