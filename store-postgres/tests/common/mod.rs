//! Test support: a fresh store in its own random schema.
#![allow(dead_code, unreachable_pub)]

use std::time::{SystemTime, UNIX_EPOCH};

use annals_postgres::{PgConfig, PgEventStore};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name no other test uses: `annals_t_<unix seconds>_<random>`.
pub fn unique_schema() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("annals_t_{secs}_{:016x}", rand::random::<u64>())
}

/// The test configuration for a new random schema.
pub fn config() -> PgConfig {
    PgConfig::new(database_url())
        .with_schema(unique_schema())
        .with_max_connections(8)
}

/// The test configuration for a new random schema whose connections carry the schema's name
/// as their application name, so `pg_stat_activity` tells them from other tests'.
pub fn named_config() -> (PgConfig, String) {
    let schema = unique_schema();
    let url = database_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let config = PgConfig::new(format!("{url}{separator}application_name={schema}"))
        .with_schema(schema.clone())
        .with_max_connections(8);
    (config, schema)
}

/// Connects and migrates `config`, or reports that PostgreSQL is unreachable: a panic under
/// CI, `None` with a notice otherwise.
pub async fn try_store(config: PgConfig) -> Option<PgEventStore> {
    let store = match PgEventStore::connect(config).await {
        Ok(store) => store,
        Err(error) => {
            let message = format!("PostgreSQL unreachable at {}: {error}", database_url());
            if std::env::var_os("CI").is_some() {
                panic!("{message}");
            }
            eprintln!("skipping: {message}");
            return None;
        }
    };
    store.migrate().await.expect("migrate");
    drop_stale_schemas(&store).await;
    Some(store)
}

/// A migrated store in a fresh schema; panics when PostgreSQL is unreachable.
pub async fn fresh() -> PgEventStore {
    match try_store(config()).await {
        Some(store) => store,
        None => panic!("these tests need PostgreSQL at {}", database_url()),
    }
}

/// Drops test schemas left over by runs more than ten minutes ago (a check times out after
/// two minutes; the conformance macro gives no hook to drop a schema when its test ends).
async fn drop_stale_schemas(store: &PgEventStore) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'annals\\_t\\_%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default();
    for name in names {
        let secs: Option<u64> = name.split('_').nth(3).and_then(|s| s.parse().ok());
        if secs.is_some_and(|s| s + 600 < now)
            && annals_postgres::validate_schema_name(&name).is_ok()
        {
            let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(store.pool())
                .await;
        }
    }
}
