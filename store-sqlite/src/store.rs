//! The store handle and its [`EventStore`] implementation.

use std::{path::PathBuf, sync::Arc, time::Duration};

use annals::{
    AppendResult, EventStore, Limits, LogPosition, LogRead, RecordedEvent, Snapshot, StreamAppend,
    StreamId, StreamRead,
};
use futures::stream::BoxStream;
use sqlx::sqlite::SqlitePool;
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::Error;

/// An [`EventStore`] in one SQLite file: no server, nothing to install.
///
/// - **One writer at a time, by design.** Appends run as `BEGIN IMMEDIATE` transactions on a
///   single write connection; SQLite itself lets one write transaction run at a time per
///   file, across processes too.
/// - **A gap-free log.** An event's log position is `max + 1`, drawn inside its write
///   transaction. Because write transactions run one after another, positions become visible
///   in exactly increasing order: when a reader sees position `n`, every position below `n`
///   is already committed, so resuming after a checkpoint never skips an event. (The
///   PostgreSQL store needs its `(commit, sequence)` pair for this; here `commit == sequence`,
///   see [`LogPosition::serial`].)
/// - **WAL mode.** Readers read a consistent snapshot while the writer commits, and never
///   block it.
/// - **Cancellation-safe appends.** The transaction runs in its own task: a caller that stops
///   waiting (a timeout) never leaves a transaction half-done; the append commits or rolls
///   back on its own.
///
/// Clones share the connections. Infrastructure failures are
/// [`annals::Error::Backend`] with a crate [`Error`](crate::Error) naming the file as the source.
#[derive(Debug, Clone)]
pub struct SqliteEventStore {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) path: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) poll_interval: Duration,
    /// One connection: every write of this process goes through it.
    pub(crate) writer: SqlitePool,
    pub(crate) readers: SqlitePool,
    /// The highest log position this process has committed; wakes subscriptions.
    pub(crate) head: watch::Sender<u64>,
    /// False for an in-memory database, which lives and dies with its one connection.
    pub(crate) replaceable_writer: bool,
}

impl Shared {
    /// Closes the write connection instead of reusing it after a database failure. SQLite may
    /// roll a transaction back on its own after some errors (a full disk, an I/O error), which
    /// the driver's transaction bookkeeping does not see; a fresh connection starts clean.
    pub(crate) fn discard_after_failure(
        &self,
        conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    ) {
        if self.replaceable_writer {
            tracing::debug!(path = %self.path.display(), "replacing the write connection after a failure");
            conn.close_on_drop();
        }
    }

    /// Wraps a driver error as the contract's backend error, naming the file.
    pub(crate) fn backend(&self, error: sqlx::Error) -> annals::Error {
        Error::from_sqlx(&self.path, error).into()
    }
}

/// Runs a write in its own task, so that a caller who stops waiting (a timeout, a dropped
/// request) cannot cut a transaction short: it commits or rolls back whole, and a retry with
/// the same event ids is recognised. Outside a Tokio runtime it runs in place.
async fn detached<T: Send + 'static>(
    write: impl Future<Output = annals::Result<T>> + Send + 'static,
) -> annals::Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn(write)
            .await
            .map_err(|e| annals::Error::backend(false, e))?,
        Err(_) => write.await,
    }
}

/// The store's name in spans.
const STORE: &str = "sqlite";

/// The span of one append call (`annals.store.append`, at debug): its first stream, event
/// type and correlation, how many streams and events; the positions are recorded when it
/// commits.
fn append_span(appends: &[StreamAppend]) -> tracing::Span {
    let first = appends.first();
    let event = first.and_then(|a| a.events.first());
    tracing::debug_span!(
        "annals.store.append",
        store = STORE,
        stream = first.map(|a| a.stream.as_str()),
        streams = appends.len(),
        events = appends.iter().map(|a| a.events.len()).sum::<usize>(),
        event_type = event.map(|e| e.event_type.as_str()),
        correlation_id = event
            .and_then(|e| e.metadata.correlation_id)
            .map(tracing::field::display),
        causation_id = event
            .and_then(|e| e.metadata.causation_id)
            .map(tracing::field::display),
        first_position = tracing::field::Empty,
        position = tracing::field::Empty,
    )
}

/// Records the positions an append committed at on its span.
fn record_positions(span: &tracing::Span, results: &annals::Result<Vec<AppendResult>>) {
    if let Ok(results) = results
        && let (Some(first), Some(last)) = (results.first(), results.last())
    {
        span.record(
            "first_position",
            tracing::field::display(first.first_position),
        );
        span.record("position", tracing::field::display(last.last_position));
    }
}

impl SqliteEventStore {
    /// The store's one write connection, for read models, checkpoints and leases kept in the
    /// same file (`SqliteTables`, `SqliteLeases` of `annals-projections-sql`): their writes
    /// then queue behind this process's appends instead of contending for the file's lock
    /// from a second pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.shared.writer
    }

    /// The limits this store checks before any I/O.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }
}

impl EventStore for SqliteEventStore {
    async fn append_multi(&self, appends: Vec<StreamAppend>) -> annals::Result<Vec<AppendResult>> {
        let metadata = self.shared.limits.check_and_encode_metadata(&appends)?;
        let span = append_span(&appends);
        let shared = Arc::clone(&self.shared);
        let write = async move { crate::append::append(&shared, appends, metadata).await };
        let results = detached(write.instrument(span.clone())).await;
        record_positions(&span, &results);
        results
    }

    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        crate::read::read_stream(Arc::clone(&self.shared), stream.clone(), read)
    }

    fn read_all(&self, read: LogRead) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        crate::read::read_all(Arc::clone(&self.shared), read)
    }

    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        crate::read::subscribe(Arc::clone(&self.shared), after)
    }

    async fn stream_version(&self, stream: &StreamId) -> annals::Result<u64> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = ?")
                .bind(stream.as_str())
                .fetch_optional(&self.shared.readers)
                .await
                .map_err(|e| self.shared.backend(e))?;
        Ok(version.map_or(0, |v| v.max(0).unsigned_abs()))
    }

    async fn head_position(&self) -> annals::Result<Option<LogPosition>> {
        let head = crate::read::head_seq(&self.shared.readers)
            .await
            .map_err(|e| self.shared.backend(e))?;
        Ok((head > 0).then(|| LogPosition::serial(head)))
    }

    async fn store_id(&self) -> annals::Result<Uuid> {
        sqlx::query_scalar("SELECT store_id FROM store_info")
            .fetch_one(&self.shared.readers)
            .await
            .map_err(|e| self.shared.backend(e))
    }

    async fn count_events(&self, after: LogPosition, through: LogPosition) -> annals::Result<u64> {
        crate::read::count_events(&self.shared, after, through).await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> annals::Result<()> {
        let shared = Arc::clone(&self.shared);
        detached(async move { crate::snapshot::save(&shared, snapshot).await }).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> annals::Result<Option<Snapshot>> {
        crate::snapshot::load(&self.shared, stream).await
    }
}
