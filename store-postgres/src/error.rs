//! The crate's own errors (configuration, connecting, migrating) and the mapping of sqlx
//! errors onto the store contract's [`annals::Error::Backend`].

use std::{sync::Arc, time::Duration};

/// `Result` with this crate's [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while configuring, connecting or migrating a [`PgEventStore`].
///
/// Once connected, the store's methods return [`annals::Error`], like every store.
///
/// [`PgEventStore`]: crate::PgEventStore
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schema name is not a plain lower-case PostgreSQL identifier
    /// (`[a-z_][a-z0-9_]{0,55}`, not starting with `pg_`).
    #[error("invalid schema name {name:?}: use [a-z_][a-z0-9_]*, at most 56 bytes, not pg_*")]
    InvalidSchemaName {
        /// The rejected name.
        name: String,
    },
    /// The database URL could not be parsed.
    #[error("invalid database url")]
    InvalidUrl(#[source] sqlx::Error),
    /// Connecting to the database, or a setup statement, failed.
    #[error("cannot reach the event store database")]
    Connect(#[source] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("cannot migrate the event store schema")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// No connection to the server could be opened: it is down, the address is wrong, or the
    /// network drops the packets. Transient: retry once the server is back.
    #[error("cannot connect to PostgreSQL at {address}: {reason}")]
    Unreachable {
        /// `host:port` (or the socket path) the store connects to.
        address: String,
        /// What went wrong.
        reason: ConnectFailure,
        /// The driver's error, when `reason` does not already say it all.
        #[source]
        source: Option<Arc<sqlx::Error>>,
    },
    /// A table or function of the store does not exist (SQLSTATE 42P01, 42883, 3F000): the
    /// schema was never migrated, or another schema was configured. Not transient: run
    /// [`PgEventStore::migrate`](crate::PgEventStore::migrate) (as the owner role) first.
    #[error(
        "the event store's {object} does not exist (SQLSTATE {code}): run PgEventStore::migrate() \
         to create the store's schema"
    )]
    NotMigrated {
        /// What is missing, as the server named it (`relation "events"`).
        object: String,
        /// The SQLSTATE the server answered.
        code: String,
    },
    /// The server did not answer within the configured I/O timeout
    /// ([`PgConfig::with_io_timeout`](crate::PgConfig::with_io_timeout)): the network drops the
    /// packets, or the server is stuck. The connection was closed, never pooled again.
    /// Transient: retry once the server answers again. When `maybe_committed` is true the call
    /// was an append whose statement may have committed before the answer was lost: retry it
    /// with the same event ids, which returns the stored result instead of storing it twice.
    #[error("PostgreSQL did not answer {operation} within {after:?}{}", ambiguity(*.maybe_committed))]
    TimedOut {
        /// What the store was waiting for (`"an append"`, `"a log read"`, ...).
        operation: &'static str,
        /// The bound that ran out.
        after: Duration,
        /// Whether the call was an append that may have been stored.
        maybe_committed: bool,
    },
}

fn ambiguity(maybe_committed: bool) -> &'static str {
    if maybe_committed {
        "; the append may have been stored: retry it with the same event ids, which answers \
         with the stored result if it was"
    } else {
        ""
    }
}

/// Why no connection could be opened (see [`Error::Unreachable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Nothing listens at the address (the server is down or starting).
    Refused,
    /// No answer within the connect timeout (a host that drops packets, a full backlog).
    TimedOut,
    /// Anything else: a name that does not resolve, TLS, authentication; see the source.
    Other,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Refused => "connection refused",
            Self::TimedOut => "no answer within the connect timeout",
            Self::Other => "connection failed",
        })
    }
}

