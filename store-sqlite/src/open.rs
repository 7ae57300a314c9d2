//! Opening a store: the file, its pragmas, the two pools and the migrations.

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use annals::Limits;
use sqlx::{
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::watch;

use crate::{Durability, Error, Result, SqliteConfig, SqliteEventStore, store::Shared};

/// The schema, embedded at compile time; applied in order on open.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long an append waits for this process's single writer connection.
const WRITER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// The page size SQLite gives new files; used to turn a byte cap into pages.
const PAGE_BYTES: u64 = 4096;

impl SqliteEventStore {
    /// Opens the store in `config.path`, creating the file and its parent directory if they
    /// are missing, and applies the embedded migrations the file lacks.
    ///
    /// Every connection uses WAL mode (readers never block the writer, nor it them), foreign
    /// keys, the configured busy timeout and [`Durability`]. Writes go through one connection;
    /// reads through a small pool.
    ///
    /// # Errors
    /// [`Error::CreateDir`] when the directory cannot be made; [`Error::Corrupt`] for a file
    /// that is not a SQLite database; [`Error::Locked`] when another connection holds the file
    /// beyond the busy timeout; [`Error::Unwritable`] for a read-only file or directory;
    /// [`Error::Migrate`] when the schema cannot be updated, or the file was written by a
    /// newer version of this crate; [`Error::Database`] for anything else. Each names the file.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        let path = config.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        // No `journal_mode` here: the switch to WAL is made once, below, where a lost race
        // is retried (see `switch_to_wal`); WAL is a property of the file, kept by it.
        let mut options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .synchronous(match config.durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(config.busy_timeout);
        if let Some(bytes) = config.max_size_bytes {
            options = options.pragma("max_page_count", (bytes / PAGE_BYTES).max(1).to_string());
        }
        let writer = writer_pool()
            .connect_with(options.clone())
            .await
            .map_err(|e| Error::from_sqlx(&path, e))?;
        if let Err(e) = switch_to_wal(&writer, config.busy_timeout).await {
            writer.close().await;
            return Err(Error::from_sqlx(&path, e));
        }
        if let Err(e) = migrate(&writer).await {
            writer.close().await;
            return Err(Error::from_migrate(&path, e));
        }
        let readers = SqlitePoolOptions::new()
            .max_connections(config.read_connections)
            .min_connections(0)
            .test_before_acquire(false)
            // A whole default page fits the driver's row channel: its worker thread produces a
            // page without waiting for the reader.
            .connect_with(
                options
                    .create_if_missing(false)
                    .row_buffer_size(annals::DEFAULT_PAGE_SIZE),
            )
            .await
            .map_err(|e| Error::from_sqlx(&path, e))?;
        Self::start(
            path,
            config.limits,
            config.poll_interval,
            writer,
            readers,
            true,
        )
        .await
    }

    /// A private store in memory, for tests and examples: one connection serves reads and
    /// writes, and everything is gone when the last clone is dropped. Unlike a file store it
    /// cannot replace its connection, so after a database failure (out of memory) make a new
    /// one.
    ///
    /// # Errors
    /// [`Error::Database`] if SQLite cannot start (out of memory).
    pub async fn in_memory() -> Result<Self> {
        Self::in_memory_with_limits(Limits::default()).await
    }

    /// [`SqliteEventStore::in_memory`] with other [`Limits`].
    ///
    /// # Errors
    /// As [`SqliteEventStore::in_memory`].
    pub async fn in_memory_with_limits(limits: Limits) -> Result<Self> {
        let path = PathBuf::from(":memory:");
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| Error::from_sqlx(&path, e))?
            .foreign_keys(true);
        // The database lives in its one connection, which the pool must never close.
        let pool = writer_pool()
            .connect_with(options)
            .await
            .map_err(|e| Error::from_sqlx(&path, e))?;
        migrate(&pool)
            .await
            .map_err(|e| Error::from_migrate(&path, e))?;
        Self::start(
            path,
            limits,
            Duration::from_secs(3600),
            pool.clone(),
            pool,
            false,
        )
        .await
    }

    async fn start(
        path: PathBuf,
        limits: Limits,
        poll_interval: Duration,
        writer: SqlitePool,
        readers: SqlitePool,
        replaceable_writer: bool,
    ) -> Result<Self> {
        let head = crate::read::head_seq(&readers)
            .await
            .map_err(|e| Error::from_sqlx(&path, e))?;
        let (head, _) = watch::channel(head);
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                limits,
                poll_interval,
                writer,
                readers,
                head,
                replaceable_writer,
            }),
        })
    }

    /// The database file (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Closes every connection, waiting for the ones in use. Later calls on this store or its
    /// clones fail with a backend error. Not needed for safety (every acknowledged append is
    /// committed); it lets another process take the file over at once.
    pub async fn close(&self) {
        self.shared.writer.close().await;
        self.shared.readers.close().await;
    }
}

/// Puts the file in WAL mode (a no-op once it is), waiting out other connections within
/// `busy_timeout`.
///
/// SQLite's busy handler does not cover this statement when connections race to convert a new
/// file: the switch reads the file's header, then upgrades that read to a write, and a
/// connection that already holds a read lock is refused an upgrade at once (`SQLITE_BUSY`,
/// no waiting: waiting could deadlock two such connections). Several handles or processes
/// opening one new file at once so failed with "database is locked" now and then. The retry
/// here starts the statement again from no lock, which is always safe, until the busy timeout
/// is spent.
async fn switch_to_wal(writer: &SqlitePool, busy_timeout: Duration) -> Result<(), sqlx::Error> {
    let deadline = Instant::now() + busy_timeout;
    // Jittered, so handles that collided once do not collide again in lockstep.
    let backoff = annals::Backoff::new(Duration::from_millis(1), Duration::from_millis(25));
    let mut attempt = 0u32;
    let mut conn = writer.acquire().await?;
    loop {
        let mode: Result<String, sqlx::Error> = sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await;
        match mode {
            Ok(mode) => {
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::debug!(%mode, "the file system keeps the database out of WAL mode");
                }
                return Ok(());
            }
            Err(e) if is_busy(&e) && Instant::now() + backoff.ceiling(attempt) < deadline => {
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, with any extended code.
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

/// Applies the migrations the file lacks, all in one `BEGIN IMMEDIATE` transaction: two
/// processes opening a new file at once take turns, and the second finds the schema ready.
async fn migrate(writer: &SqlitePool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = writer.acquire().await?;
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
    // Each migration's own transaction nests as a savepoint inside this one.
    MIGRATOR.run(&mut *tx).await?;
    // The store's id, made once: a file from before `store_info` gets one on its first open.
    sqlx::query("INSERT OR IGNORE INTO store_info (singleton, store_id) VALUES (1, ?)")
        .bind(uuid::Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The single write connection: kept open (it holds an in-memory database, and keeps its
/// prepared statements warm), never pinged (a SQLite connection does not drop).
fn writer_pool() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .acquire_timeout(WRITER_ACQUIRE_TIMEOUT)
}
