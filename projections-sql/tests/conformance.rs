//! The read-model conformance suite (`annals_projections::testing`) for the SQL targets:
//! PostgreSQL and SQLite tables, written with row upserts (`SqlBatch::upsert`), and SQLite
//! once more with statements (`SqlBatch::execute`).

mod common;

use std::collections::BTreeMap;

use annals_projections::testing::Target;
use annals_projections_sql::{PgTables, SqlBatch, SqlRow, SqlSchema, SqlValue, SqliteTables};

/// The suite's documents: one table `docs`, key to value.
fn docs() -> SqlSchema {
    SqlSchema::new().table(
        "docs",
        "CREATE TABLE {docs} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )
}

fn put(batch: &mut SqlBatch, key: &str, value: &str, upsert: bool) {
    if upsert {
        batch
            .upsert("docs", SqlRow::new().key("key", key).set("value", value))
            .unwrap();
    } else {
        batch
            .execute(
                "INSERT INTO {docs} (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [SqlValue::from(key), SqlValue::from(value)],
            )
            .unwrap();
    }
}

/// PostgreSQL: each test in a namespace of its own.
struct Postgres {
    pool: sqlx::PgPool,
    namespace: String,
    upsert: bool,
}

impl Target for Postgres {
    type Model = PgTables;

    async fn model(&self, name: &str) -> PgTables {
        PgTables::new(self.pool.clone(), &self.namespace, name, docs()).unwrap()
    }

    fn put(&self, batch: &mut SqlBatch, key: &str, value: &str) {
        put(batch, key, value, self.upsert);
    }

    async fn dump(&self, model: &PgTables) -> Option<BTreeMap<String, String>> {
        let view = model.view().await.unwrap()?;
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(
            view.sql("SELECT key, value FROM {docs}").unwrap(),
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        Some(rows.into_iter().collect())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        common::drop_schemas_now(&self.namespace);
    }
}

async fn postgres() -> Option<Postgres> {
    Some(Postgres {
        pool: common::postgres().await?,
        namespace: common::unique("c"),
        upsert: true,
    })
}

mod postgres {
    annals_projections::read_model_conformance_tests!(super::postgres());
}

/// SQLite: each test in a file of its own.
struct Sqlite {
    pool: sqlx::SqlitePool,
    _dir: tempfile::TempDir,
    upsert: bool,
}

impl Target for Sqlite {
    type Model = SqliteTables;

    async fn model(&self, name: &str) -> SqliteTables {
        SqliteTables::new(self.pool.clone(), name, docs()).unwrap()
    }

    fn put(&self, batch: &mut SqlBatch, key: &str, value: &str) {
        put(batch, key, value, self.upsert);
    }

    async fn dump(&self, model: &SqliteTables) -> Option<BTreeMap<String, String>> {
        let view = model.view().await.unwrap()?;
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(
            view.sql("SELECT key, value FROM {docs}").unwrap(),
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        Some(rows.into_iter().collect())
    }
}

async fn sqlite_with(upsert: bool) -> Option<Sqlite> {
    let dir = tempfile::tempdir().unwrap();
    let pool = common::sqlite(&dir.path().join("annals.db"), 4).await;
    Some(Sqlite {
        pool,
        _dir: dir,
        upsert,
    })
}

mod sqlite {
    annals_projections::read_model_conformance_tests!(super::sqlite_with(true));
}

/// The same through `SqlBatch::execute`.
mod sqlite_execute {
    annals_projections::read_model_conformance_tests!(super::sqlite_with(false));
}
