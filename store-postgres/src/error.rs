//! The crate's own errors (configuration, connecting, migrating) and the mapping of sqlx
//! errors onto the store contract's [`annals::Error::Backend`].

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
}

impl Error {
    /// True when retrying the same call later may succeed (the database was unreachable or
    /// busy); false for configuration mistakes.
    pub fn is_transient(&self) -> bool {
        match self {
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

/// Maps a sqlx error to the contract's backend error, classified.
pub(crate) fn backend(error: sqlx::Error) -> annals::Error {
    annals::Error::backend(is_transient(&error), error)
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sql_state(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
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
    }
}
