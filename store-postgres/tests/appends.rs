//! Appends under failure: cancelled callers, results lost after COMMIT, and group commit
//! keeping each caller's conflict to itself.

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use annals::{
    Error, EventStore, ExpectedVersion, LogRead, StreamAppend, StreamId, StreamRead,
    testing::new_event,
};
use annals_postgres::{PgEventStore, TestHooks};
use futures::{TryStreamExt, future::join_all};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

async fn stored_ids(store: &PgEventStore) -> Vec<Uuid> {
    store
        .read_all(LogRead::from_start())
        .map_ok(|e| e.event_id)
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_appends_are_all_or_nothing_and_leave_the_pool_usable() {
    let hooks = TestHooks {
        in_transaction_delay: Some(Arc::new(|| {
            Duration::from_micros(rand::rng().random_range(0..3000))
        })),
        ..TestHooks::default()
    };
    let (config, name) = common::named_config();
    let Some(store) =
        common::try_store(config.with_max_connections(4).with_test_hooks(hooks)).await
    else {
        return;
    };
    let mut attempts: Vec<Vec<Uuid>> = Vec::new();
    let mut cancelled = 0;
    for round in 0..60 {
        let batch: Vec<_> = (0..1 + round % 4)
            .map(|i| new_event("Noted", json!({ "round": round, "i": i })))
            .collect();
        let limit = Duration::from_micros(rand::rng().random_range(0..4000));
        let stream = sid(&format!("s{}", round % 5));
        let multi = vec![
            StreamAppend::new(stream, ExpectedVersion::Any, batch),
            StreamAppend::new(
                sid(&format!("m{round}")),
                ExpectedVersion::NoStream,
                vec![new_event("Also", json!({}))],
            ),
        ];
        let multi_ids: Vec<Uuid> = multi
            .iter()
            .flat_map(|a| &a.events)
            .map(|e| e.event_id)
            .collect();
        if tokio::time::timeout(limit, store.append_multi(multi))
            .await
            .is_err()
        {
            cancelled += 1;
        }
        attempts.push(multi_ids);
    }
    assert!(cancelled > 0, "some appends were cancelled");
    // Cancelled calls that had reached a writer still finish; wait until the log is quiet.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = stored_ids(&store).await.len();
        if n == last {
            break;
        }
        last = n;
    }
    let stored: std::collections::HashSet<Uuid> = stored_ids(&store).await.into_iter().collect();
    for ids in &attempts {
        let present = ids.iter().filter(|id| stored.contains(id)).count();
        assert!(
            present == 0 || present == ids.len(),
            "an append was stored in part"
        );
    }
    // No pooled connection was left inside a transaction: every one of them still works.
    assert_eq!(idle_in_transaction(&store, &name).await, 0);
    let writes = (0..8).map(|i| {
        let store = store.clone();
        async move {
            let s = sid(&format!("after-{i}"));
            store
                .append(
                    &s,
                    ExpectedVersion::NoStream,
                    vec![new_event("Ok", json!({}))],
                )
                .await
        }
    });
    for r in join_all(writes).await {
        r.expect("the pool still works after cancellations");
    }
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_lost_commit_result_returns_the_original_result() {
    let hooks = TestHooks::default();
    let lose = hooks.lose_results.clone();
    let Some(store) = common::try_store(common::config().with_test_hooks(hooks)).await else {
        return;
    };
    let s = sid("unknown-outcome");
    for expected_on_retry in [ExpectedVersion::Any, ExpectedVersion::Exact(0)] {
        let batch: Vec<_> = (0..3)
            .map(|i| new_event("Noted", json!({ "i": i })))
            .collect();
        let before = store.stream_version(&s).await.unwrap();
        let expected = ExpectedVersion::Exact(before);
        lose.store(1, std::sync::atomic::Ordering::SeqCst);
        let lost = store.append(&s, expected, batch.clone()).await;
        match &lost {
            Err(e) => assert!(e.is_transient(), "{e}"),
            Ok(r) => panic!("the hook should have lost the result {r:?}"),
        }
        // The caller cannot know whether it committed; it retries the same events.
        let retry_expected = match expected_on_retry {
            ExpectedVersion::Exact(_) => expected,
            other => other,
        };
        let first = store
            .append(&s, retry_expected, batch.clone())
            .await
            .unwrap();
        let again = store
            .append(&s, ExpectedVersion::Any, batch.clone())
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(first.stream_version, before + 3);
        let stored: Vec<_> = store
            .read_stream(&s, annals::StreamRead::forward())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(stored.len() as u64, before + 3, "stored once");
        assert_eq!(stored[before as usize].position, first.first_position);
        let ids: Vec<Uuid> = stored[before as usize..]
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(ids, batch.iter().map(|e| e.event_id).collect::<Vec<_>>());
    }
    store.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_keeps_each_callers_conflict_to_itself() {
    // One writer, so concurrent calls queue up and share transactions.
    let Some(store) = common::try_store(common::config().with_writers(1)).await else {
        return;
    };
    for i in 0..40 {
        store
            .append(
                &sid(&format!("g{i}")),
                ExpectedVersion::NoStream,
                vec![new_event("Seed", json!({}))],
            )
            .await
            .unwrap();
    }
    // Even streams are appended at the right version, odd ones at a stale one; half the
    // calls also write a second stream, which must roll back with its conflicting partner.
    let calls = (0..40).map(|i| {
        let store = store.clone();
        async move {
            let expected = if i % 2 == 0 {
                ExpectedVersion::Exact(1)
            } else {
                ExpectedVersion::Exact(7)
            };
            let mut appends = vec![StreamAppend::new(
                sid(&format!("g{i}")),
                expected,
                vec![new_event("Next", json!({ "i": i }))],
            )];
            if i % 4 < 2 {
                appends.push(StreamAppend::new(
                    sid(&format!("extra{i}")),
                    ExpectedVersion::NoStream,
                    vec![new_event("Extra", json!({}))],
                ));
            }
            (i, store.append_multi(appends).await)
        }
    });
    let results = join_all(calls.map(tokio::spawn)).await;
    let mut commits: HashMap<u64, usize> = HashMap::new();
    for r in results {
        let (i, r) = r.unwrap();
        if i % 2 == 0 {
            let r = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(r[0].stream_version, 2);
            *commits.entry(r[0].first_position.commit).or_default() += 1;
        } else {
            match r {
                Err(Error::Conflict { stream, actual, .. }) => {
                    assert_eq!(stream, sid(&format!("g{i}")));
                    assert_eq!(actual, 1);
                }
                other => panic!("call {i}: expected a conflict, got {other:?}"),
            }
            if i % 4 < 2 {
                assert_eq!(
                    store
                        .stream_version(&sid(&format!("extra{i}")))
                        .await
                        .unwrap(),
                    0
                );
            }
        }
    }
    assert!(
        commits.values().any(|n| *n > 1),
        "concurrent calls shared a transaction: {commits:?}"
    );
    assert_eq!(stored_ids(&store).await.len(), 40 + 20 + 10);
    store.drop_schema().await.unwrap();
}

#[tokio::test]
async fn nul_bytes_are_refused_with_a_typed_error() {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    let bad = annals::NewEvent::new(
        annals::EventType::new("Bad").unwrap(),
        1,
        annals::Payload::from_stored("\"a\0b\"".to_owned()),
    );
    let r = store
        .append(&sid("nul"), ExpectedVersion::Any, vec![bad])
        .await;
    assert!(matches!(r, Err(Error::InvalidAppend { .. })), "{r:?}");
    let fine = new_event("Fine", json!({ "s": "a\u{0}b" }));
    store
        .append(&sid("nul"), ExpectedVersion::Any, vec![fine.clone()])
        .await
        .unwrap();
    let back: Vec<_> = store
        .read_stream(&sid("nul"), annals::StreamRead::forward())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        back[0].payload, fine.payload,
        "the escaped NUL round-trips as text"
    );
    store.drop_schema().await.unwrap();
}

/// A lone append with nothing queued runs on the caller's task (the direct path, no test
/// hooks): cancelling it at any point stores the event with its stream version or neither,
/// and later appends (direct or grouped) still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_direct_appends_keep_stream_and_events_consistent() {
    let (config, name) = common::named_config();
    let Some(store) = common::try_store(config.with_max_connections(4)).await else {
        return;
    };
    let stream = sid("direct");
    let mut cancelled = 0;
    // Batches of up to 200 events make some statements outlast the 1 ms timer tick.
    for round in 0..400 {
        if cancelled >= 20 {
            break;
        }
        let batch = (0..1 + round % 200)
            .map(|i| new_event("Noted", json!({ "round": round, "i": i })))
            .collect();
        let limit = Duration::from_micros(rand::rng().random_range(0..3000));
        let append = store.append(&stream, ExpectedVersion::Any, batch);
        if tokio::time::timeout(limit, append).await.is_err() {
            cancelled += 1;
        }
    }
    assert!(cancelled > 0, "some appends were cancelled");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = stored_ids(&store).await.len() as u64;
    assert_eq!(store.stream_version(&stream).await.unwrap(), events);
    // Exact versions after the cancellations: each one is checked against the stored row.
    for n in 0..5 {
        let version = events + n;
        store
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                vec![new_event("Ok", json!({}))],
            )
            .await
            .expect("the direct path works after cancellations");
    }
    let stale = store
        .append(
            &stream,
            ExpectedVersion::Exact(events),
            vec![new_event("Late", json!({}))],
        )
        .await;
    assert!(matches!(stale, Err(annals::Error::Conflict { .. })));
    assert_eq!(store.stream_version(&stream).await.unwrap(), events + 5);
    assert_eq!(idle_in_transaction(&store, &name).await, 0);
    store.drop_schema().await.unwrap();
}

