//! [`SqliteLeases`]: projection leases in a table of a SQLite file.

use std::time::Duration;

use annals_projections::{Fence, LeaseStore, Result};
use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, SqlitePool};

use super::{NOW_MS, immediate};
use crate::error::db;

/// Projection leases in the table `annals_projection_leases` of a SQLite file (the event
/// store's file, or any other every process of the application opens).
///
/// One row per projection: owner, fence and expiry in milliseconds by the clock SQLite
/// reads (the machine's: every process sharing a file runs on one machine). Taking a lease
/// increments the fence in the same statement, and the row stays when the lease is
/// released, so fences keep growing across processes and restarts: an application that
/// runs one process per command gets a higher fence each time, never 1 again. Every
/// statement runs in a `BEGIN IMMEDIATE` transaction, which waits up to the connection's
/// busy timeout for another process's write.
#[derive(Debug, Clone)]
pub struct SqliteLeases {
    pool: SqlitePool,
}

const TABLE: &str = "\"annals_projection_leases\"";

/// Milliseconds in `ttl`, for SQL.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteLeases {
    /// Uses `pool` (give its connections a busy timeout; sqlx's default is 5 s); call
    /// [`SqliteLeases::migrate`] once.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Creates the table when missing. Safe when several processes call it at once.
    ///
    /// # Errors
    /// Database errors ([`Error::Store`](annals_projections::Error::Store), transient or
    /// not).
    pub async fn migrate(&self) -> Result<()> {
        let mut tx = immediate(&self.pool).await.map_err(db)?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (
                projection TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                fence INTEGER NOT NULL,
                expires_at INTEGER NOT NULL
            )"
        )))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn acquire(&self, projection: &str, owner: &str, ttl: Duration) -> Result<Option<Fence>> {
        let mut tx = immediate(&self.pool).await.map_err(db)?;
        let row: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {TABLE} AS l (projection, owner, fence, expires_at)
             VALUES (?1, ?2, 1, {NOW_MS} + ?3)
             ON CONFLICT (projection) DO UPDATE
                SET owner = excluded.owner, fence = l.fence + 1, expires_at = excluded.expires_at
                WHERE l.expires_at <= {NOW_MS} OR l.owner = excluded.owner
             RETURNING fence"
        )))
        .bind(projection)
        .bind(owner)
        .bind(millis(ttl))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(row.map(|(f,)| f.unsigned_abs()))
    }

    async fn extend(
        &self,
        projection: &str,
        owner: &str,
        fence: Fence,
        ttl: Duration,
    ) -> Result<bool> {
        let mut tx = immediate(&self.pool).await.map_err(db)?;
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {TABLE} SET expires_at = {NOW_MS} + ?4
             WHERE projection = ?1 AND owner = ?2 AND fence = ?3 AND expires_at > {NOW_MS}"
        )))
        .bind(projection)
        .bind(owner)
        .bind(i64::try_from(fence).unwrap_or(i64::MAX))
        .bind(millis(ttl))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn give_up(&self, projection: &str, owner: &str, fence: Fence) -> Result<()> {
        let mut tx = immediate(&self.pool).await.map_err(db)?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {TABLE} SET expires_at = {NOW_MS}
             WHERE projection = ?1 AND owner = ?2 AND fence = ?3"
        )))
        .bind(projection)
        .bind(owner)
        .bind(i64::try_from(fence).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }
}

impl LeaseStore for SqliteLeases {
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
