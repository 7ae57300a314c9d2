//! Leases in a PostgreSQL table, for several runner processes.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, PgPool};

use crate::{Error, Fence, LeaseStore, Result};

/// The table name is built from a checked identifier only (see [`PgLeases::new`]), so the
/// statements below are assembled with `format!` safely.
///
/// Projection leases in a PostgreSQL table `<schema>.annals_projection_leases`.
///
/// One row per projection: owner, fence and expiry by the database's clock. Taking an
/// expired lease increments the fence in the same statement, so two runners can never get
/// the same fence. Plain statements only, no session state: it works through PgBouncer in
/// transaction mode, unlike advisory locks.
#[derive(Debug, Clone)]
pub struct PgLeases {
    pool: PgPool,
    table: String,
}

impl PgLeases {
    /// Uses `pool`, keeping the table in `schema`; call [`PgLeases::migrate`] once.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when `schema` is not a plain identifier (letters, digits, `_`).
    pub fn new(pool: PgPool, schema: &str) -> Result<Self> {
        let plain = !schema.is_empty()
            && schema.len() <= 63
            && schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !schema.as_bytes()[0].is_ascii_digit();
        if !plain {
            return Err(Error::InvalidName {
                name: schema.to_owned(),
                reason: "a schema must be a plain identifier (letters, digits, '_')",
            });
        }
        Ok(Self {
            pool,
            table: format!("\"{schema}\".annals_projection_leases"),
        })
    }

    /// Creates the schema and the table when missing.
    ///
    /// # Errors
    /// [`Error::Postgres`].
    pub async fn migrate(&self) -> Result<()> {
        let schema = self.table.split('.').next().unwrap_or("public");
        sqlx::query(AssertSqlSafe(format!(
            "create schema if not exists {schema}"
        )))
        .execute(&self.pool)
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "create table if not exists {} (
                projection text primary key,
                owner text not null,
                fence bigint not null,
                expires_at timestamptz not null
            )",
            self.table
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn acquire(&self, projection: &str, owner: &str, ttl: Duration) -> Result<Option<Fence>> {
        let row: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "insert into {t} as l (projection, owner, fence, expires_at)
             values ($1, $2, 1, now() + make_interval(secs => $3))
             on conflict (projection) do update
                set owner = excluded.owner, fence = l.fence + 1, expires_at = excluded.expires_at
                where l.expires_at <= now() or l.owner = excluded.owner
             returning fence",
            t = self.table
        )))
        .bind(projection)
        .bind(owner)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
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
            "update {} set expires_at = now() + make_interval(secs => $4)
             where projection = $1 and owner = $2 and fence = $3 and expires_at > now()",
            self.table
        )))
        .bind(projection)
        .bind(owner)
        .bind(i64::try_from(fence).unwrap_or(i64::MAX))
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn give_up(&self, projection: &str, owner: &str, fence: Fence) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "update {} set expires_at = now()
             where projection = $1 and owner = $2 and fence = $3",
            self.table
        )))
        .bind(projection)
        .bind(owner)
        .bind(i64::try_from(fence).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
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
