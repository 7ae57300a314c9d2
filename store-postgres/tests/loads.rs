//! Loads of aggregates made at once are read together (`loads.rs`): each caller still gets
//! exactly its own stream's events, also past the first page, and callers dropped while
//! queued or leading a batch leave the others working.

mod common;

use std::time::Duration;

use annals::{EventStore, ExpectedVersion, StreamId, StreamRead, testing::new_event};
use futures::TryStreamExt;
use serde_json::json;

fn sid(i: usize) -> StreamId {
    StreamId::new(format!("load-{i}")).expect("a stream id")
}

/// Stream `i` holds `length(i)` events; the last one is longer than a page.
fn length(i: usize) -> usize {
    if i == 39 { 2_345 } else { i % 13 }
}

async fn versions(store: &annals_postgres::PgEventStore, i: usize) -> Vec<u64> {
    let read = store
        .read_aggregate(&sid(i), None, StreamRead::forward().for_folding())
        .await
        .expect("read_aggregate");
    read.events
        .map_ok(|e| {
            assert_eq!(e.stream_id, sid(i));
            assert_eq!(
                e.payload.as_str(),
                format!(r#"{{"i":{i},"n":{}}}"#, e.stream_version)
            );
            e.stream_version
        })
        .try_collect()
        .await
        .expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_loads_each_get_their_own_stream() {
    let Some(store) = common::try_store(common::config().with_max_connections(8)).await else {
        return;
    };
    for i in 0..40 {
        let events: Vec<_> = (1..=length(i))
            .map(|n| new_event("E", json!({ "i": i, "n": n })))
            .collect();
        for chunk in events.chunks(1_000) {
            store
                .append(&sid(i), ExpectedVersion::Any, chunk.to_vec())
                .await
                .expect("append");
        }
    }
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..20 {
                    let i = (t * 7 + round * 3) % 40;
                    let expected: Vec<u64> = (1..=length(i) as u64).collect();
                    assert_eq!(versions(&store, i).await, expected, "stream {i}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a load task");
    }

    // Callers dropped at every point (queued, leading, reading) leave no batch stuck.
    let dropped: Vec<_> = (0..200)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let wait = Duration::from_micros((t % 17) as u64 * 150);
                let _ = tokio::time::timeout(wait, versions(&store, t % 40)).await;
            })
        })
        .collect();
    for task in dropped {
        task.await.expect("a dropped load");
    }
    let after: Vec<_> = (0..32)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move { versions(&store, t).await.len() })
        })
        .collect();
    for (t, task) in after.into_iter().enumerate() {
        let loaded = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("loads after the drops finish")
            .expect("a load task");
        assert_eq!(loaded, length(t));
    }
    store.drop_schema().await.expect("drop");
}
