//! The event-store contract every backend implements.

use std::future::Future;

use futures::stream::BoxStream;

use futures::TryStreamExt;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    AppendResult, ExpectedVersion, LogPosition, NewEvent, RecordedEvent, Result, Snapshot,
    StreamAppend, StreamId,
};

/// Why a store's log may be visible only up to an earlier point than what was committed: a
/// transaction that is still open holds back every event committed after it began (PostgreSQL
/// readers never pass a transaction that could still commit before them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogHold {
    /// The server process of the open transaction (PostgreSQL's `pid`), if known.
    pub pid: Option<i64>,
    /// When that transaction began.
    pub since: OffsetDateTime,
    /// What the session is running or last ran, if the server tells (may be cut short).
    pub query: Option<String>,
}

impl LogHold {
    /// A hold by the transaction of `pid`, open since `since`.
    pub fn new(pid: Option<i64>, since: OffsetDateTime, query: Option<String>) -> Self {
        Self { pid, since, query }
    }
}

impl std::fmt::Display for LogHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self
            .since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.since.to_string());
        write!(f, "a transaction open since {since}")?;
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        Ok(())
    }
}

/// Which way a stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Oldest first.
    Forward,
    /// Newest first.
    Backward,
}

/// The default number of events fetched per page.
pub const DEFAULT_PAGE_SIZE: usize = 1_000;

/// How to read one stream: direction, first version, how many events, page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRead {
    /// Which way to read.
    pub direction: Direction,
    /// The first version returned (inclusive); reading backward from `u64::MAX` starts at
    /// the end.
    pub from: u64,
    /// The most events to return (`None`: all).
    pub limit: Option<u64>,
    /// Events fetched per round trip; memory stays bounded by it however long the stream.
    pub page_size: usize,
    /// Only what folding an aggregate needs (see [`StreamRead::for_folding`]).
    pub for_folding: bool,
}

impl StreamRead {
    /// Forward from version `from` (1 reads the whole stream).
    pub fn forward_from(from: u64) -> Self {
        Self {
            direction: Direction::Forward,
            from,
            limit: None,
            page_size: DEFAULT_PAGE_SIZE,
            for_folding: false,
        }
    }

    /// Reads only what folding events into an aggregate needs: position, stream version, type,
    /// schema version and payload. A store may then leave the other fields out, returning
    /// them as [`Uuid::nil`](uuid::Uuid::nil) (`event_id`), empty [`Metadata`](crate::Metadata)
    /// and the Unix epoch (`recorded_at`); the PostgreSQL store does, and sends about half the
    /// columns. [`Repository`](crate::Repository) loads this way.
    pub fn for_folding(mut self) -> Self {
        self.for_folding = true;
        self
    }

    /// The whole stream, oldest first.
    pub fn forward() -> Self {
        Self::forward_from(1)
    }

    /// Backward from version `from` (inclusive).
    pub fn backward_from(from: u64) -> Self {
        Self {
            direction: Direction::Backward,
            ..Self::forward_from(from)
        }
    }

    /// The whole stream, newest first.
    pub fn backward() -> Self {
        Self::backward_from(u64::MAX)
    }

    /// Returns at most `limit` events.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Fetches `page_size` events per round trip (at least 1).
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size.max(1);
        self
    }
}

/// How to read the global log: after which position, how many events, page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRead {
    /// Events strictly after this position are returned; [`LogPosition::START`] reads all.
    pub after: LogPosition,
    /// The most events to return (`None`: up to the current end of the log).
    pub limit: Option<u64>,
    /// Events fetched per round trip.
    pub page_size: usize,
}

impl LogRead {
    /// Everything after `after`.
    pub fn after(after: LogPosition) -> Self {
        Self {
            after,
            limit: None,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// The whole log.
    pub fn from_start() -> Self {
        Self::after(LogPosition::START)
    }

    /// Returns at most `limit` events.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Fetches `page_size` events per round trip (at least 1).
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size.max(1);
        self
    }
}

/// What [`EventStore::read_aggregate`] found: the snapshot to start from, if any, and the
/// stream's events after it.
pub struct AggregateRead<'a> {
    /// The stream's latest snapshot, when one was asked for and it has the schema version
    /// asked for.
    pub snapshot: Option<Snapshot>,
    /// The stream's events after the snapshot (or from the read's first version when there
    /// is none), in pages.
    pub events: BoxStream<'a, Result<RecordedEvent>>,
}

impl std::fmt::Debug for AggregateRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateRead")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// An append-only event store with optimistic concurrency, idempotent appends, a gap-free
/// global log and snapshots.
///
/// The contract, which `annals::testing` checks for every implementation:
/// - An append is atomic: all its events (over all its streams) are stored, or none.
/// - Each stream's expected version is checked inside the same atomic step as the write; a
///   mismatch is [`Error::Conflict`](crate::Error::Conflict) and writes nothing.
/// - Event ids are unique. An append whose ids are all stored already, with the same stream,
///   type, schema version and payload, in the same order, returns the original
///   [`AppendResult`]s and writes nothing, whatever its expected version; any other reuse of a
///   stored id is [`Error::IdempotencyConflict`](crate::Error::IdempotencyConflict).
/// - Reads of the global log return every committed event exactly once, in one stable order,
///   and never pass an event that commits later: a reader may checkpoint the last position it
///   saw and resume after it without ever skipping an event.
/// - Reads stream in pages: memory stays flat however long the stream or log.
///
/// Stores are cheap handles (clone them), used through generics; the methods return `Send`
/// futures so they can be spawned.
pub trait EventStore: Send + Sync {
    /// Appends events to several streams atomically, each with its own expected version.
    ///
    /// Returns one result per stream, in the order given.
    ///
    /// # Errors
    /// [`Error::Conflict`](crate::Error::Conflict) naming the first stream whose version did not
    /// match (nothing is written anywhere), the idempotency and validation errors of the
    /// contract, and [`Error::Backend`](crate::Error::Backend) for infrastructure failures.
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = Result<Vec<AppendResult>>> + Send;

