//! Fixtures shared by the integration tests: database connections and unique names.

#![allow(dead_code, unreachable_pub)]

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions},
};

/// A random name: `prefix` and 12 hex digits.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), or
/// `None` with a notice when it is unreachable and CI is unset; panics in CI.
pub async fn postgres() -> Option<PgPool> {
    postgres_with(8).await
}

/// As [`postgres`], with a pool of `max` connections.
pub async fn postgres_with(max: u32) -> Option<PgPool> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let connect = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(pool)) => Some(pool),
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is unreachable at {url} ({other:?}); start it with scripts/services.sh"
            );
            eprintln!("notice: PostgreSQL unreachable at {url}, skipping");
            None
        }
    }
}

/// Drops a test's schemas: every schema whose name starts with `prefix`.
pub async fn drop_schemas(pool: &PgPool, prefix: &str) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(prefix)
            .fetch_all(pool)
            .await
            .unwrap();
    for (name,) in names {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Drops every schema whose name starts with `prefix`, on a connection of its own, from a
/// thread of its own (usable in `Drop`, inside or outside a runtime).
pub fn drop_schemas_now(prefix: &str) {
    let owned = prefix.to_owned();
    let done = std::thread::spawn(move || {
        let prefix = owned;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            if let Some(pool) = postgres_with(1).await {
                drop_schemas(&pool, &prefix).await;
                pool.close().await;
            }
        });
    })
    .join();
    if done.is_err() {
        eprintln!("notice: could not drop the test schemas {prefix}*");
    }
}

/// A pool on the SQLite file `path` (created when missing, WAL mode), as a separate process
/// would open it.
pub async fn sqlite(path: &std::path::Path, max: u32) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .unwrap()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(options)
        .await
        .unwrap()
}
