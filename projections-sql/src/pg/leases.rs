//! [`PgLeases`]: projection leases in a PostgreSQL table, for several runner processes.

use std::time::Duration;

use annals_projections::{Error, Fence, LeaseStore, Result};
use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, PgPool};

use super::{is_plain_identifier, migrate_locked};
use crate::{error::db, schema::quote};

/// Projection leases in a PostgreSQL table `<schema>.annals_projection_leases`.
///
/// One row per projection: owner, fence and expiry by the database's clock. Taking an
/// expired lease increments the fence in the same statement, so two runners can never get
/// the same fence, and the row stays when the lease is released, so fences keep growing
/// across processes and restarts. Plain statements only, no session state: it works
/// through PgBouncer in transaction mode, unlike session advisory locks.
#[derive(Debug, Clone)]
pub struct PgLeases {
    pool: PgPool,
    schema: String,
    table: String,
}

impl PgLeases {
    /// Uses `pool`, keeping the table in `schema` (the table name is built from this
    /// checked identifier only); call [`PgLeases::migrate`] once.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when `schema` is not a plain identifier (letters, digits, `_`).
    pub fn new(pool: PgPool, schema: &str) -> Result<Self> {
        if !is_plain_identifier(schema) {
            return Err(Error::InvalidName {
                name: schema.to_owned(),
                reason: "a schema must be a plain identifier (letters, digits, '_')",
            });
        }
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            table: format!("{}.annals_projection_leases", quote(schema)),
        })
    }

    /// Creates the schema and the table when missing. Safe when several processes call it
    /// at once: the DDL runs in one transaction under an advisory transaction lock.
    ///
    /// # Errors
    /// Database errors ([`Error::Store`], transient or not).
    pub async fn migrate(&self) -> Result<()> {
        let ddl = [
            format!("CREATE SCHEMA IF NOT EXISTS {}", quote(&self.schema)),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    projection text PRIMARY KEY,
                    owner text NOT NULL,
                    fence bigint NOT NULL,
                    expires_at timestamptz NOT NULL
                )",
                self.table
            ),
        ];
        migrate_locked(&self.pool, &format!("leases:{}", self.schema), &ddl).await?;
        Ok(())
    }

    async fn acquire(&self, projection: &str, owner: &str, ttl: Duration) -> Result<Option<Fence>> {
        let row: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {t} AS l (projection, owner, fence, expires_at)
             VALUES ($1, $2, 1, now() + make_interval(secs => $3))
             ON CONFLICT (projection) DO UPDATE
                SET owner = excluded.owner, fence = l.fence + 1, expires_at = excluded.expires_at
                WHERE l.expires_at <= now() OR l.owner = excluded.owner
             RETURNING fence",
            t = self.table
        )))
        .bind(projection)
        .bind(owner)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.map(|(f,)| f.unsigned_abs()))
    }

    async fn extend(
        &self,
        projection: &str,
        owner: &str,
        fence: Fence,
        ttl: Duration,
    ) -> Result<bool> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET expires_at = now() + make_interval(secs => $4)
             WHERE projection = $1 AND owner = $2 AND fence = $3 AND expires_at > now()",
            self.table
        )))
        .bind(projection)
        .bind(owner)
        .bind(i64::try_from(fence).unwrap_or(i64::MAX))
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn give_up(&self, projection: &str, owner: &str, fence: Fence) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET expires_at = now()
             WHERE projection = $1 AND owner = $2 AND fence = $3",
            self.table
        )))
        .bind(projection)
        .bind(owner)
        .bind(i64::try_from(fence).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}

impl LeaseStore for PgLeases {
    fn try_acquire<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Fence>>> {
        Box::pin(self.acquire(projection, owner, ttl))
    }

    fn renew<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.extend(projection, owner, fence, ttl))
    }

    fn release<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.give_up(projection, owner, fence))
    }
}
