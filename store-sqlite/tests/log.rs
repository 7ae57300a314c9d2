//! The global log is gap-free under concurrency: writers in two "processes" (two stores on one
//! file), readers following with checkpoints and subscriptions, every reader sees every
//! committed event exactly once, in order. And a caller that gives up mid-append and retries
//! stores its batch exactly once.

mod common;

use std::{collections::HashSet, time::Duration};

use annals::{
    EventStore, ExpectedVersion, LogPosition, LogRead, RecordedEvent, StreamId, testing::new_event,
};
use annals_sqlite::{SqliteConfig, SqliteEventStore};
use common::TempStore;
use futures::{StreamExt, TryStreamExt, future::join_all};
use serde_json::json;
use uuid::Uuid;

const WRITERS: usize = 6;
const APPENDS: usize = 20;

fn batch_size(writer: usize, round: usize) -> usize {
    1 + (writer + round) % 4
}

/// Follows the log with `read_all` pages and a checkpoint, as a projection would.
async fn poll_reader(store: SqliteEventStore, total: usize) -> Vec<RecordedEvent> {
    let mut seen: Vec<RecordedEvent> = Vec::with_capacity(total);
    let mut checkpoint = LogPosition::START;
    while seen.len() < total {
        let page: Vec<RecordedEvent> = store
            .read_all(LogRead::after(checkpoint).with_page_size(7).with_limit(20))
            .try_collect()
            .await
            .expect("read a page");
        for event in page {
            assert_eq!(
                event.position.sequence,
                checkpoint.sequence + 1,
                "the next visible position follows the checkpoint without a gap"
            );
            checkpoint = event.position;
            seen.push(event);
        }
        tokio::task::yield_now().await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_see_a_gap_free_log() {
    let here = TempStore::new().await;
    // A second handle with its own connections and notifier: another process, as SQLite sees it.
    let elsewhere = SqliteEventStore::open(
        SqliteConfig::new(here.path()).with_poll_interval(Duration::from_millis(20)),
    )
    .await
    .expect("a second handle");
    let total: usize = (0..WRITERS)
        .flat_map(|w| (0..APPENDS).map(move |r| batch_size(w, r)))
        .sum();

    let readers = vec![
        tokio::spawn(poll_reader(here.store.clone(), total)),
        tokio::spawn(poll_reader(elsewhere.clone(), total)),
    ];
    let subscribers: Vec<_> = [here.store.clone(), elsewhere.clone()]
        .into_iter()
        .map(|store| {
            tokio::spawn(async move {
                store
                    .subscribe(LogPosition::START)
                    .take(total)
                    .try_collect::<Vec<_>>()
                    .await
                    .expect("subscription")
            })
        })
        .collect();
    let writers = (0..WRITERS).map(|w| {
        let store = if w % 2 == 0 {
            here.store.clone()
        } else {
            elsewhere.clone()
        };
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..APPENDS {
                let stream = StreamId::new(format!("s-{}", (w + round) % 3)).expect("id");
                let batch: Vec<_> = (0..batch_size(w, round))
                    .map(|i| new_event("Noted", json!({ "w": w, "r": round, "i": i })))
                    .collect();
                ids.extend(batch.iter().map(|e| e.event_id));
                store
                    .append(&stream, ExpectedVersion::Any, batch)
                    .await
                    .expect("append");
            }
            ids
        })
    });
    let acknowledged: HashSet<Uuid> = join_all(writers)
        .await
        .into_iter()
        .flat_map(|r| r.expect("writer task"))
        .collect();
    assert_eq!(acknowledged.len(), total);

    let log: Vec<Uuid> = here
        .store
        .read_all(LogRead::from_start())
        .map_ok(|e| e.event_id)
        .try_collect()
        .await
        .expect("the whole log");
    assert_eq!(log.iter().copied().collect::<HashSet<_>>(), acknowledged);

    let followers = tokio::time::timeout(Duration::from_secs(60), async {
        let mut all = Vec::new();
        for handle in readers.into_iter().chain(subscribers) {
            all.push(handle.await.expect("reader task"));
        }
        all
    })
    .await
    .expect("every follower reaches the end");
    for seen in followers {
        let positions: Vec<u64> = seen.iter().map(|e| e.position.sequence).collect();
        assert_eq!(
            positions,
            (1..=total as u64).collect::<Vec<_>>(),
            "1..N, in order"
        );
        let ids: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, log, "every follower sees the one order of the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_and_retries_stores_each_batch_once() {
    let here = TempStore::new().await;
    let stream = StreamId::new("cancelled").expect("id");
    let mut gave_up = 0;
    for attempt in 0..30u64 {
        let batch: Vec<_> = (0..40)
            .map(|i| new_event("Noted", json!({ "attempt": attempt, "i": i })))
            .collect();
        // Give up after a varying, tiny delay: before, during or after the transaction. The
        // append goes on in its own task and commits or rolls back whole; the caller retries
        // the same batch (same ids), which the store recognises.
        let first = tokio::time::timeout(
            Duration::from_micros(attempt * 97),
            here.store
                .append(&stream, ExpectedVersion::Any, batch.clone()),
        )
        .await;
        if first.is_err() {
            gave_up += 1;
            here.store
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .expect("the retry succeeds");
        }
    }
    assert!(gave_up > 0, "some callers gave up mid-way");
    let last = here
        .store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![new_event("Last", json!({}))],
        )
        .await
        .expect("the writer connection is still healthy");
    let events: Vec<RecordedEvent> = here
        .store
        .read_stream(&stream, annals::StreamRead::forward())
        .try_collect()
        .await
        .expect("read");
    let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=30 * 40 + 1).collect::<Vec<_>>());
    let mut per_attempt = std::collections::HashMap::<u64, usize>::new();
    for event in &events[..events.len() - 1] {
        let attempt = serde_json::from_str::<serde_json::Value>(event.payload.as_str())
            .expect("json")["attempt"]
            .as_u64()
            .expect("attempt");
        *per_attempt.entry(attempt).or_default() += 1;
    }
    assert_eq!(per_attempt.len(), 30);
    assert!(
        per_attempt.values().all(|&n| n == 40),
        "each batch is stored whole, once: {per_attempt:?}"
    );
    assert_eq!(last.stream_version, 30 * 40 + 1);
}
