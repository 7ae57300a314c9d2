//! The store's identity: one random id per file, kept across handles and reopenings.

mod common;

use annals::{EventStore, ExpectedVersion, LogPosition, testing::new_event};
use annals_sqlite::{SqliteConfig, SqliteEventStore};
use common::{sid, temp_dir};
use serde_json::json;

#[tokio::test]
async fn each_file_has_its_own_id_and_keeps_it_when_reopened() {
    let dir = temp_dir();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let store_a = SqliteEventStore::open(SqliteConfig::new(&a))
        .await
        .expect("open a");
    let store_b = SqliteEventStore::open(SqliteConfig::new(&b))
        .await
        .expect("open b");
    let id_a = store_a.store_id().await.expect("id a");
    let id_b = store_b.store_id().await.expect("id b");
    assert_ne!(id_a, id_b, "two new files have different ids");
    assert_eq!(id_a.get_version_num(), 4, "a random (v4) uuid");

    store_a
        .append(
            &sid("s"),
            ExpectedVersion::Any,
            vec![new_event("E", json!({}))],
        )
        .await
        .expect("append");
    let second_handle = SqliteEventStore::open(SqliteConfig::new(&a))
        .await
        .expect("open a again");
    assert_eq!(second_handle.store_id().await.expect("id"), id_a);
    store_a.close().await;
    second_handle.close().await;

    let reopened = SqliteEventStore::open(SqliteConfig::new(&a))
        .await
        .expect("reopen a");
    assert_eq!(
        reopened.store_id().await.expect("id"),
        id_a,
        "reopening keeps the id"
    );
    assert_eq!(
        reopened
            .count_events(LogPosition::START, LogPosition::serial(1))
            .await
            .expect("count"),
        1
    );

    let memory = SqliteEventStore::in_memory().await.expect("in memory");
    let other = SqliteEventStore::in_memory().await.expect("in memory");
    assert_ne!(
        memory.store_id().await.expect("id"),
        other.store_id().await.expect("id")
    );
}
