//! Setup: schema names, isolation between schemas, migrations, and immutable events.

mod common;

use annals::{EventStore, ExpectedVersion, LogRead, StreamId, testing::new_event};
use annals_postgres::{Error, PgConfig, PgEventStore};
use futures::TryStreamExt;
use serde_json::json;

#[tokio::test]
async fn bad_schema_names_are_refused_before_connecting() {
    for name in [
        "",
        "Public",
        "a-b",
        "x\"; DROP SCHEMA public; --",
        "pg_catalog",
    ] {
        let config = PgConfig::new("postgres://nobody@127.0.0.1:1/none").with_schema(name);
        match PgEventStore::connect(config).await {
            Err(Error::InvalidSchemaName { name: n }) => assert_eq!(n, name),
            other => panic!("{name:?}: expected InvalidSchemaName, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn stored_events_cannot_be_updated_or_deleted() {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    let s = StreamId::new("immutable").unwrap();
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![new_event("Noted", json!({"a": 1}))],
        )
        .await
        .unwrap();
    for sql in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.expect_err(sql);
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("23001"), "{sql}: {db}");
        assert!(db.message().contains("immutable"), "{sql}: {db}");
    }
    let events: Vec<_> = store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload.as_str(), r#"{"a":1}"#);
    store.drop_schema().await.unwrap();
}

#[tokio::test]
async fn schemas_are_isolated_and_migrations_are_idempotent() {
    let Some(a) = common::try_store(common::config()).await else {
        return;
    };
    let b = common::fresh().await;
    // Migrating again is a no-op, and the bookkeeping lives in the store's own schema.
    a.migrate().await.unwrap();
    let in_schema: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = '_sqlx_migrations')",
    )
    .bind(a.schema())
    .fetch_one(a.pool())
    .await
    .unwrap();
    assert!(in_schema);

    let s = StreamId::new("shared-name").unwrap();
    a.append(
        &s,
        ExpectedVersion::NoStream,
        vec![new_event("A", json!({}))],
    )
    .await
    .unwrap();
    b.append(
        &s,
        ExpectedVersion::NoStream,
        vec![new_event("B", json!({}))],
    )
    .await
    .expect("the same stream name in another schema is another stream");
    let in_b: Vec<_> = b
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(in_b.len(), 1);
    assert_eq!(in_b[0].event_type.as_str(), "B");
    a.drop_schema().await.unwrap();
    b.drop_schema().await.unwrap();
}
