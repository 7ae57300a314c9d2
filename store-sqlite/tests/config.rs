//! Configuration that changes behaviour: limits, durability, clones, closing.

mod common;

use annals::{EventStore, ExpectedVersion, Limits, LogRead, testing::new_event};
use annals_sqlite::{Durability, SqliteConfig, SqliteEventStore};
use common::{log_ids, sid, sqlite_error, temp_dir};
use futures::TryStreamExt;
use serde_json::json;

#[tokio::test]
async fn configured_limits_are_checked_before_any_io() {
    let dir = temp_dir();
    let limits = Limits::default()
        .with_max_event_bytes(64)
        .with_max_events_per_append(3);
    let store =
        SqliteEventStore::open(SqliteConfig::new(dir.path().join("events.db")).with_limits(limits))
            .await
            .expect("open");
    assert_eq!(store.limits(), limits);
    let big = new_event("Big", json!({ "blob": "x".repeat(64) }));
    let r = store
        .append(&sid("s"), ExpectedVersion::Any, vec![big])
        .await;
    assert!(
        matches!(r, Err(annals::Error::PayloadTooLarge { limit: 64, .. })),
        "{r:?}"
    );
    let many: Vec<_> = (0..4).map(|i| new_event("N", json!({ "i": i }))).collect();
    let r = store.append(&sid("s"), ExpectedVersion::Any, many).await;
    assert!(
        matches!(r, Err(annals::Error::InvalidAppend { .. })),
        "{r:?}"
    );
    assert!(log_ids(&store).await.is_empty(), "nothing was written");

    let memory = SqliteEventStore::in_memory_with_limits(limits)
        .await
        .expect("memory");
    let r = memory
        .append(
            &sid("s"),
            ExpectedVersion::Any,
            vec![new_event("Big", json!({ "blob": "x".repeat(64) }))],
        )
        .await;
    assert!(
        matches!(r, Err(annals::Error::PayloadTooLarge { .. })),
        "{r:?}"
    );
}

#[tokio::test]
async fn normal_durability_stores_and_reopens_the_same_events() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let store =
        SqliteEventStore::open(SqliteConfig::new(&path).with_durability(Durability::Normal))
            .await
            .expect("open");
    let batch: Vec<_> = (0..5).map(|i| new_event("N", json!({ "i": i }))).collect();
    let ids: Vec<_> = batch.iter().map(|e| e.event_id).collect();
    store
        .append(&sid("s"), ExpectedVersion::NoStream, batch)
        .await
        .expect("append");
    store.close().await;
    let store = SqliteEventStore::open(SqliteConfig::new(&path))
        .await
        .expect("reopen");
    assert_eq!(log_ids(&store).await, ids);
}

#[tokio::test]
async fn clones_share_the_file_and_a_closed_store_fails_with_a_typed_error() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let store = SqliteEventStore::open(SqliteConfig::new(&path))
        .await
        .expect("open");
    let clone = store.clone();
    clone
        .append(
            &sid("s"),
            ExpectedVersion::NoStream,
            vec![new_event("N", json!({}))],
        )
        .await
        .expect("append through a clone");
    assert_eq!(store.stream_version(&sid("s")).await.expect("version"), 1);
    store.close().await;
    let r = clone
        .append(
            &sid("s"),
            ExpectedVersion::Any,
            vec![new_event("N", json!({}))],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlite_error(&r).path(), path);
    let read: annals::Result<Vec<_>> = clone.read_all(LogRead::from_start()).try_collect().await;
    assert!(read.is_err());
}

#[tokio::test]
async fn any_page_size_reads_the_same_events() {
    let store = SqliteEventStore::in_memory().await.expect("store");
    let batch: Vec<_> = (0..5).map(|i| new_event("N", json!({ "i": i }))).collect();
    let ids: Vec<_> = batch.iter().map(|e| e.event_id).collect();
    store
        .append(&sid("s"), ExpectedVersion::NoStream, batch)
        .await
        .expect("append");
    for page_size in [1, 2, 5, 6, usize::MAX] {
        let log: Vec<_> = store
            .read_all(LogRead::from_start().with_page_size(page_size))
            .map_ok(|e| e.event_id)
            .try_collect()
            .await
            .expect("log");
        assert_eq!(log, ids, "log, page size {page_size}");
        let stream: Vec<_> = store
            .read_stream(
                &sid("s"),
                annals::StreamRead::forward().with_page_size(page_size),
            )
            .map_ok(|e| e.event_id)
            .try_collect()
            .await
            .expect("stream");
        assert_eq!(stream, ids, "stream, page size {page_size}");
    }
}
