//! Tests that try hard to make the global log skip: a transaction held open while later ones
//! commit, and many writers with random in-transaction delays and rollbacks read by readers
//! with different page sizes that checkpoint and resume.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use annals::{
    Error, EventStore, ExpectedVersion, LogPosition, LogRead, RecordedEvent, StreamAppend,
    StreamId, testing::new_event,
};
use annals_postgres::{PgConfig, PgEventStore, TestHooks};
use futures::{TryStreamExt, future::join_all};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

async fn read_after(store: &PgEventStore, after: LogPosition, page: usize) -> Vec<RecordedEvent> {
    store
        .read_all(LogRead::after(after).with_page_size(page))
        .try_collect()
        .await
        .unwrap()
}

/// Starts appending one event to stream `slow` in a transaction that sleeps 1.5 s before its
/// commit, and returns once it has inserted: the event's id and the append's task.
async fn start_slow_append(
    base: &PgEventStore,
) -> (Uuid, tokio::task::JoinHandle<annals::AppendResult>) {
    let hold = TestHooks {
        in_transaction_delay: Some(Arc::new(|| Duration::from_millis(1500))),
        ..TestHooks::default()
    };
    let slow = connect_to(base.schema(), hold, |c| c).await;
    let slow_event = new_event("Slow", json!({}));
    let slow_id = slow_event.event_id;
    let slow_append = tokio::spawn(async move {
        slow.append(&sid("slow"), ExpectedVersion::Any, vec![slow_event])
            .await
            .unwrap()
    });
    // Wait until the slow transaction has inserted and sleeps before its commit.
    sleeping_writer(base).await;
    (slow_id, slow_append)
}

