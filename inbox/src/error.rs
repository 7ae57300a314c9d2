//! [`InboxError`]: what can go wrong while processing a message, and whether to retry.

/// A boxed error from an effect.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a message was not processed. A duplicate is not an error: it is
/// [`Processed::Duplicate`](crate::Processed::Duplicate).
///
/// After any error the inbox has recorded nothing that was not also committed with the
/// effect: the message can be delivered again. [`InboxError::is_transient`] says whether
/// the same delivery may succeed later (negative-acknowledge it with a delay) or will fail
/// the same way (park it: a dead-letter queue, a log, an alert).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// A consumer name, key prefix or schema that cannot be used; found before any I/O.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What the name is for: `consumer`, `key prefix` or `schema`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// The SQL database failed or refused a statement, the inbox's own or the effect's (an
    /// effect's `?` on a [`sqlx::Error`] lands here and is classified like the inbox's).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[error("the sql database failed")]
    Database(#[source] sqlx::Error),
    /// Redis failed or refused the script (a command of the effect included).
    #[cfg(feature = "redis")]
    #[error("redis failed")]
    Redis(#[source] redis::RedisError),
    /// The effect's script returned an error reply (`return redis.error_reply(...)`): the
    /// id was not recorded. Writes the script made before returning it stay (Redis has no
    /// rollback), so a script refuses before it writes.
    #[cfg(feature = "redis")]
    #[error("the effect script refused the message: {0}")]
    Refused(String),
    /// The effect failed with an error of its own ([`InboxError::effect`],
    /// [`InboxError::effect_transient`]); its writes were rolled back with the record of
    /// the id.
    #[error("the effect failed")]
    Effect {
        /// The effect's error.
        #[source]
        source: BoxError,
        /// Whether the effect said that a later attempt may succeed.
        transient: bool,
    },
    /// A reply of the store that the inbox does not understand (a script reply of another
    /// shape): a bug or a foreign script under the same SHA.
    #[error("unexpected reply from the store: {0}")]
    UnexpectedReply(String),
}

impl InboxError {
    /// An effect's own failure that will happen again (a business rule refused the
    /// message, a payload that does not parse).
    pub fn effect(source: impl Into<BoxError>) -> Self {
        Self::Effect {
            source: source.into(),
            transient: false,
        }
    }

    /// An effect's own failure that a later attempt may not meet (a downstream service
    /// timed out, a rate limit).
    pub fn effect_transient(source: impl Into<BoxError>) -> Self {
        Self::Effect {
            source: source.into(),
            transient: true,
        }
    }

    /// True when delivering the same message again later may succeed: a lost or refused
    /// connection, an exhausted pool, a timeout, a serialization failure or deadlock, a
    /// server starting or shutting down (PostgreSQL classes `08`, `57`, codes `40001`,
    /// `40P01`, `55P03`, `53300`, `53400`), a busy or locked SQLite file, a Redis busy with a
    /// script, loading or failing over, and [`InboxError::effect_transient`]. False for
    /// invalid names, refused statements and scripts, and [`InboxError::effect`].
    ///
    /// A transient failure may have happened after the commit (a connection lost while
    /// the commit's answer was on its way): the delivery after it is then answered
    /// [`Processed::Duplicate`](crate::Processed::Duplicate), never applied twice.
    pub fn is_transient(&self) -> bool {
        match self {
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            Self::Database(e) => sql_is_transient(e),
            #[cfg(feature = "redis")]
            Self::Redis(e) => redis_is_transient(e),
            Self::Effect { transient, .. } => *transient,
            _ => false,
        }
    }

    /// The effect's own error, when the effect failed with one of type `E`.
    pub fn effect_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Effect { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl From<sqlx::Error> for InboxError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for InboxError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

/// Whether a sqlx error is worth retrying unchanged; see [`InboxError::is_transient`].
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn sql_is_transient(error: &sqlx::Error) -> bool {
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
                    || matches!(&*code, "40001" | "40P01" | "55P03" | "53300" | "53400");
            }
            // SQLite: the extended result code; the primary code is its low byte.
            code.parse::<i32>()
                .is_ok_and(|c| matches!(c & 0xff, 5 /* BUSY */ | 6 /* LOCKED */))
        }
        _ => false,
    }
}

/// Whether a Redis error is worth retrying unchanged; see [`InboxError::is_transient`].
#[cfg(feature = "redis")]
fn redis_is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
        // A script running longer than busy-reply-threshold keeps the server busy.
        || e.code() == Some("BUSY")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("insufficient funds")]
    struct InsufficientFunds;

    #[test]
    fn effect_errors_keep_their_kind_and_source() {
        let permanent = InboxError::effect(InsufficientFunds);
        assert!(!permanent.is_transient());
        assert!(permanent.effect_error::<InsufficientFunds>().is_some());
        assert!(InboxError::effect_transient("rate limited").is_transient());
        assert!(
            InboxError::effect("no")
                .effect_error::<InsufficientFunds>()
                .is_none()
        );
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[test]
    fn sql_errors_are_classified() {
        assert!(InboxError::from(sqlx::Error::PoolTimedOut).is_transient());
        assert!(
            InboxError::from(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset
            )))
            .is_transient()
        );
        assert!(!InboxError::from(sqlx::Error::RowNotFound).is_transient());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_errors_are_classified() {
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(InboxError::from(io).is_transient());
        assert!(!InboxError::Refused("no".into()).is_transient());
    }
}
