//! [`SqliteInbox`]: processed ids in a SQLite table, inserted by the effect's transaction.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use crate::{InboxError, Processed, names};

/// The current time in milliseconds since 1970 by SQLite's clock, as an SQL expression.
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// An inbox in the table `annals_inbox` of a SQLite file (the application's own database,
/// so that the effect's tables and the ids commit together): one row per consumer and
/// processed message id (16 bytes), with the time it was processed in milliseconds.
///
/// [`SqliteInbox::process`] runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's
/// write lock first (waiting up to the connection's busy timeout), so deliveries of the
/// same id, from any connection or process, take turns: the first records the id and runs
/// the effect, the others find the id. Give the pool's connections a busy timeout
/// longer than an effect (sqlx's default is 5 s) and WAL mode.
///
/// The table keeps every id until [`SqliteInbox::prune`] forgets the old ones; see the
/// crate documentation on retention.
#[derive(Debug, Clone)]
pub struct SqliteInbox {
    pool: SqlitePool,
    consumer: String,
}

impl SqliteInbox {
    /// An inbox for `consumer` (the receiving service or handler; each has its own ids).
    /// Call [`SqliteInbox::migrate`] once.
    ///
    /// # Errors
    /// [`InboxError::InvalidName`] when `consumer` is not 1 to 128 ASCII letters, digits,
    /// `_`, `-`, `.`.
    pub fn new(pool: SqlitePool, consumer: &str) -> Result<Self, InboxError> {
        names::check_name("consumer", consumer)?;
        Ok(Self {
            pool,
            consumer: consumer.to_owned(),
        })
    }

    /// The consumer whose ids this inbox records.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The pool the inbox runs on.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates the table when missing. Safe when several processes call it at once.
    ///
    /// # Errors
    /// [`InboxError::Database`].
    pub async fn migrate(&self) -> Result<(), InboxError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS annals_inbox (
                consumer TEXT NOT NULL,
                message_id BLOB NOT NULL,
                processed_at INTEGER NOT NULL,
                PRIMARY KEY (consumer, message_id)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS annals_inbox_processed_at
                ON annals_inbox (consumer, processed_at);",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Processes the message `message_id` once: records the id and runs `effect` in one
    /// `BEGIN IMMEDIATE` transaction, or answers [`Processed::Duplicate`] without running
    /// it when the id is already recorded.
    ///
    /// The effect gets the transaction and writes through it (`&mut **tx`); it must not
    /// commit or roll back itself. It holds the file's write lock while it runs: keep it
    /// short. When it returns an error (or panics), the transaction rolls back: neither its
    /// writes nor the id stay, and the message can be processed again.
    ///
    /// # Errors
    /// The effect's error; [`InboxError::Database`] when a statement or the commit fails
    /// (a busy file after the busy timeout is transient).
    pub async fn process<T, F>(
        &self,
        message_id: Uuid,
        effect: F,
    ) -> Result<Processed<T>, InboxError>
    where
        F: for<'c> FnOnce(&'c mut Transaction<'_, Sqlite>) -> BoxFuture<'c, Result<T, InboxError>>
            + Send,
        T: Send,
    {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let recorded = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO annals_inbox (consumer, message_id, processed_at)
             VALUES (?1, ?2, {NOW_MS}) ON CONFLICT DO NOTHING"
        )))
        .bind(&self.consumer)
        .bind(message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 0 {
            if let Err(e) = tx.rollback().await {
                tracing::debug!(error = %e, "rolling back after a duplicate failed");
            }
            tracing::debug!(consumer = %self.consumer, %message_id, "duplicate delivery");
            return Ok(Processed::Duplicate);
        }
        match effect(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(Processed::Done(value))
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::debug!(error = %rollback, "rolling back a failed effect failed");
                }
                Err(e)
            }
        }
    }

    /// Whether `message_id` is recorded as processed (and not pruned).
    ///
    /// # Errors
    /// [`InboxError::Database`].
    pub async fn is_processed(&self, message_id: Uuid) -> Result<bool, InboxError> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM annals_inbox WHERE consumer = ?1 AND message_id = ?2")
                .bind(&self.consumer)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// Forgets this consumer's ids processed `older_than` ago or earlier (by SQLite's clock,
    /// in milliseconds) and returns how many. A message delivered again after its id is
    /// forgotten is processed again: prune only past the broker's redelivery horizon.
    ///
    /// # Errors
    /// [`InboxError::Database`].
    pub async fn prune(&self, older_than: Duration) -> Result<u64, InboxError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM annals_inbox WHERE consumer = ?1 AND processed_at <= {NOW_MS} - ?2"
        )))
        .bind(&self.consumer)
        .bind(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
