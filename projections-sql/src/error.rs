//! The error type of this crate and how it maps into [`annals_projections::Error`].

/// Everything that can go wrong in a SQL read model or lease store before it is handed to
/// the runner as an [`annals_projections::Error`] (see the `From` impl below).
///
/// Mistakes in the read model's SQL (an unknown table placeholder, a malformed placeholder,
/// a bad name) are found before any I/O; [`SqlError::Database`] is the database's own
/// answer, classified by [`SqlError::is_transient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The database refused a statement or the connection failed.
    #[error("the sql database failed")]
    Database(#[source] sqlx::Error),
    /// A statement names a table placeholder that the [`SqlSchema`](crate::SqlSchema) does not
    /// declare. Only declared names are ever substituted into SQL text.
    #[error("unknown table placeholder {{{name}}}: declare it in the SqlSchema")]
    UnknownTable {
        /// The name between the braces.
        name: String,
    },
    /// A `{` or `}` that is not a `{name}` placeholder; write `{{` and `}}` for literal
    /// braces (or, better, bind the value as a parameter).
    #[error("malformed placeholder at byte {at} of {sql:?}: {reason}")]
    Placeholder {
        /// The statement.
        sql: String,
        /// Where the problem starts.
        at: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A namespace, projection, table or index name that cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A row write ([`SqlBatch::upsert`](crate::SqlBatch::upsert),
    /// [`SqlBatch::delete_row`](crate::SqlBatch::delete_row)) that cannot be written: a bad
    /// column name, no key, a NULL key, an `add` of a non-number, a column the table does
    /// not have.
    #[error("row write to {table}: {reason}")]
    Row {
        /// The declared table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// A text value holds a NUL byte, which PostgreSQL cannot store; checked before sending.
    #[error("a text value holds a NUL byte, which postgresql cannot store")]
    NulByte,
    /// Stored metadata that does not parse (a position or fence out of range, a dead letter
    /// that is not JSON).
    #[error("corrupt read-model metadata: {what}")]
    Corrupt {
        /// What could not be read.
        what: String,
    },
}

impl SqlError {
    /// True when the same call may succeed if retried later: a lost or refused connection,
    /// an exhausted pool, a serialization failure or deadlock, a lock or statement timeout,
    /// a server shutting down (PostgreSQL classes `08`, `57`, codes `40001`, `40P01`,
    /// `55P03`, `53300`), a busy or locked SQLite file.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => is_transient(e),
            _ => false,
        }
    }
}

/// Whether a sqlx error is worth retrying unchanged; see [`SqlError::is_transient`].
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return false };
            #[cfg(feature = "postgres")]
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                return code.starts_with("08")
                    || code.starts_with("57")
                    || matches!(&*code, "40001" | "40P01" | "55P03" | "53300");
            }
            // SQLite: the extended result code; the primary code is its low byte.
            code.parse::<i32>()
                .is_ok_and(|c| matches!(c & 0xff, 5 /* BUSY */ | 6 /* LOCKED */))
        }
        _ => false,
    }
}

impl From<sqlx::Error> for SqlError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// `Result` with [`SqlError`].
pub(crate) type SqlResult<T> = Result<T, SqlError>;

/// Maps into the runner's error: names into [`Error::InvalidName`], SQL mistakes into
/// [`Error::Schema`], metadata into [`Error::Corrupt`], database failures into
/// [`Error::Store`] holding an [`annals::Error::Backend`] marked transient or not (the
/// projections error has no variant of its own for a SQL read model yet).
///
/// [`Error::InvalidName`]: annals_projections::Error::InvalidName
/// [`Error::Schema`]: annals_projections::Error::Schema
/// [`Error::Corrupt`]: annals_projections::Error::Corrupt
/// [`Error::Store`]: annals_projections::Error::Store
impl From<SqlError> for annals_projections::Error {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::InvalidName { name, reason } => Self::InvalidName { name, reason },
            SqlError::Corrupt { what } => Self::Corrupt { what },
            e @ (SqlError::UnknownTable { .. }
            | SqlError::Placeholder { .. }
            | SqlError::Row { .. }) => Self::Schema {
                reason: e.to_string(),
            },
            e => Self::Store(annals::Error::backend(e.is_transient(), e)),
        }
    }
}

/// Shorthand for the database errors of this crate, mapped for the runner.
pub(crate) fn db(e: sqlx::Error) -> annals_projections::Error {
    SqlError::Database(e).into()
}
