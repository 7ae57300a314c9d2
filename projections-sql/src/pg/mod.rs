//! PostgreSQL: read models in tables ([`PgTables`]) and leases ([`PgLeases`]).

mod bind;
mod leases;
mod rows;
mod tables;
mod writer;

pub use leases::PgLeases;
pub use tables::PgTables;
pub use writer::PgWriter;

use sqlx::{AssertSqlSafe, PgConnection};

use crate::error::SqlResult;

/// Whether a PostgreSQL identifier is plain: letters, digits and `_`, not starting with a
/// digit, at most 63 bytes.
pub(crate) fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Runs `ddl` (statements without parameters) under a transaction-scoped advisory lock keyed
/// by `key`, so that processes migrating at the same time take turns instead of failing
/// with 23505 or 42P07 on the catalog. A concurrent creator that does not take the lock
/// (another tool) can still collide: those codes are retried a few times.
pub(crate) async fn migrate_locked(
    pool: &sqlx::PgPool,
    key: &str,
    ddl: &[String],
) -> SqlResult<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut tx = pool.begin().await?;
            lock(&mut tx, key).await?;
            for statement in ddl {
                sqlx::raw_sql(AssertSqlSafe(statement.as_str()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Err(sqlx::Error::Database(e))
                if attempt < 4
                    && e.code()
                        .is_some_and(|c| matches!(&*c, "23505" | "42P06" | "42P07")) =>
            {
                tracing::debug!(key, error = %e, "concurrent migration, trying again");
            }
            other => return Ok(other?),
        }
    }
}

/// Takes the transaction-scoped advisory lock of `key`.
async fn lock(connection: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("annals-projections-sql:{key}"))
        .execute(connection)
        .await?;
    Ok(())
}