    /// Appends events to one stream atomically.
    ///
    /// # Errors
    /// As [`EventStore::append_multi`].
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult>> + Send {
        let append = StreamAppend::new(stream.clone(), expected, events);
        async move {
            let mut results = self.append_multi(vec![append]).await?;
            results.pop().ok_or(crate::Error::InvalidAppend {
                reason: "the store returned no result",
            })
        }
    }

    /// Reads one stream in pages. A stream that does not exist reads as empty.
    ///
    /// Events are returned as stored; decode them with
    /// [`DomainEvent::decode`](crate::DomainEvent::decode), which upcasts.
    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, Result<RecordedEvent>>;

    /// Reads what loading an aggregate needs: its stream's latest snapshot, when
    /// `snapshot_version` is `Some` and that snapshot has this schema version, and the
    /// stream's events after it, read as `read` says (forward; from `read.from`, or from the
    /// version after the snapshot when that is later).
    ///
    /// The default makes the two calls, [`load_snapshot`](Self::load_snapshot) (only with a
    /// `snapshot_version`) then [`read_stream`](Self::read_stream); a store may answer both
    /// in one round trip (the PostgreSQL store does). [`Repository`](crate::Repository)
    /// loads aggregates through it, asking for no snapshot when the aggregate's
    /// [`SnapshotPolicy`](crate::SnapshotPolicy) keeps none.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the snapshot (or, in a store that reads
    /// them at once, the first events) cannot be read; the events read later report their
    /// errors in the stream.
    fn read_aggregate<'a>(
        &'a self,
        stream: &StreamId,
        snapshot_version: Option<u32>,
        read: StreamRead,
    ) -> impl Future<Output = Result<AggregateRead<'a>>> + Send + 'a {
        let stream = stream.clone();
        async move {
            let snapshot = match snapshot_version {
                Some(version) => self
                    .load_snapshot(&stream)
                    .await?
                    .filter(|s| s.schema_version == version),
                None => None,
            };
            let from = snapshot.as_ref().map_or(read.from, |s| {
                read.from.max(s.stream_version.saturating_add(1))
            });
            let events = self.read_stream(&stream, StreamRead { from, ..read });
            Ok(AggregateRead { snapshot, events })
        }
    }

    /// Reads the global log after a position, in pages, up to the end visible when each page
    /// is read.
    fn read_all(&self, read: LogRead) -> BoxStream<'_, Result<RecordedEvent>>;

    /// Follows the global log after `after`: the events already stored, then each new event as
    /// it commits, with no gap or repeat at the hand-over. The stream ends only with an error.
    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, Result<RecordedEvent>>;

    /// The current version of a stream (0 when it does not exist).
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend).
    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send;

    /// The position of the last event a reader of the global log can see now (`None` for an
    /// empty log). A projection's lag is measured against it.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend).
    fn head_position(&self) -> impl Future<Output = Result<Option<LogPosition>>> + Send;

    /// The identity of this store: a random id made when the store was created (one database
    /// schema, one SQLite file, one in-memory store) and the same for every handle to it ever
    /// after. A read model records it, so it can tell when the store under it was replaced.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend).
    fn store_id(&self) -> impl Future<Output = Result<Uuid>> + Send;

    /// How many events the log holds after `after`, up to and including `through`: the
    /// exact lag of a reader whose checkpoint is `after`.
    ///
    /// The default reads the log and counts; stores override it with a count.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend).
    fn count_events(
        &self,
        after: LogPosition,
        through: LogPosition,
    ) -> impl Future<Output = Result<u64>> + Send {
        async move {
            if through <= after {
                return Ok(0);
            }
            let mut events = self.read_all(LogRead::after(after).with_page_size(5_000));
            let mut n = 0u64;
            while let Some(event) = events.try_next().await? {
                if event.position > through {
                    break;
                }
                n += 1;
            }
            Ok(n)
        }
    }

    /// What holds the visible end of the log back right now, if anything (an open
    /// transaction in PostgreSQL that began before later commits; `None` in stores that commit
    /// serially). Readers that see no new events while this is `Some` are waiting for it.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend).
    fn log_hold(&self) -> impl Future<Output = Result<Option<LogHold>>> + Send {
        async { Ok(None) }
    }

    /// Saves a snapshot. The store keeps the one with the highest stream version per stream
    /// (a later save at the same version replaces it).
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend).
    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send;

    /// Loads the latest snapshot of a stream.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend).
    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;
}
