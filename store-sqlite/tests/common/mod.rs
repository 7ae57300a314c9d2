//! Shared test support: a store in its own temporary directory, removed when the store is
//! dropped.

#![allow(dead_code, unreachable_pub)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use annals::{
    AppendResult, EventStore, ExpectedVersion, LogPosition, LogRead, RecordedEvent, Snapshot,
    StreamAppend, StreamId, StreamRead, testing::new_event,
};
use annals_sqlite::{Error, SqliteConfig, SqliteEventStore};
use futures::{TryStreamExt, stream::BoxStream};
use serde_json::json;
use sqlx::{Connection as _, sqlite::SqliteConnectOptions};
use tempfile::TempDir;

/// A fresh temporary directory for one test.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("annals-sqlite-test")
        .tempdir()
        .expect("a temp dir")
}

/// A [`SqliteEventStore`] in a temporary directory that lives as long as the store.
#[derive(Debug, Clone)]
pub struct TempStore {
    pub store: SqliteEventStore,
    pub dir: Arc<TempDir>,
}

impl TempStore {
    /// A fresh store in a fresh directory.
    pub async fn new() -> Self {
        let dir = temp_dir();
        let store = SqliteEventStore::open(SqliteConfig::new(dir.path().join("events.db")))
            .await
            .expect("open a fresh store");
        Self {
            store,
            dir: Arc::new(dir),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.store.path().to_path_buf()
    }
}

impl EventStore for TempStore {
    async fn append_multi(&self, appends: Vec<StreamAppend>) -> annals::Result<Vec<AppendResult>> {
        self.store.append_multi(appends).await
    }

    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        self.store.read_stream(stream, read)
    }

    fn read_all(&self, read: LogRead) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        self.store.read_all(read)
    }

    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        self.store.subscribe(after)
    }

    async fn stream_version(&self, stream: &StreamId) -> annals::Result<u64> {
        self.store.stream_version(stream).await
    }

    async fn head_position(&self) -> annals::Result<Option<LogPosition>> {
        self.store.head_position().await
    }

    async fn store_id(&self) -> annals::Result<uuid::Uuid> {
        self.store.store_id().await
    }

    async fn count_events(&self, after: LogPosition, through: LogPosition) -> annals::Result<u64> {
        self.store.count_events(after, through).await
    }

    async fn log_hold(&self) -> annals::Result<Option<annals::LogHold>> {
        self.store.log_hold().await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> annals::Result<()> {
        self.store.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> annals::Result<Option<Snapshot>> {
        self.store.load_snapshot(stream).await
    }
}

/// Unwraps the crate error inside an `annals::Error::Backend`.
pub fn sqlite_error(error: &annals::Error) -> &annals_sqlite::Error {
    match error {
        annals::Error::Backend { source, .. } => source
            .downcast_ref::<annals_sqlite::Error>()
            .unwrap_or_else(|| panic!("a backend error from annals-sqlite, got {source:?}")),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

pub fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

/// A config with a short busy timeout, so lock tests fail fast.
pub fn config(path: &Path) -> SqliteConfig {
    SqliteConfig::new(path).with_busy_timeout(Duration::from_millis(200))
}

/// A plain SQLite connection to `path`, playing another process.
pub async fn raw_connection(path: &Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .expect("a raw connection")
}

/// The ids of the whole log, in order.
pub async fn log_ids(store: &SqliteEventStore) -> Vec<uuid::Uuid> {
    store
        .read_all(LogRead::from_start())
        .map_ok(|e| e.event_id)
        .try_collect()
        .await
        .expect("read the log")
}

/// A store holding `n` events in stream "kept"; returns their ids.
pub async fn seeded(path: &Path, n: usize) -> (SqliteEventStore, Vec<uuid::Uuid>) {
    let store = SqliteEventStore::open(config(path)).await.expect("open");
    let batch: Vec<_> = (0..n)
        .map(|i| new_event("Kept", json!({ "i": i })))
        .collect();
    let ids = batch.iter().map(|e| e.event_id).collect();
    store
        .append(&sid("kept"), ExpectedVersion::NoStream, batch)
        .await
        .expect("seed");
    (store, ids)
}

/// The error names the file, in its fields and in its message.
pub fn assert_names(error: &Error, path: &Path) {
    assert_eq!(error.path(), path, "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "the message names the file: {error}"
    );
}
