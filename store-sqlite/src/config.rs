//! How to open a store: the file, limits, durability, timeouts and pool sizes.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use annals::Limits;

/// How hard a commit works to survive a power loss.
///
/// In WAL mode both levels keep the file consistent and lose nothing when the *process*
/// crashes; they differ only when the *machine* loses power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous = FULL`: every commit syncs the write-ahead log before the append returns,
    /// so an acknowledged event survives a power loss. The default: an event store must not
    /// forget an event it has acknowledged. Batched appends pay one sync per batch.
    #[default]
    Full,
    /// `synchronous = NORMAL`: the log is synced only at checkpoints, so a power loss may roll
    /// back the last few acknowledged appends (never corrupt the file). Much faster for many
    /// small appends; for caches, tests and demos.
    Normal,
}

/// Where and how to open a [`SqliteEventStore`](crate::SqliteEventStore).
///
/// ```
/// use std::time::Duration;
/// use annals::Limits;
/// use annals_sqlite::{Durability, SqliteConfig};
///
/// let config = SqliteConfig::new("data/events.db")
///     .with_limits(Limits::default().with_max_event_bytes(64 * 1024))
///     .with_durability(Durability::Full)
///     .with_busy_timeout(Duration::from_secs(10));
/// assert_eq!(config.path().to_str(), Some("data/events.db"));
/// ```
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub(crate) path: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) durability: Durability,
    pub(crate) busy_timeout: Duration,
    pub(crate) read_connections: u32,
    pub(crate) poll_interval: Duration,
    pub(crate) max_size_bytes: Option<u64>,
}

impl SqliteConfig {
    /// A store in the file at `path` (created with its parent directory if missing), with
    /// default [`Limits`], [`Durability::Full`], a 5 s busy timeout, 4 read connections and
    /// a 500 ms poll for other processes' appends.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            limits: Limits::default(),
            durability: Durability::default(),
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
            poll_interval: Duration::from_millis(500),
            max_size_bytes: None,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the limits checked before any I/O.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets how commits are synced (see [`Durability`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long a statement waits for another connection's lock (another process writing, or
    /// holding the file exclusively) before it fails with a transient error.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How many connections serve reads (at least 1). Writes always use one connection.
    pub fn with_read_connections(mut self, connections: u32) -> Self {
        self.read_connections = connections.max(1);
        self
    }

    /// How often a subscription looks for events appended by *other* processes. Appends made
    /// through this store (or its clones) wake subscriptions at once.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Caps the database file at about `bytes` (rounded down to whole pages); an append that
    /// would grow it further fails with [`Error::DiskFull`](crate::Error::DiskFull), exactly
    /// as on a full disk, and writes nothing. A quota for embedded use, and the way the tests
    /// simulate a full disk.
    pub fn with_max_size_bytes(mut self, bytes: u64) -> Self {
        self.max_size_bytes = Some(bytes);
        self
    }
}
