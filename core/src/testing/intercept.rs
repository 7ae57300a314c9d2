//! A store that forwards every call to another, for tests that change one or two of them.

use std::future::Future;

use futures::stream::BoxStream;
use uuid::Uuid;

use crate::{
    AppendResult, EventStore, LogHold, LogPosition, LogRead, RecordedEvent, Result, Snapshot,
    StreamAppend, StreamId, StreamRead,
};

/// What an [`Intercepted`] store does with each call, given the store inside: every method
/// forwards to `inner` unless implemented, so a test states only the calls it changes (an
/// append that loses its answer, a read that fails now and then, a count of snapshot reads).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use annals::{AppendResult, EventStore, ExpectedVersion, InMemoryEventStore, StreamAppend, StreamId};
/// use annals::testing::{Intercept, Intercepted, new_event};
///
/// /// Counts the append calls.
/// #[derive(Default)]
/// struct Count(AtomicUsize);
///
/// impl Intercept<InMemoryEventStore> for Count {
///     async fn append_multi(
///         &self,
///         inner: &InMemoryEventStore,
///         appends: Vec<StreamAppend>,
///     ) -> annals::Result<Vec<AppendResult>> {
///         self.0.fetch_add(1, Ordering::SeqCst);
///         inner.append_multi(appends).await
///     }
/// }
///
/// # futures::executor::block_on(async {
/// let store = Intercepted::<InMemoryEventStore, Count>::default();
/// let s = StreamId::new("s").unwrap();
/// store.append(&s, ExpectedVersion::NoStream, vec![new_event("Noted", serde_json::json!({}))]).await.unwrap();
/// assert_eq!(store.intercept.0.load(Ordering::SeqCst), 1);
/// assert_eq!(store.stream_version(&s).await.unwrap(), 1);
/// # });
/// ```
pub trait Intercept<S: EventStore>: Send + Sync {
    /// [`EventStore::append_multi`].
    fn append_multi(
        &self,
        inner: &S,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<Vec<AppendResult>>> + Send {
        inner.append_multi(appends)
    }

    /// [`EventStore::read_stream`].
    fn read_stream<'a>(
        &'a self,
        inner: &'a S,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        inner.read_stream(stream, read)
    }

    /// [`EventStore::read_all`].
    fn read_all<'a>(&'a self, inner: &'a S, read: LogRead) -> BoxStream<'a, Result<RecordedEvent>> {
        inner.read_all(read)
    }

    /// [`EventStore::subscribe`].
    fn subscribe<'a>(
        &'a self,
        inner: &'a S,
        after: LogPosition,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        inner.subscribe(after)
    }

    /// [`EventStore::stream_version`].
    fn stream_version(
        &self,
        inner: &S,
        stream: &StreamId,
    ) -> impl Future<Output = Result<u64>> + Send {
        inner.stream_version(stream)
    }

    /// [`EventStore::head_position`].
    fn head_position(&self, inner: &S) -> impl Future<Output = Result<Option<LogPosition>>> + Send {
        inner.head_position()
    }

    /// [`EventStore::store_id`].
    fn store_id(&self, inner: &S) -> impl Future<Output = Result<Uuid>> + Send {
        inner.store_id()
    }

    /// [`EventStore::count_events`].
    fn count_events(
        &self,
        inner: &S,
        after: LogPosition,
        through: LogPosition,
    ) -> impl Future<Output = Result<u64>> + Send {
        inner.count_events(after, through)
    }

    /// [`EventStore::log_hold`].
    fn log_hold(&self, inner: &S) -> impl Future<Output = Result<Option<LogHold>>> + Send {
        inner.log_hold()
    }

    /// [`EventStore::save_snapshot`].
    fn save_snapshot(
        &self,
        inner: &S,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<()>> + Send {
        inner.save_snapshot(snapshot)
    }

    /// [`EventStore::load_snapshot`].
    fn load_snapshot(
        &self,
        inner: &S,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send {
        inner.load_snapshot(stream)
    }
}

/// An [`EventStore`] that hands every call, with the store `inner`, to `intercept`
/// ([`Intercept`]). `read_aggregate` is the trait's default, made of the intercepted
/// `load_snapshot` and `read_stream`, so a test that changes those sees loads too.
#[derive(Debug, Clone, Default)]
pub struct Intercepted<S, I> {
    /// The store the calls go to.
    pub inner: S,
    /// What the test changes.
    pub intercept: I,
}

impl<S, I> Intercepted<S, I> {
    /// `inner`, its calls handed to `intercept`.
    pub fn new(inner: S, intercept: I) -> Self {
        Self { inner, intercept }
    }
}

impl<S: EventStore, I: Intercept<S>> EventStore for Intercepted<S, I> {
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<Vec<AppendResult>>> + Send {
        self.intercept.append_multi(&self.inner, appends)
    }

    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, Result<RecordedEvent>> {
        self.intercept.read_stream(&self.inner, stream, read)
    }

    fn read_all(&self, read: LogRead) -> BoxStream<'_, Result<RecordedEvent>> {
        self.intercept.read_all(&self.inner, read)
    }

    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, Result<RecordedEvent>> {
        self.intercept.subscribe(&self.inner, after)
    }

    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send {
        self.intercept.stream_version(&self.inner, stream)
    }

    fn head_position(&self) -> impl Future<Output = Result<Option<LogPosition>>> + Send {
        self.intercept.head_position(&self.inner)
    }

    fn store_id(&self) -> impl Future<Output = Result<Uuid>> + Send {
        self.intercept.store_id(&self.inner)
    }

    fn count_events(
        &self,
        after: LogPosition,
        through: LogPosition,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.intercept.count_events(&self.inner, after, through)
    }

    fn log_hold(&self) -> impl Future<Output = Result<Option<LogHold>>> + Send {
        self.intercept.log_hold(&self.inner)
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send {
        self.intercept.save_snapshot(&self.inner, snapshot)
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send {
        self.intercept.load_snapshot(&self.inner, stream)
    }
}
