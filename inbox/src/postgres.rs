//! [`PgInbox`]: processed ids in a PostgreSQL table, inserted by the effect's transaction.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{InboxError, Processed, names};

/// An inbox in the PostgreSQL table `<schema>.annals_inbox`: one row per consumer and
/// processed message id, with the time it was processed.
///
/// [`PgInbox::process`] opens a transaction, inserts the message's id
/// (`INSERT ... ON CONFLICT DO NOTHING`) and runs the effect in the same transaction only
/// when the insert wrote a row; the commit makes both durable, a failure neither. A
/// concurrent delivery of the same id blocks on the first one's uncommitted row, then sees
/// it committed (a duplicate) or rolled back (its turn to process). Under `SERIALIZABLE` or
/// `REPEATABLE READ` as the default isolation, the second gets a serialization failure
/// instead, which [`InboxError::is_transient`] marks for a retry that sees the duplicate.
///
/// The table keeps every id until [`PgInbox::prune`] forgets the old ones; see the crate
/// documentation on retention.
#[derive(Debug, Clone)]
pub struct PgInbox {
    pool: PgPool,
    schema: String,
    table: String,
    consumer: String,
}

impl PgInbox {
    /// An inbox for `consumer` (the receiving service or handler; each has its own ids)
    /// with its table in `schema`. Call [`PgInbox::migrate`] once.
    ///
    /// # Errors
    /// [`InboxError::InvalidName`] when `schema` is not a plain identifier or `consumer`
    /// is not 1 to 128 ASCII letters, digits, `_`, `-`, `.`.
    pub fn new(pool: PgPool, schema: &str, consumer: &str) -> Result<Self, InboxError> {
        names::check_schema(schema)?;
        names::check_name("consumer", consumer)?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            table: format!("\"{schema}\".annals_inbox"),
            consumer: consumer.to_owned(),
        })
    }

    /// The consumer whose ids this inbox records.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The pool the inbox runs on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the schema and the table when missing. Safe when several processes call it
    /// at once: the DDL runs in one transaction under an advisory transaction lock.
    ///
    /// # Errors
    /// [`InboxError::Database`].
    pub async fn migrate(&self) -> Result<(), InboxError> {
        let ddl = [
            format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    consumer text NOT NULL,
                    message_id uuid NOT NULL,
                    processed_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (consumer, message_id)
                )",
                self.table
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS annals_inbox_processed_at
                    ON {} (consumer, processed_at)",
                self.table
            ),
        ];
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("annals-inbox:{}", self.schema))
                    .execute(&mut *tx)
                    .await?;
                for statement in &ddl {
                    sqlx::raw_sql(AssertSqlSafe(statement.as_str()))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await;
            match result {
                // Another tool creating the same schema without the lock.
                Err(sqlx::Error::Database(e))
                    if attempt < 4
                        && e.code()
                            .is_some_and(|c| matches!(&*c, "23505" | "42P06" | "42P07")) =>
                {
                    tracing::debug!(schema = %self.schema, error = %e, "concurrent migration, trying again");
                }
                other => return Ok(other?),
            }
        }
    }

    /// Processes the message `message_id` once: records the id and runs `effect` in one
    /// transaction, or answers [`Processed::Duplicate`] without running it when the id is
    /// already recorded.
    ///
    /// The effect gets the transaction and writes through it (`&mut **tx`); it must not
    /// commit or roll back itself. When it returns an error (or panics), the transaction
    /// rolls back: neither its writes nor the id stay, and the message can be processed
    /// again.
    ///
    /// # Errors
    /// The effect's error; [`InboxError::Database`] when a statement or the commit fails. A
    /// failed commit may have committed: the next delivery answers `Duplicate` then.
    pub async fn process<T, F>(
        &self,
        message_id: Uuid,
        effect: F,
    ) -> Result<Processed<T>, InboxError>
    where
        F: for<'c> FnOnce(
                &'c mut Transaction<'_, Postgres>,
            ) -> BoxFuture<'c, Result<T, InboxError>>
            + Send,
        T: Send,
    {
        let mut tx = self.pool.begin().await?;
        let recorded = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.table
        )))
        .bind(&self.consumer)
        .bind(message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 0 {
            // Nothing was written; a failed rollback only costs the connection.
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
        let row: Option<(i32,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT 1 FROM {} WHERE consumer = $1 AND message_id = $2",
            self.table
        )))
        .bind(&self.consumer)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Forgets this consumer's ids processed `older_than` ago or earlier (by the database's
    /// clock) and returns how many. A message delivered again after its id is forgotten
    /// is processed again: prune only past the broker's redelivery horizon.
    ///
    /// # Errors
    /// [`InboxError::Database`].
    pub async fn prune(&self, older_than: Duration) -> Result<u64, InboxError> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {} WHERE consumer = $1
                AND processed_at <= now() - make_interval(secs => $2)",
            self.table
        )))
        .bind(&self.consumer)
        // At most ~317 years back, so that the bound stays a valid timestamp.
        .bind(older_than.as_secs_f64().min(1e10))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
