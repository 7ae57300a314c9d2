//! The crate's error type: what went wrong with which database file.

use std::path::{Path, PathBuf};

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure of the SQLite file behind a store, naming the file.
///
/// [`SqliteEventStore::open`](crate::SqliteEventStore::open) returns it directly. The
/// [`EventStore`](annals::EventStore) methods return [`annals::Error::Backend`] with this error
/// as the source (downcast it to see the variant) and `transient` set as
/// [`Error::is_transient`] says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory that should hold the file could not be created.
    #[error("cannot create the directory of event store {}", path.display())]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a SQLite database, or it is damaged (`SQLITE_NOTADB`,
    /// `SQLITE_CORRUPT`). Restore it from a backup; the store never repairs a file itself.
    #[error("event store {} is corrupt or not a SQLite database", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// Another connection held a lock on the file for longer than the busy timeout
    /// (`SQLITE_BUSY`, `SQLITE_LOCKED`), or every connection of the pool stayed busy.
    /// Transient: retry later.
    #[error("event store {} is locked by another connection", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The file or its directory cannot be opened for writing: permissions, a read-only
    /// directory or file system (`SQLITE_CANTOPEN`, `SQLITE_READONLY`, `SQLITE_PERM`).
    #[error("event store {} cannot be opened for writing", path.display())]
    Unwritable {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The disk, or the size set with
    /// [`SqliteConfig::with_max_size_bytes`](crate::SqliteConfig::with_max_size_bytes), is
    /// full (`SQLITE_FULL`). The failed append wrote nothing.
    #[error("event store {} is full", path.display())]
    DiskFull {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: sqlx::Error,
    },
    /// The file's schema could not be brought up to date, or it was migrated by a newer
    /// version of this crate (an applied migration this version does not know).
    #[error("cannot migrate event store {}", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// What the migrator said.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A stored row that this store cannot have written (an invalid stream id, a negative
    /// version): the file was changed by something else.
    #[error("event store {} holds an unreadable row at log position {seq}: {reason}", path.display())]
    CorruptRow {
        /// The database file.
        path: PathBuf,
        /// The row's log position.
        seq: i64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Any other database failure.
    #[error("event store {} failed", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the driver said.
        #[source]
        source: sqlx::Error,
    },
}

// Primary SQLite result codes (https://www.sqlite.org/rescode.html).
const SQLITE_PERM: i64 = 3;
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;
const SQLITE_NOTADB: i64 = 26;

impl Error {
    /// The database file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::CreateDir { path, .. }
            | Self::Corrupt { path, .. }
            | Self::Locked { path, .. }
            | Self::Unwritable { path, .. }
            | Self::DiskFull { path, .. }
            | Self::Migrate { path, .. }
            | Self::CorruptRow { path, .. }
            | Self::Database { path, .. } => path,
        }
    }

    /// True when the same call may succeed later unchanged: a lock held by someone else.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Locked { .. })
    }

    /// Classifies a driver error by SQLite's primary result code.
    pub(crate) fn from_sqlx(path: &Path, source: sqlx::Error) -> Self {
        let path = path.to_path_buf();
        let code = match &source {
            sqlx::Error::Database(db) => db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xff),
            sqlx::Error::PoolTimedOut => return Self::Locked { path, source },
            _ => None,
        };
        match code {
            Some(SQLITE_NOTADB | SQLITE_CORRUPT) => Self::Corrupt { path, source },
            Some(SQLITE_BUSY | SQLITE_LOCKED) => Self::Locked { path, source },
            Some(SQLITE_CANTOPEN | SQLITE_READONLY | SQLITE_PERM) => {
                Self::Unwritable { path, source }
            }
            Some(SQLITE_FULL) => Self::DiskFull { path, source },
            _ => Self::Database { path, source },
        }
    }

    /// Classifies a migration failure: a database error inside it keeps its own class (a
    /// corrupt or locked file), anything else is [`Error::Migrate`].
    pub(crate) fn from_migrate(path: &Path, source: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError;
        match source {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)
                if matches!(e, sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut) =>
            {
                match Self::from_sqlx(path, e) {
                    Self::Database { source, .. } => Self::Migrate {
                        path: path.to_path_buf(),
                        source: MigrateError::Execute(source),
                    },
                    classified => classified,
                }
            }
            source => Self::Migrate {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

impl From<Error> for annals::Error {
    fn from(error: Error) -> Self {
        annals::Error::backend(error.is_transient(), error)
    }
}
