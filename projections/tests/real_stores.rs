//! The runners end to end on the real stores, PostgreSQL (a fresh schema per test) and SQLite
//! (a temp file): catch-up over a seeded log, concurrent live writers with multi-stream
//! appends, exact read models, blue/green rebuilds, and an append held open on PostgreSQL
//! while later ones commit.

mod common;
mod real_stores_support;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use annals::EventStore;
use annals_postgres::{PgConfig, PgEventStore, TestHooks};
use annals_projections::RedisConnection;
use annals_sqlite::{SqliteConfig, SqliteEventStore};
use common::{cleanup_redis, dump_redis, dump_tantivy, unique};
use real_stores_support::{Models, write, write_concurrently};

/// Appends made before the runner starts, and their deposits each (3,000 deposits).
const SEED_APPENDS: usize = 200;
const SEED_DEPOSITS: usize = 15;
/// Live writers running at once, and the appends each makes.
const WRITERS: usize = 4;
const LIVE_APPENDS: usize = 30;

/// Seeds the log, starts the runner, checks the caught-up models, then runs concurrent
/// writers while the runner follows and checks again.
async fn catch_up_and_follow<S: EventStore + Clone + 'static>(store: S, models: Models) {
    let mut ledger = write(store.clone(), "acc-", SEED_APPENDS, SEED_DEPOSITS).await;
    assert!(ledger.ids.len() >= SEED_APPENDS * SEED_DEPOSITS);
    let runner = models.runner(&store);
    runner.wait_for_all(ledger.last).await.unwrap();
    models.check(&ledger).await;

    ledger.merge(write_concurrently(&store, WRITERS, LIVE_APPENDS).await);
    runner.wait_for_all(ledger.last).await.unwrap();
    models.check(&ledger).await;
    runner.shutdown().await;
}

