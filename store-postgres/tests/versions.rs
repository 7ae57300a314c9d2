//! A stream's version is its newest event's (migration 0007): the `streams` table is neither
//! read nor written, and an append expecting a version the store has seen itself writes
//! without reading it, its staleness caught by the key on `(stream_id, stream_version)`.

mod common;

use annals::{
    Error as AnnalsError, EventStore, ExpectedVersion, StreamAppend, StreamId, StreamRead,
    testing::new_event,
};
use annals_postgres::{PgConfig, PgEventStore};
use futures::TryStreamExt;
use serde_json::json;

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

fn one(i: u64) -> Vec<annals::NewEvent> {
    vec![new_event("E", json!({ "i": i }))]
}

/// The versions stored for `stream`, in order.
async fn versions(store: &PgEventStore, stream: &StreamId) -> Vec<u64> {
    store
        .read_stream(stream, StreamRead::forward())
        .map_ok(|e| e.stream_version)
        .try_collect()
        .await
        .expect("read the stream")
}

/// Appends versions 1, 2 and 3 to `stream`, one by one, each expecting the one before.
async fn three_events(store: &PgEventStore, stream: &StreamId) {
    for v in 0..3 {
        store
            .append(stream, ExpectedVersion::Exact(v), one(v))
            .await
            .expect("append");
    }
}