async fn connect_to(
    schema: &str,
    hooks: TestHooks,
    configure: fn(PgConfig) -> PgConfig,
) -> PgEventStore {
    let config = PgConfig::new(common::database_url())
        .with_schema(schema)
        .with_max_connections(3)
        .with_writers(1)
        .with_test_hooks(hooks);
    PgEventStore::connect(configure(config)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_held_open_hides_later_commits_until_it_ends() {
    let Some(base) = common::try_store(common::config()).await else {
        return;
    };
    let schema = base.schema().to_owned();
    base.append(
        &sid("before"),
        ExpectedVersion::Any,
        vec![new_event("Noted", json!({}))],
    )
    .await
    .unwrap();
    // A reader that never waits: it shows exactly what is safe at each moment.
    let reader = connect_to(&schema, TestHooks::default(), |c| {
        c.with_visibility_wait(Duration::ZERO)
    })
    .await;
    // Read by a store that waits for the horizon: other tests' transactions may hold it.
    let checkpoint = read_after(&base, LogPosition::START, 7).await;
    assert_eq!(checkpoint.len(), 1);
    let checkpoint = checkpoint[0].position;

    let (slow_id, slow_append) = start_slow_append(&base).await;
    let mut fast_ids = Vec::new();
    for i in 0..5 {
        let e = new_event("Fast", json!({ "i": i }));
        fast_ids.push(e.event_id);
        base.append(&sid("fast"), ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    // Committed, yet hidden: the open transaction could still commit before them.
    assert!(read_after(&reader, checkpoint, 1).await.is_empty());
    assert_eq!(reader.head_position().await.unwrap(), Some(checkpoint));

    // A reader that waits (the default) holds on until the older transaction ends, then
    // returns everything committed before it started, in log order.
    let waiting = tokio::spawn({
        let base = base.clone();
        async move { read_after(&base, checkpoint, 500).await }
    });
    let slow_result = slow_append.await.unwrap();
    let waited: Vec<Uuid> = waiting.await.unwrap().iter().map(|e| e.event_id).collect();
    assert_eq!(
        waited.len(),
        6,
        "the waiting read missed events: {waited:?}"
    );
    assert_eq!(waited[0], slow_id);
    let rest = read_after(&base, checkpoint, 2).await;
    let ids: Vec<Uuid> = rest.iter().map(|e| e.event_id).collect();
    let mut expected = vec![slow_id];
    expected.extend(&fast_ids);
    assert_eq!(
        ids, expected,
        "the slow event first: its transaction began first"
    );
    assert_eq!(rest[0].position, slow_result.first_position);
    assert!(rest.windows(2).all(|w| w[0].position < w[1].position));
    // A reader with the default wait sees everything committed, without a gap.
    let all = read_after(&base, LogPosition::START, 500).await;
    assert_eq!(all.len(), 7);
    base.drop_schema().await.unwrap();
}

/// What one writer stored: ids of committed events.
async fn writer(store: PgEventStore, w: usize, rounds: usize) -> Vec<Uuid> {
    let mut stored = Vec::new();
    for round in 0..rounds {
        let (stream, expected) = {
            let mut rng = rand::rng();
            let shared = rng.random_bool(0.3);
            let stream = if shared {
                sid(&format!("shared-{}", rng.random_range(0..3)))
            } else {
                sid(&format!("own-{w}"))
            };
            // Stale expectations on shared streams make some appends conflict.
            let expected = if shared {
                ExpectedVersion::Exact(rng.random_range(0..4))
            } else {
                ExpectedVersion::Any
            };
            (stream, expected)
        };
        let n = 1 + round % 3;
        let batch: Vec<_> = (0..n)
            .map(|i| new_event("Noted", json!({ "w": w, "round": round, "i": i })))
            .collect();
        let ids: Vec<Uuid> = batch.iter().map(|e| e.event_id).collect();
        match store.append(&stream, expected, batch).await {
            Ok(_) => stored.extend(ids),
            Err(Error::Conflict { .. }) => {}
            // A rolled-back transaction (the failure hook).
            Err(Error::Backend { .. }) => {}
            Err(other) => panic!("writer {w}: {other}"),
        }
    }
    stored
}

/// A reader that checkpoints after every read and resumes from the checkpoint, until it has
/// as many events as the writers committed (known once they are done).
async fn reader(store: PgEventStore, page: usize, target: Arc<AtomicUsize>) -> Vec<RecordedEvent> {
    let mut seen = Vec::new();
    let mut checkpoint = LogPosition::START;
    while seen.len() < target.load(Ordering::SeqCst) {
        let batch = read_after(&store, checkpoint, page).await;
        if let Some(last) = batch.last() {
            checkpoint = last.position;
        }
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen.extend(batch);
    }
    // Nothing more may come: one more read after the end finds nothing.
    seen.extend(read_after(&store, checkpoint, page).await);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_with_random_delays_and_rollbacks_never_make_readers_skip() {
    let Some(base) = common::try_store(common::config()).await else {
        return;
    };
    let schema = base.schema().to_owned();
    let mut writers = Vec::new();
    for w in 0..8 {
        let hooks = TestHooks {
            in_transaction_delay: Some(Arc::new(|| {
                Duration::from_millis(rand::rng().random_range(0..25))
            })),
            fail_after_insert: Some(Arc::new(|| rand::rng().random_bool(0.1))),
            ..TestHooks::default()
        };
        let store = connect_to(&schema, hooks, |c| c).await;
        writers.push(tokio::spawn(writer(store, w, 25)));
    }
    let target = Arc::new(AtomicUsize::new(usize::MAX));
    let mut readers = Vec::new();
    for page in [1, 7, 500] {
        // Readers never wait: they only ever see the safe prefix, and must still not skip.
        let store = connect_to(&schema, TestHooks::default(), |c| {
            c.with_visibility_wait(Duration::ZERO)
        })
        .await;
        readers.push(tokio::spawn(reader(store, page, target.clone())));
    }
    let committed: HashSet<Uuid> = join_all(writers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    target.store(committed.len(), Ordering::SeqCst);
    let finals = read_after(&base, LogPosition::START, 1000).await;
    let final_ids: Vec<Uuid> = finals.iter().map(|e| e.event_id).collect();
    assert_eq!(final_ids.iter().copied().collect::<HashSet<_>>(), committed);
    assert_eq!(final_ids.len(), committed.len(), "each event once");
    assert!(!committed.is_empty());
    let readers = tokio::time::timeout(Duration::from_secs(60), join_all(readers))
        .await
        .expect("readers catch up: rolled-back appends never stall them");
    for (page, r) in [1, 7, 500].into_iter().zip(readers) {
        let seen: Vec<Uuid> = r.unwrap().iter().map(|e| e.event_id).collect();
        assert_eq!(seen, final_ids, "reader with page size {page}");
    }
    base.drop_schema().await.unwrap();
}

/// Waits until a transaction of this test's schema sleeps in the test hook, holding its
/// inserted events and its streams, and returns its backend's pid.
async fn sleeping_writer(store: &PgEventStore) -> i32 {
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.relation = 'events'::regclass AND l.mode = 'RowExclusiveLock' \
             AND a.wait_event = 'PgSleep' LIMIT 1",
        )
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until some backend waits for a lock that backend `pid` holds.
async fn until_blocked_by(store: &PgEventStore, pid: i32) {
    loop {
        let blocked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid)))",
        )
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .unwrap();
        if blocked {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The global log keeps each stream's order. A transaction's id is its place in the log, so
/// it must be taken only once the transaction holds every stream it writes: otherwise an
/// append that took its id, then waited for a stream, lands before a later-id append it
/// follows on another stream. The race: a slow append holds stream `a`; a two-stream append
/// to `a` and `b` queues behind it; meanwhile `b` moves on alone. When the slow append ends,
/// the two-stream append writes `b`'s next version, which must come after the one written
/// meanwhile in the log too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_keeps_each_streams_order_when_appends_queue_for_a_stream() {
    let Some(base) = common::try_store(common::config()).await else {
        return;
    };
    let schema = base.schema().to_owned();
    for s in ["a", "b"] {
        base.append(
            &sid(s),
            ExpectedVersion::NoStream,
            vec![new_event("Noted", json!({}))],
        )
        .await
        .unwrap();
    }
    let hold = TestHooks {
        in_transaction_delay: Some(Arc::new(|| Duration::from_millis(800))),
        ..TestHooks::default()
    };
    let slow = connect_to(&schema, hold, |c| c).await;
    let group = connect_to(&schema, TestHooks::default(), |c| c).await;

    let slow_append = tokio::spawn(async move {
        slow.append(
            &sid("a"),
            ExpectedVersion::Any,
            vec![new_event("Slow", json!({}))],
        )
        .await
        .unwrap()
    });
    let holder = sleeping_writer(&base).await;
    let both = tokio::spawn(async move {
        group
            .append_multi(vec![
                StreamAppend::new(
                    sid("a"),
                    ExpectedVersion::Any,
                    vec![new_event("Both", json!({}))],
                ),
                StreamAppend::new(
                    sid("b"),
                    ExpectedVersion::Any,
                    vec![new_event("Both", json!({}))],
                ),
            ])
            .await
            .unwrap()
    });
    until_blocked_by(&base, holder).await;
    base.append(
        &sid("b"),
        ExpectedVersion::Any,
        vec![new_event("Alone", json!({}))],
    )
    .await
    .unwrap();
    slow_append.await.unwrap();
    both.await.unwrap();

    let log = read_after(&base, LogPosition::START, 100).await;
    for s in ["a", "b"] {
        let versions: Vec<u64> = log
            .iter()
            .filter(|e| e.stream_id.as_str() == s)
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(versions, [1, 2, 3], "stream {s}'s versions in log order");
    }
    base.drop_schema().await.unwrap();
}

/// A wide append (200 streams, each locked on its own) racing with single-stream appends to
/// the same streams keeps each stream's order in the log too, and stores everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wide_append_keeps_each_streams_order() {
    wide_append_keeps_each_streams_order(200).await;
}

/// An append of more streams than are locked one by one (over 1,000) takes the whole log's
/// lock instead, and keeps each stream's order as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_very_wide_append_keeps_each_streams_order() {
    wide_append_keeps_each_streams_order(1_100).await;
}

async fn wide_append_keeps_each_streams_order(streams: usize) {
    let Some(store) = common::try_store(common::config()).await else {
        return;
    };
    let names: Vec<StreamId> = (0..streams).map(|i| sid(&format!("w{i}"))).collect();
    let wide = names
        .iter()
        .map(|s| {
            StreamAppend::new(
                s.clone(),
                ExpectedVersion::Any,
                vec![new_event("Wide", json!({}))],
            )
        })
        .collect::<Vec<_>>();
    let narrow = (0..60).map(|i| {
        let store = store.clone();
        let stream = names[(i * 7) % names.len()].clone();
        async move {
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![new_event("Narrow", json!({}))],
                )
                .await
                .unwrap();
        }
    });
    let wide_append = store.append_multi(wide);
    let (results, _) = tokio::join!(wide_append, join_all(narrow));
    assert_eq!(results.unwrap().len(), streams);

    let log = read_after(&store, LogPosition::START, 500).await;
    assert_eq!(log.len(), streams + 60);
    let mut heads: HashMap<&str, u64> = HashMap::new();
    for e in &log {
        let head = heads.entry(e.stream_id.as_str()).or_insert(0);
        assert_eq!(
            e.stream_version,
            *head + 1,
            "{}'s versions in log order",
            e.stream_id
        );
        *head = e.stream_version;
    }
    store.drop_schema().await.unwrap();
}

/// A long read takes its bulk in ranges of transaction ids, two at a time; they end at the
/// horizon read before them, so an open transaction still hides everything committed after
/// it from the read, however far the ranges reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_reads_in_ranges_stop_at_an_open_transaction() {
    let Some(base) = common::try_store(common::config()).await else {
        return;
    };
    let schema = base.schema().to_owned();
    let mut before = Vec::new();
    for i in 0..120 {
        let e = new_event("Before", json!({ "i": i }));
        before.push(e.event_id);
        base.append(&sid(&format!("b{}", i % 4)), ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    // Visible once (other tests' transactions may hold the horizon for a while), visible for
    // good.
    assert_eq!(read_after(&base, LogPosition::START, 500).await.len(), 120);
    let (slow_id, slow_append) = start_slow_append(&base).await;
    let mut after = vec![slow_id];
    for i in 0..120 {
        let e = new_event("After", json!({ "i": i }));
        after.push(e.event_id);
        base.append(&sid(&format!("a{}", i % 4)), ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    let reader = connect_to(&schema, TestHooks::default(), |c| {
        c.with_visibility_wait(Duration::ZERO)
    })
    .await;
    for page in [1, 3] {
        let seen: Vec<Uuid> = read_after(&reader, LogPosition::START, page)
            .await
            .iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(seen, before, "page size {page}");
    }
    slow_append.await.unwrap();
    let all = read_after(&base, LogPosition::START, 1).await;
    let ids: Vec<Uuid> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, [before, after].concat());
    base.drop_schema().await.unwrap();
}

/// While a wide append (300 streams) holds its streams, appends to other streams go on: each
/// append locks only its own streams, whatever their number (up to
/// `lock_streams`' bound of 1,000 streams, migrations/0006_wide_appends.sql).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wide_append_does_not_block_appends_to_other_streams() {
    let Some(base) = common::try_store(common::config()).await else {
        return;
    };
    let schema = base.schema().to_owned();
    let hold = TestHooks {
        in_transaction_delay: Some(Arc::new(|| Duration::from_millis(3000))),
        ..TestHooks::default()
    };
    let slow = connect_to(&schema, hold, |c| c).await;
    let wide: Vec<_> = (0..300)
        .map(|i| {
            StreamAppend::new(
                sid(&format!("wide-{i}")),
                ExpectedVersion::Any,
                vec![new_event("Wide", json!({}))],
            )
        })
        .collect();
    let wide = tokio::spawn(async move { slow.append_multi(wide).await.unwrap() });
    let holder = sleeping_writer(&base).await;
    let started = Instant::now();
    for i in 0..20 {
        base.append(
            &sid(&format!("narrow-{i}")),
            ExpectedVersion::Any,
            vec![new_event("Narrow", json!({}))],
        )
        .await
        .unwrap();
    }
    let took = started.elapsed();
    let still_holding: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep')",
    )
    .bind(holder)
    .fetch_one(base.pool())
    .await
    .unwrap();
    assert!(
        still_holding && took < Duration::from_millis(2000),
        "20 appends to other streams took {took:?} while the wide append held its streams"
    );
    assert_eq!(wide.await.unwrap().len(), 300);
    assert_eq!(read_after(&base, LogPosition::START, 500).await.len(), 320);
    base.drop_schema().await.unwrap();
}

/// What wide appends cost the others: one-stream appends by 8 tasks for a few seconds, alone
/// and while a task appends to 200 streams at a time. Run by hand:
/// `cargo test -p annals-postgres --test log_gaps -- --ignored --nocapture wide_append_cost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check"]
async fn wide_append_cost() {
    let Some(store) = common::try_store(common::config().with_max_connections(12)).await else {
        return;
    };
    for wide in [false, true, false, true] {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let narrow: Vec<_> = (0..8)
            .map(|t| {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let stream = sid(&format!("n-{t}-{}", n % 50));
                        store
                            .append(
                                &stream,
                                ExpectedVersion::Any,
                                vec![new_event("N", json!({}))],
                            )
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let wides = wide.then(|| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let appends = (0..200)
                        .map(|i| {
                            StreamAppend::new(
                                sid(&format!("w-{i}")),
                                ExpectedVersion::Any,
                                vec![new_event("W", json!({}))],
                            )
                        })
                        .collect();
                    store.append_multi(appends).await.unwrap();
                    n += 1;
                }
                n
            })
        });
        let seconds = 5.0;
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for task in narrow {
            total += task.await.unwrap();
        }
        let wides = match wides {
            Some(task) => task.await.unwrap(),
            None => 0,
        };
        println!(
            "wide appends running: {wide}: one-stream appends {:.0}/s, 200-stream appends {:.1}/s",
            total as f64 / seconds,
            wides as f64 / seconds
        );
    }
    store.drop_schema().await.unwrap();
}