/// Builds both models, rebuilds them blue/green, and compares.
async fn rebuild_equals_before<S: EventStore + Clone + 'static>(store: S, models: Models) {
    let ledger = write(store.clone(), "acc-", SEED_APPENDS / 2, SEED_DEPOSITS).await;
    let runner = models.runner(&store);
    runner.wait_for_all(ledger.last).await.unwrap();
    let redis_before = dump_redis(&models.redis).await;
    let index_before = dump_tantivy(&models.index, &models.search);
    let generation = models.redis.generations().await.unwrap().current;

    let report = runner.rebuild("balances").await.unwrap();
    assert_ne!(
        Some(report.generation),
        generation,
        "a new generation serves"
    );
    runner.rebuild("search").await.unwrap();

    assert_eq!(dump_redis(&models.redis).await, redis_before);
    assert_eq!(dump_tantivy(&models.index, &models.search), index_before);
    models.check(&ledger).await;
    runner.shutdown().await;
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `body` with a migrated PostgreSQL store in a fresh schema, Redis and a namespace;
/// drops the schema and the keys afterwards, even when `body` panics.
async fn with_postgres<F, Fut>(body: F)
where
    F: FnOnce(PgEventStore, RedisConnection, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(redis) = common::redis().await else {
        return;
    };
    // The store crate's tests drop `annals_t_<secs>_*` schemas left by crashed runs.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let schema = format!("annals_t_{secs}_{:016x}", rand::random::<u64>());
    let config = PgConfig::new(database_url()).with_schema(schema);
    let store = match PgEventStore::connect(config).await {
        Ok(store) => store,
        Err(error) => {
            let message = format!("PostgreSQL unreachable at {}: {error}", database_url());
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("notice: {message}, skipping");
            return;
        }
    };
    store.migrate().await.unwrap();
    let namespace = unique("t");
    let result = tokio::spawn(body(store.clone(), redis.clone(), namespace.clone())).await;
    store.drop_schema().await.unwrap();
    cleanup_redis(&redis, &namespace).await;
    if let Err(error) = result {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Runs `body` with a SQLite store in a temp file, Redis and a namespace.
async fn with_sqlite<F, Fut>(body: F)
where
    F: FnOnce(SqliteEventStore, RedisConnection, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(redis) = common::redis().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(SqliteConfig::new(dir.path().join("events.db")))
        .await
        .unwrap();
    let namespace = unique("t");
    let result = tokio::spawn(body(store.clone(), redis.clone(), namespace.clone())).await;
    store.close().await;
    cleanup_redis(&redis, &namespace).await;
    if let Err(error) = result {
        std::panic::resume_unwind(error.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_catch_up_then_concurrent_live_writers() {
    with_postgres(|store, redis, ns| async move {
        catch_up_and_follow(store, Models::new(&redis, &ns)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_catch_up_then_concurrent_live_writers() {
    with_sqlite(|store, redis, ns| async move {
        catch_up_and_follow(store, Models::new(&redis, &ns)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rebuild_equals_the_models_before_it() {
    with_postgres(|store, redis, ns| async move {
        rebuild_equals_before(store, Models::new(&redis, &ns)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_rebuild_equals_the_models_before_it() {
    with_sqlite(|store, redis, ns| async move {
        rebuild_equals_before(store, Models::new(&redis, &ns)).await;
    })
    .await;
}

/// Whether an append transaction of the store's schema sleeps in the test hook.
async fn append_is_held(store: &PgEventStore) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.relation = 'events'::regclass AND l.mode = 'RowExclusiveLock' \
         AND a.wait_event = 'PgSleep')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// One multi-stream append sleeps 3 s inside its transaction while concurrent writers
/// commit later appends. The runner must not move past the held events while they are
/// invisible, and must process every event exactly once once they commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_append_held_open_is_neither_skipped_nor_doubled() {
    with_postgres(|store, redis, ns| async move {
        let mut ledger = write(store.clone(), "acc-", 20, 10).await;
        let models = Models::new(&redis, &ns);
        let runner = models.runner(&store);
        runner.wait_for_all(ledger.last).await.unwrap();

        let hold = TestHooks {
            in_transaction_delay: Some(Arc::new(|| Duration::from_secs(3))),
            ..TestHooks::default()
        };
        let config = PgConfig::new(database_url())
            .with_schema(store.schema())
            .with_max_connections(2)
            .with_writers(1)
            .with_test_hooks(hold);
        let slow = PgEventStore::connect(config).await.unwrap();
        // One append of three streams (i = 0 is a multi-stream append), on streams of its
        // own: the later appends must not wait for its row locks.
        let held = tokio::spawn(write(slow, "held-", 1, 6));
        tokio::time::timeout(Duration::from_secs(10), async {
            while !append_is_held(&store).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the held append never reached its sleep");
        let held_since = Instant::now();

        let later = write_concurrently(&store, 3, 15).await;
        // The status says what the followers wait for: the held transaction, by pid.
        let mut status = runner.watch("balances").unwrap();
        let seen = tokio::time::timeout(
            Duration::from_millis(2500),
            status.wait_for(|s| s.held_by.is_some()),
        )
        .await
        .map(|s| s.unwrap().clone());
        if held_since.elapsed() < Duration::from_millis(2800) {
            let direct = store.log_hold().await;
            let status = seen.unwrap_or_else(|_| {
                panic!(
                    "the status never named the held transaction: {:?} at {}; the store says {direct:?}",
                    runner.status("balances"),
                    time::OffsetDateTime::now_utc(),
                )
            });
            let hold = status.held_by.clone().unwrap();
            assert!(hold.pid.is_some(), "{status}");
            assert!(
                status.to_string().contains("waiting behind a transaction open since"),
                "{status}"
            );
            assert!(!status.is_caught_up(), "{status}");
        }
        // Give the runner time to (wrongly) pass the held append, then take both
        // checkpoints. The held transaction sleeps 3 s from a moment just before
        // `held_since`: checkpoints taken within 2 s of it are surely taken while it is open
        // (the later appends take well under a second; on a machine slow enough to miss the
        // window, the counters below still decide).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let checkpoints = ["balances", "search"].map(|p| runner.status(p).unwrap().checkpoint);
        let while_held = if held_since.elapsed() < Duration::from_secs(2) {
            checkpoints.into_iter().flatten().collect()
        } else {
            Vec::new()
        };
        let held = held.await.unwrap();
        let held_first = held.first.unwrap();
        assert!(
            held_first < later.first.unwrap(),
            "the held transaction began first, so its events come first in the log"
        );
        for checkpoint in while_held {
            assert!(
                checkpoint < held_first,
                "the checkpoint {checkpoint:?} passed the held append at {held_first:?}"
            );
        }
        ledger.merge(held);
        ledger.merge(later);
        runner.wait_for_all(ledger.last).await.unwrap();
        models.check(&ledger).await;
        runner.shutdown().await;
    })
    .await;
}
