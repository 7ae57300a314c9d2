//! Fixtures shared by the integration tests: service connections and unique names.

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

/// Panics when CI is set (a service a test needs is missing there), else prints a notice.
fn unreachable(service: &str, url: &str, detail: &dyn std::fmt::Debug) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{service} is unreachable at {url} ({detail:?}); start it with scripts/services.sh"
    );
    eprintln!("notice: {service} unreachable at {url}, skipping");
}

/// The PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) with a
/// pool of `max` connections, or `None` with a notice when it is unreachable and CI is
/// unset; panics in CI.
pub async fn postgres(max: u32) -> Option<PgPool> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let connect = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(pool)) => Some(pool),
        other => {
            unreachable("PostgreSQL", &url, &other);
            None
        }
    }
}

/// Drops the schema `name` and everything in it.
pub async fn drop_schema(pool: &PgPool, name: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// The Redis at REDIS_URL (default redis://127.0.0.1:6379), or `None` with a notice when
/// it is unreachable and CI is unset; panics in CI.
pub async fn redis() -> Option<redis::aio::ConnectionManager> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let connect = async {
        let client = redis::Client::open(url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1);
        redis::aio::ConnectionManager::new_with_config(client, config).await
    };
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(connection)) => Some(connection),
        other => {
            unreachable("Redis", &url, &other);
            None
        }
    }
}

/// The nodes of REDIS_CLUSTER_URLS (set by scripts/services.sh), or `None` with a notice
/// when it is unset and CI is unset; panics in CI and when the cluster is unreachable.
pub async fn redis_cluster() -> Option<redis::cluster_async::ClusterConnection> {
    let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "REDIS_CLUSTER_URLS is not set; run `source scripts/services.sh; ensure_redis_cluster`"
        );
        eprintln!("notice: REDIS_CLUSTER_URLS not set, skipping the cluster test");
        return None;
    };
    let nodes: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let connect = async {
        redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(10))
            .build()?
            .get_async_connection()
            .await
    };
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(e)) => panic!("the Redis Cluster at {urls} is unreachable: {e}"),
        Err(_) => panic!("the Redis Cluster at {urls} did not answer within 10 s"),
    }
}

/// Deletes every key under the hash tag `{prefix}`.
pub async fn delete_prefix(connection: &redis::aio::ConnectionManager, prefix: &str) {
    let mut c = connection.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
    }
}

/// A pool on the SQLite file `path` (created when missing, WAL mode, 10 s busy timeout),
/// as a separate process would open it.
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
