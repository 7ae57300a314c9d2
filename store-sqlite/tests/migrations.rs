//! A file made by an older version of this crate (only the first migration applied) opens,
//! migrates and keeps its events.

mod common;

use std::borrow::Cow;

use annals::{EventStore, ExpectedVersion, LogPosition, LogRead, Payload, Snapshot, StreamId};
use annals_sqlite::{SqliteConfig, SqliteEventStore};
use common::temp_dir;
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

#[tokio::test]
async fn a_file_with_only_the_first_migration_opens_and_keeps_its_events() {
    let dir = temp_dir();
    let path = dir.path().join("old.db");

    // What version 0.1 (the first migration alone) left on disk, written as it wrote it.
    let mut old = sqlx::migrate!("./migrations");
    assert!(
        old.migrations.len() >= 2,
        "the upgrade path is really exercised"
    );
    old.migrations = Cow::Owned(old.migrations.iter().take(1).cloned().collect());
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .expect("create the old file");
    old.run(&pool).await.expect("the first migration");
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    sqlx::query("INSERT INTO streams (stream_id, version) VALUES ('acc-1', 3)")
        .execute(&pool)
        .await
        .expect("stream row");
    for (i, id) in ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO events (stream_key, stream_version, event_id, event_type, \
             schema_version, payload, metadata, recorded_at) \
             VALUES (1, ?, ?, 'Deposited', 1, ?, '{}', 1700000000000000000)",
        )
        .bind(i as i64 + 1)
        .bind(*id)
        .bind(format!(r#"{{"amount": {i}}}"#))
        .execute(&pool)
        .await
        .expect("event row");
    }
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("tables");
    assert!(!tables.contains(&"snapshots".to_owned()), "{tables:?}");
    pool.close().await;

    let store = SqliteEventStore::open(SqliteConfig::new(&path))
        .await
        .expect("the old file opens and migrates");
    let stream = StreamId::new("acc-1").expect("id");
    let log = store
        .read_all(LogRead::from_start())
        .try_collect::<Vec<_>>()
        .await
        .expect("read");
    let stored: Vec<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(stored, ids, "the old events are kept");
    assert_eq!(log[1].payload.as_str(), r#"{"amount": 1}"#);
    assert_eq!(store.stream_version(&stream).await.expect("version"), 3);
    // The file had no identity: opening it made one.
    let id = store.store_id().await.expect("an old file gets a store id");
    assert_ne!(id, Uuid::nil());

    let next = store
        .append(
            &stream,
            ExpectedVersion::Exact(3),
            vec![annals::testing::new_event(
                "Deposited",
                serde_json::json!({}),
            )],
        )
        .await
        .expect("append after the upgrade");
    assert_eq!(next.stream_version, 4);
    assert_eq!(next.first_position, LogPosition::serial(4));

    // The second migration's table works.
    store
        .save_snapshot(Snapshot {
            stream_id: stream.clone(),
            stream_version: 4,
            schema_version: 1,
            payload: Payload::from_json("{}").expect("json"),
            taken_at: OffsetDateTime::now_utc(),
        })
        .await
        .expect("snapshot");
    assert!(store.load_snapshot(&stream).await.expect("load").is_some());
    store.close().await;

    // Opening again applies nothing new and changes nothing.
    let store = SqliteEventStore::open(SqliteConfig::new(&path))
        .await
        .expect("reopen");
    let versions: Vec<i64> = {
        let pool = SqlitePoolOptions::new()
            .connect_with(SqliteConnectOptions::new().filename(&path))
            .await
            .expect("inspect");
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .expect("applied migrations")
    };
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(
        store.store_id().await.expect("store id"),
        id,
        "reopening keeps the id"
    );
    assert_eq!(
        store.head_position().await.expect("head"),
        Some(LogPosition::serial(4))
    );
}