fn conflict_actual(result: annals::Result<annals::AppendResult>) -> u64 {
    match result {
        Err(AnnalsError::Conflict { actual, .. }) => actual,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A second store on the same schema: its own memory of versions, its own connections.
async fn second(store: &PgEventStore) -> PgEventStore {
    PgEventStore::connect(
        PgConfig::new(common::database_url())
            .with_schema(store.schema())
            .with_max_connections(8),
    )
    .await
    .expect("connect a second store")
}

/// Every kind of expected version is judged against the events, whatever `streams` says: its
/// rows are emptied, or set far ahead, and every answer stays right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_come_from_the_events_not_the_streams_table() {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    let s = sid("s");
    store
        .append(&s, ExpectedVersion::NoStream, one(1))
        .await
        .expect("create");
    store
        .append(&s, ExpectedVersion::Exact(1), one(2))
        .await
        .expect("second");
    // Rows a binary from before 0007 might have left behind: none, and one far ahead.
    sqlx::query("DELETE FROM streams")
        .execute(store.pool())
        .await
        .expect("empty streams");
    sqlx::query("INSERT INTO streams (stream_id, version) VALUES ('ghost', 7)")
        .execute(store.pool())
        .await
        .expect("a row with no events");

    // A fresh store: nothing seen, so every check reads.
    let fresh = second(&store).await;
    let ghost = sid("ghost");
    assert_eq!(fresh.stream_version(&s).await.expect("version"), 2);
    assert_eq!(fresh.stream_version(&ghost).await.expect("version"), 0);
    assert_eq!(
        conflict_actual(fresh.append(&s, ExpectedVersion::NoStream, one(3)).await),
        2
    );
    assert_eq!(
        conflict_actual(fresh.append(&s, ExpectedVersion::Exact(5), one(3)).await),
        2,
        "a version ahead of the events is a conflict, not a gap"
    );
    assert_eq!(
        conflict_actual(
            fresh
                .append(&ghost, ExpectedVersion::StreamExists, one(3))
                .await
        ),
        0
    );
    assert_eq!(
        conflict_actual(
            fresh
                .append(&ghost, ExpectedVersion::Exact(7), one(3))
                .await
        ),
        0
    );
    let r = fresh
        .append(&s, ExpectedVersion::Exact(2), one(3))
        .await
        .expect("exact");
    assert_eq!(r.stream_version, 3);
    let r = fresh
        .append(&s, ExpectedVersion::StreamExists, one(4))
        .await
        .expect("exists");
    assert_eq!(r.stream_version, 4);
    let r = fresh
        .append(&s, ExpectedVersion::Any, one(5))
        .await
        .expect("any");
    assert_eq!(r.stream_version, 5);
    let r = fresh
        .append(&ghost, ExpectedVersion::NoStream, one(1))
        .await
        .expect("a stream with a stale row and no events is new");
    assert_eq!(r.stream_version, 1);
    // A group of calls each to its own stream (the batch statement) and a call to two
    // streams (append_group), concurrently.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let fresh = fresh.clone();
            tokio::spawn(async move {
                let stream = if i == 0 {
                    sid("s")
                } else {
                    sid(&format!("b{i}"))
                };
                let expected = if i == 0 {
                    ExpectedVersion::Exact(5)
                } else {
                    ExpectedVersion::NoStream
                };
                fresh.append(&stream, expected, one(i)).await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("concurrent append");
    }
    let both = fresh
        .append_multi(vec![
            StreamAppend::new(s.clone(), ExpectedVersion::Exact(6), one(7)),
            StreamAppend::new(ghost.clone(), ExpectedVersion::Exact(1), one(2)),
        ])
        .await
        .expect("two streams at once");
    assert_eq!(
        both.iter().map(|r| r.stream_version).collect::<Vec<_>>(),
        [7, 2]
    );
    assert_eq!(versions(&fresh, &s).await, (1..=7).collect::<Vec<_>>());
    assert_eq!(versions(&fresh, &ghost).await, [1, 2]);
    store.drop_schema().await.expect("drop the test schema");
}

/// A store that saw version 3 appends after it without reading; when another store has
/// appended meanwhile, the key refuses the write and the answer is the conflict with the
/// stream's real version: nothing written, no gap, and the retry after it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_seen_version_is_a_conflict_not_a_lost_or_gapped_write() {
    let Some(a) = common::try_store(common::config()).await else {
        return;
    };
    let b = second(&a).await;
    let streams: Vec<StreamId> = (0..8).map(|i| sid(&format!("s{i}"))).collect();
    for stream in &streams {
        three_events(&a, stream).await;
    }
    // `b` moves every stream on; `a` still believes version 3.
    for stream in &streams {
        b.append(stream, ExpectedVersion::Exact(3), one(3))
            .await
            .expect("b writes");
    }
    // Alone (the direct statement), one event and several.
    assert_eq!(
        conflict_actual(
            a.append(&streams[0], ExpectedVersion::Exact(3), one(9))
                .await
        ),
        4
    );
    let two = vec![new_event("E", json!({})), new_event("E", json!({}))];
    assert_eq!(
        conflict_actual(a.append(&streams[1], ExpectedVersion::Exact(3), two).await),
        4
    );
    // Concurrently (grouped by the writers), each call to a stream of its own.
    let tasks: Vec<_> = streams[2..]
        .iter()
        .cloned()
        .map(|stream| {
            let a = a.clone();
            tokio::spawn(async move { a.append(&stream, ExpectedVersion::Exact(3), one(9)).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(conflict_actual(task.await.expect("task")), 4);
    }
    for stream in &streams {
        assert_eq!(versions(&a, stream).await, [1, 2, 3, 4], "{stream}");
    }
    // The conflict told `a` the real version; appending after it works.
    for stream in &streams {
        let r = a
            .append(stream, ExpectedVersion::Exact(4), one(4))
            .await
            .expect("after the conflict");
        assert_eq!(r.stream_version, 5);
    }
    a.drop_schema().await.expect("drop the test schema");
}

/// A schema dropped and made anew has none of the versions seen before: an append expecting
/// one of them is a conflict, never events written after a version that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_made_anew_forgets_the_versions_seen() {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    let s = sid("s");
    three_events(&store, &s).await;
    store.drop_schema().await.expect("drop");
    store.migrate().await.expect("migrate anew");
    assert_eq!(
        conflict_actual(store.append(&s, ExpectedVersion::Exact(3), one(3)).await),
        0
    );
    assert!(versions(&store, &s).await.is_empty(), "no gapped write");
    store.drop_schema().await.expect("drop the test schema");
}

/// A server that lost commits (a standby promoted without them), played by a schema made
/// anew while every connection of the store is cut: the store opens new connections and
/// forgets what it saw, so an append expecting a version seen before is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_forget_the_versions_seen() {
    let (config, name) = common::named_config();
    let Some(store) = common::try_store(config).await else {
        return;
    };
    let other = second(&store).await;
    let s = sid("s");
    three_events(&store, &s).await;
    other.drop_schema().await.expect("drop");
    other.migrate().await.expect("migrate anew");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .execute(other.pool())
    .await
    .expect("cut the store's connections");
    // Until the dead connections are found and replaced, calls may fail; then they succeed.
    for _ in 0..50 {
        if store.stream_version(&sid("warm-up")).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut answer = store.append(&s, ExpectedVersion::Exact(3), one(3)).await;
    for _ in 0..10 {
        match answer {
            Err(AnnalsError::Conflict { .. }) | Ok(_) => break,
            Err(_) => answer = store.append(&s, ExpectedVersion::Exact(3), one(3)).await,
        }
    }
    assert_eq!(conflict_actual(answer), 0);
    assert!(versions(&other, &s).await.is_empty(), "no gapped write");
    other.drop_schema().await.expect("drop the test schema");
}