impl Error {
    /// The error for a failed connection attempt to `address`.
    pub(crate) fn unreachable(address: &str, error: Option<sqlx::Error>) -> Self {
        let reason = match &error {
            None => ConnectFailure::TimedOut,
            Some(sqlx::Error::Io(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                ConnectFailure::Refused
            }
            Some(sqlx::Error::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut => {
                ConnectFailure::TimedOut
            }
            Some(_) => ConnectFailure::Other,
        };
        Self::Unreachable {
            address: address.to_owned(),
            reason,
            source: error
                .filter(|_| reason == ConnectFailure::Other)
                .map(Arc::new),
        }
    }

    /// A copy of an [`Error::Unreachable`] or [`Error::NotMigrated`], to report one failure to
    /// each caller of a group; `None` for the other variants.
    pub(crate) fn copy(&self) -> Option<Self> {
        match self {
            Self::Unreachable {
                address,
                reason,
                source,
            } => Some(Self::Unreachable {
                address: address.clone(),
                reason: *reason,
                source: source.clone(),
            }),
            Self::NotMigrated { object, code } => Some(Self::NotMigrated {
                object: object.clone(),
                code: code.clone(),
            }),
            Self::TimedOut {
                operation,
                after,
                maybe_committed,
            } => Some(Self::TimedOut {
                operation,
                after: *after,
                maybe_committed: *maybe_committed,
            }),
            _ => None,
        }
    }

    /// [`Error::NotMigrated`] when `error` says a table or function of the store is missing.
    pub(crate) fn not_migrated(error: &sqlx::Error) -> Option<Self> {
        let sqlx::Error::Database(db) = error else {
            return None;
        };
        let code = db.code()?;
        if !matches!(code.as_ref(), "42P01" | "42883" | "3F000") {
            return None;
        }
        let message = db.message();
        let object = message.strip_suffix(" does not exist").unwrap_or(message);
        // `function append_group(integer[], ...)`: the name says enough.
        let object = object.split('(').next().unwrap_or(object).trim_end();
        Some(Self::NotMigrated {
            object: object.to_owned(),
            code: code.into_owned(),
        })
    }

    /// True when retrying the same call later may succeed (the database was unreachable or
    /// busy); false for configuration mistakes.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::TimedOut { .. } => true,
            Self::Connect(e) => is_transient(e),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_transient(e),
            _ => false,
        }
    }
}

/// PostgreSQL error codes after which the same call may succeed when retried.
fn transient_code(code: &str) -> bool {
    matches!(
        code,
        // serialization_failure, deadlock_detected
        "40001" | "40P01"
        // lock_not_available, too_many_connections, cannot_connect_now
        | "55P03" | "53300" | "57P03"
        // admin_shutdown, crash_shutdown, query_canceled (statement timeout)
        | "57P01" | "57P02" | "57014"
    ) || code.starts_with("08") // connection_exception and its subclasses
}

/// Whether a sqlx error may go away when the same call is retried.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// Maps a sqlx error to the contract's backend error, classified; a missing table or function
/// becomes [`Error::NotMigrated`].
pub(crate) fn backend(error: sqlx::Error) -> annals::Error {
    match Error::not_migrated(&error) {
        Some(missing) => annals::Error::backend(false, missing),
        None => annals::Error::backend(is_transient(&error), error),
    }
}

/// Whether `error` shows that the connection it came from is dead (closed by the server, a
/// broken socket): the statement may be sent again on another connection. An append sent
/// again is looked up by its event ids first, so one whose commit was lost is answered, not
/// stored twice.
pub(crate) fn is_connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // admin_shutdown, crash_shutdown, cannot_connect_now, connection_exception..
            matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")
        }),
        _ => false,
    }
}

/// Whether a statement that ended with `result` leaves its connection ready for the next
/// one: it answered, with rows or with a database error that does not say the connection is
/// gone (57P01 after `pg_terminate_backend` does).
pub(crate) fn answered_live<T>(result: &Result<T, sqlx::Error>) -> bool {
    match result {
        Ok(_) => true,
        Err(error @ sqlx::Error::Database(_)) => !is_connection_lost(error),
        Err(_) => false,
    }
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sql_state(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A statement run through [`crate::bounded::Db`] that failed, or got no answer in time.
#[derive(Debug)]
pub(crate) enum Failure {
    Sql(sqlx::Error),
    /// Holds [`Error::TimedOut`].
    TimedOut(Error),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Sql(error)
    }
}

impl From<Failure> for annals::Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Sql(error) => backend(error),
            Failure::TimedOut(error) => annals::Error::backend(true, error),
        }
    }
}

/// A failure of the store itself that is no database error (a writer that stopped, a row
/// that does not fit the schema).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Internal(pub(crate) &'static str);

/// A backend error for an internal failure.
pub(crate) fn internal(transient: bool, what: &'static str) -> annals::Error {
    annals::Error::backend(transient, Internal(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(transient_code("40001") && transient_code("40P01") && transient_code("08006"));
        assert!(!transient_code("23505") && !transient_code("42P01"));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(backend(sqlx::Error::PoolTimedOut).is_transient());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = Error::unreachable("db:5432", Some(sqlx::Error::Io(refused)));
        assert_eq!(
            error.to_string(),
            "cannot connect to PostgreSQL at db:5432: connection refused"
        );
        assert!(error.is_transient());
        assert!(std::error::Error::source(&error).is_none(), "said once");
        assert!(Error::unreachable("db:5432", None).is_transient());
    }
}
