//! Records the [`tracing`] spans a test makes, for tests that check what spans carry
//! (trace ids, span ids, the fields recorded after a span opened, parents).
//!
//! One global subscriber serves the whole test binary: scoped subscribers race with tests
//! running in parallel over each callsite's cached interest. Each span is kept with the thread
//! it was made on, and only threads that asked ([`recorder`]) are recorded, so the other tests'
//! spans stay apart: each test runs on its own thread, and its tasks too on a current-thread
//! runtime (`#[tokio::test]`'s default).
//!
//! ```
//! let (recorder, _recording) = annals_span_recorder::recorder();
//! let span = tracing::info_span!("work", job = "a", done = tracing::field::Empty);
//! span.record("done", true);
//! let seen = recorder.named("work");
//! assert_eq!(seen.len(), 1);
//! assert_eq!(seen[0].field("job"), "a");
//! assert_eq!(seen[0].field("done"), "true");
//! ```

use std::{
    cell::Cell,
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    thread::ThreadId,
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// One span as the recorder saw it: its name, its fields (those recorded after it opened
/// included) and the name of its parent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The span's name.
    pub name: &'static str,
    /// Its fields: strings as they are, anything else as its `Debug` text.
    pub fields: HashMap<String, String>,
    /// The name of its parent span, if it has one.
    pub parent: Option<&'static str>,
}

impl Seen {
    /// The value of the field `name`.
    ///
    /// # Panics
    /// When the span has no such field (a test's failure, with the span shown).
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .unwrap_or_else(|| panic!("span {} has no field {name}: {self:?}", self.name))
    }
}

/// The layer that records spans; read it through [`recorder`].
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    spans: Arc<Mutex<Vec<(ThreadId, Seen)>>>,
    open: Arc<Mutex<HashMap<u64, usize>>>,
}

thread_local! {
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.metadata().name());
        let seen = Seen {
            name: attrs.metadata().name(),
            fields,
            parent,
        };
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        spans.push((std::thread::current().id(), seen));
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.into_u64(), spans.len() - 1);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        // One lock at a time: `on_new_span` takes `spans` and then `open`, so holding `open`
        // while taking `spans` here could deadlock with a span opening on another thread.
        let found = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id.into_u64())
            .copied();
        let Some(i) = found else {
            return;
        };
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, seen)) = spans.get_mut(i) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

impl Recorder {
    /// The spans this thread made so far, in the order they opened.
    pub fn mine(&self) -> Vec<Seen> {
        let me = std::thread::current().id();
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(thread, _)| *thread == me)
            .map(|(_, seen)| seen.clone())
            .collect()
    }

    /// The spans named `name` this thread made so far.
    pub fn named(&self, name: &str) -> Vec<Seen> {
        self.mine().into_iter().filter(|s| s.name == name).collect()
    }

    /// The span this thread made whose field `span_id` is `span_id`.
    ///
    /// # Panics
    /// When there is none (a test's failure).
    pub fn with_span_id(&self, span_id: &str) -> Seen {
        self.mine()
            .into_iter()
            .find(|s| s.fields.get("span_id").is_some_and(|v| v == span_id))
            .unwrap_or_else(|| panic!("no span has the span id {span_id}"))
    }
}

/// Stops recording this thread's spans when dropped.
#[derive(Debug)]
pub struct Recording(());

impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.with(|r| r.set(false));
    }
}

/// Records the spans of this thread (and of the tasks it runs) until the guard drops. The
/// first call installs the recorder as the global subscriber of the test binary.
///
/// # Panics
/// When another global subscriber was installed first.
pub fn recorder() -> (&'static Recorder, Recording) {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    let recorder = RECORDER.get_or_init(|| {
        let recorder = Recorder::default();
        // Dynamic: asked at every span, never cached per callsite.
        let only_recording =
            tracing_subscriber::filter::dynamic_filter_fn(|_, _| RECORDING.with(Cell::get));
        tracing_subscriber::registry()
            .with(recorder.clone().with_filter(only_recording))
            .init();
        recorder
    });
    RECORDING.with(|r| r.set(true));
    (recorder, Recording(()))
}
