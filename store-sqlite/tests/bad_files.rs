//! Damaged and busy files: a corrupt file, damaged pages, a lock held elsewhere, a full disk.
//! Each failure is a typed error naming the file, never a panic, and no acknowledged event is
//! lost.

mod common;

use annals::{EventStore, ExpectedVersion, LogRead, testing::new_event};
use annals_sqlite::{Error, SqliteEventStore};
use common::{assert_names, config, log_ids, raw_connection, seeded, sid, sqlite_error, temp_dir};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::Connection;

#[tokio::test]
async fn a_file_of_garbage_is_a_corrupt_error() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    std::fs::write(&path, vec![0xA5_u8; 64 * 1024]).expect("write garbage");
    let error = SqliteEventStore::open(config(&path)).await.unwrap_err();
    assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
    assert_names(&error, &path);
    assert!(!error.is_transient());
}

#[tokio::test]
async fn damaged_pages_surface_as_typed_errors() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let (store, _) = seeded(&path, 300).await;
    store.close().await; // checkpoints the WAL into the file
    let mut bytes = std::fs::read(&path).expect("read the file");
    assert!(bytes.len() > 8 * 4096, "the file spans several pages");
    // Keep page 1 (header and schema), overwrite every later page.
    for b in &mut bytes[4096..] {
        *b = 0x5A;
    }
    std::fs::write(&path, bytes).expect("damage the file");

    let error = match SqliteEventStore::open(config(&path)).await {
        Err(error) => error,
        Ok(store) => {
            let read: annals::Result<Vec<_>> =
                store.read_all(LogRead::from_start()).try_collect().await;
            let error = read.expect_err("damaged pages cannot read back as events");
            assert!(!error.is_transient());
            match sqlite_error(&error) {
                Error::Corrupt { path, .. } | Error::CorruptRow { path, .. } => {
                    return assert_eq!(path, store.path());
                }
                other => panic!("expected a corrupt file, got {other:?}"),
            }
        }
    };
    assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
    assert_names(&error, &path);
}

#[tokio::test]
async fn an_exclusive_lock_held_elsewhere_fails_open_then_clears() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let (store, ids) = seeded(&path, 3).await;
    store.close().await;

    let mut holder = raw_connection(&path).await;
    sqlx::raw_sql("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .execute(&mut holder)
        .await
        .expect("take the exclusive lock");
    let error = SqliteEventStore::open(config(&path)).await.unwrap_err();
    assert!(matches!(error, Error::Locked { .. }), "{error:?}");
    assert!(error.is_transient());
    assert_names(&error, &path);

    holder.close().await.expect("release the lock");
    let store = SqliteEventStore::open(config(&path))
        .await
        .expect("opens once the lock is gone");
    assert_eq!(log_ids(&store).await, ids, "nothing was lost");
}

#[tokio::test]
async fn a_writer_elsewhere_makes_appends_transient_failures() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let (store, mut ids) = seeded(&path, 3).await;

    let mut holder = raw_connection(&path).await;
    sqlx::raw_sql("BEGIN IMMEDIATE;")
        .execute(&mut holder)
        .await
        .expect("take the write lock");
    let blocked = store
        .append(
            &sid("kept"),
            ExpectedVersion::Exact(3),
            vec![new_event("Late", json!({}))],
        )
        .await
        .unwrap_err();
    assert!(blocked.is_transient(), "{blocked:?}");
    let inner = sqlite_error(&blocked);
    assert!(matches!(inner, Error::Locked { .. }), "{inner:?}");
    assert_names(inner, &path);
    assert_eq!(log_ids(&store).await, ids, "readers are not blocked (WAL)");

    sqlx::raw_sql("ROLLBACK;")
        .execute(&mut holder)
        .await
        .expect("release the lock");
    let late = new_event("Late", json!({}));
    ids.push(late.event_id);
    let r = store
        .append(&sid("kept"), ExpectedVersion::Exact(3), vec![late])
        .await
        .expect("the same append succeeds once the lock is gone");
    assert_eq!(r.stream_version, 4);
    assert_eq!(log_ids(&store).await, ids);
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_keeps_every_acknowledged_event() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let store = SqliteEventStore::open(config(&path).with_max_size_bytes(256 * 1024))
        .await
        .expect("open");
    let blob = "x".repeat(2000);
    let mut acknowledged = Vec::new();
    let mut full = None;
    for round in 0..200 {
        let batch: Vec<_> = (0..10)
            .map(|i| new_event("Big", json!({ "round": round, "i": i, "blob": blob })))
            .collect();
        let ids: Vec<_> = batch.iter().map(|e| e.event_id).collect();
        match store.append(&sid("big"), ExpectedVersion::Any, batch).await {
            Ok(_) => acknowledged.extend(ids),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let error = full.expect("the cap is reached within 200 batches");
    assert!(!error.is_transient(), "{error:?}");
    let inner = sqlite_error(&error);
    assert!(matches!(inner, Error::DiskFull { .. }), "{inner:?}");
    assert_names(inner, &path);
    assert!(!acknowledged.is_empty());
    // A batch far over the cap: SQLite rolls the whole transaction back on its own.
    let huge: Vec<_> = (0..400)
        .map(|i| new_event("Big", json!({ "i": i, "blob": blob })))
        .collect();
    let r = store
        .append(&sid("big"), ExpectedVersion::Any, huge)
        .await
        .unwrap_err();
    assert!(matches!(sqlite_error(&r), Error::DiskFull { .. }), "{r:?}");
    // The writer is not wedged by the failed transaction: small appends go on until the cap
    // refuses them too, the same typed way, never with a driver state error.
    let mut refused = 0;
    for i in 0..500 {
        let event = new_event("Small", json!({ "i": i }));
        let id = event.event_id;
        match store
            .append(&sid("big"), ExpectedVersion::Any, vec![event])
            .await
        {
            Ok(_) => acknowledged.push(id),
            Err(e) => {
                assert!(matches!(sqlite_error(&e), Error::DiskFull { .. }), "{e:?}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 3, "the cap holds");
    assert_eq!(
        log_ids(&store).await,
        acknowledged,
        "the failed append wrote nothing"
    );
    assert_eq!(
        store.stream_version(&sid("big")).await.expect("version"),
        acknowledged.len() as u64
    );
    store.close().await;

    let store = SqliteEventStore::open(config(&path))
        .await
        .expect("reopen without a cap");
    assert_eq!(log_ids(&store).await, acknowledged);
    store
        .append(
            &sid("big"),
            ExpectedVersion::Exact(acknowledged.len() as u64),
            vec![new_event("Big", json!({}))],
        )
        .await
        .expect("room again");
}