/// How many of the store's connections (application name `name`, not other tests' stores)
/// sit inside a transaction with no statement running: a cancelled append must never leave
/// one so.
async fn idle_in_transaction(store: &PgEventStore, name: &str) -> i64 {
    let (idle, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state LIKE 'idle in transaction%'), count(*) \
         FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(name)
    .fetch_one(store.pool())
    .await
    .unwrap();
    // At least the connection asking: the name does pick out this store's connections.
    assert!(all >= 1, "no connection is named {name}");
    idle
}

/// Four tasks running commands (load, then append the next version) on streams of their own:
/// never more calls in the store than its four direct connections, so each runs on the
/// caller's task, as a hand-written command would, rather than waiting for a writer's group
/// or a load batch. With one direct connection most went to the writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn few_concurrent_commands_run_on_direct_connections() {
    let hooks = TestHooks::default();
    let config = common::config()
        .with_direct_connections(4)
        .with_test_hooks(hooks.clone());
    let Some(store) = common::try_store(config).await else {
        return;
    };
    const COMMANDS: u64 = 25;
    let tasks = (0..4).map(|t| {
        let store = store.clone();
        tokio::spawn(async move {
            let stream = sid(&format!("few-{t}"));
            for n in 0..COMMANDS {
                let read = StreamRead::forward().for_folding();
                let loaded = store
                    .read_aggregate(&stream, None, read)
                    .await
                    .expect("load");
                let events: Vec<_> = loaded.events.try_collect().await.expect("events");
                assert_eq!(events.len() as u64, n, "stream {stream}");
                let event = new_event("Noted", json!({ "n": n }));
                let appended = store
                    .append(&stream, ExpectedVersion::Exact(n), vec![event])
                    .await
                    .expect("append");
                assert_eq!(appended.stream_version, n + 1);
            }
        })
    });
    for task in join_all(tasks).await {
        task.expect("task");
    }
    let direct = hooks
        .direct_appends
        .load(std::sync::atomic::Ordering::Relaxed) as u64;
    // Until four direct connections are open, a call may find none idle in the pool.
    assert!(
        direct >= 4 * COMMANDS - 8,
        "{direct} of {} appends on the direct path",
        4 * COMMANDS
    );
    store.drop_schema().await.expect("drop the schema");
}
