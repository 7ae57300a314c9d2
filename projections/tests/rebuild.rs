//! Blue/green rebuilds: aborted at random points they still end exactly like a clean run,
//! and readers only ever see complete generations.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use annals::{EventStore, InMemoryEventStore};
use annals_projections::{
    Backoff, InMemoryLeases, ProgressDisplay, ProjectionConfig, ProjectionRunner, RedisReadModel,
    RunnerConfig,
};
use common::*;
use rand::Rng;

const EVENTS: usize = 2000;
const ABORTS: usize = 20;

fn fast() -> RunnerConfig {
    RunnerConfig::new()
        .with_lease_ttl(Duration::from_millis(150))
        .with_lease_poll(Duration::from_millis(10))
        .with_backoff(Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .with_retire_grace(Duration::from_millis(50))
}

fn small_batches() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(50)
        .with_page_size(50)
        .with_progress(ProgressDisplay::Silent)
}

/// A runner with `leases` and the [`fast`] config, running `projection` into `model` in
/// [`small_batches`].
fn start<P: annals_projections::Projection>(
    store: &InMemoryEventStore,
    leases: &InMemoryLeases,
    projection: P,
    model: P::Model,
) -> ProjectionRunner<InMemoryEventStore> {
    let runner = ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(fast());
    runner.add(projection, model, small_batches()).unwrap();
    runner
}

/// Starts a runner, asks for a rebuild, and aborts everything (drops the runner) at a
/// random point of it: once a random share of the log is rebuilt, plus a random few
/// milliseconds, so the task is cut at whatever await point it has reached (sometimes just
/// after the rebuild ended).
async fn run_and_abort<P: annals_projections::Projection>(
    store: &InMemoryEventStore,
    leases: &InMemoryLeases,
    projection: P,
    model: P::Model,
) -> bool {
    let name = projection.name().to_owned();
    let runner = start(store, leases, projection, model);
    let (share, extra) = {
        let mut rng = rand::rng();
        (rng.random_range(0.0..1.0f64), rng.random_range(0..4u64))
    };
    // Sends the request; the wait for its completion is what the zero timeout cuts.
    let _ = tokio::time::timeout(Duration::ZERO, runner.rebuild(&name)).await;
    let mut status = runner.watch(&name).unwrap();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        status.wait_for(|s| {
            // `events_total` is 0 until the build worker has looked at the head.
            s.rebuild.is_some_and(|r| {
                r.events_total > 0 && r.events_done as f64 >= share * r.events_total as f64
            })
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(extra)).await;
    let mid_rebuild = runner.status(&name).is_some_and(|s| s.rebuild.is_some());
    drop(runner);
    // Let a lease of the dead owner expire, as after a real crash.
    tokio::time::sleep(Duration::from_millis(160)).await;
    mid_rebuild
}

/// Runs to the end: rebuild (if one is pending it resumes) and catch up to the head.
async fn run_to_end<P: annals_projections::Projection>(
    store: &InMemoryEventStore,
    leases: &InMemoryLeases,
    projection: P,
    model: P::Model,
) -> annals_projections::ProjectionStatus {
    let name = projection.name().to_owned();
    let runner = start(store, leases, projection, model);
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for(&name, head).await.unwrap();
    let status = wait_status(&runner, &name, |s| {
        s.rebuild.is_none() && s.checkpoint == Some(head)
    })
    .await;
    runner.shutdown().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rebuild_aborted_20_times_equals_a_clean_run() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let store = seeded_store(EVENTS).await;
    let leases = InMemoryLeases::new();

    let clean = RedisReadModel::with_namespace(redis.clone(), &ns, "clean").unwrap();
    let crashy = RedisReadModel::with_namespace(redis.clone(), &ns, "crashy").unwrap();
    let mut mid_rebuild = 0;
    for i in 0..ABORTS {
        mid_rebuild += usize::from(
            run_and_abort(&store, &leases, Balances::new("crashy"), crashy.clone()).await,
        );
        if i % 5 == 4 {
            // New events between crashes: live processing is crashed too.
            seed(&store, EVENTS + i * 10, 10).await;
        }
    }
    assert!(
        mid_rebuild >= ABORTS / 4,
        "only {mid_rebuild} aborts hit a rebuild"
    );
    let status = run_to_end(&store, &leases, Balances::new("crashy"), crashy.clone()).await;
    run_to_end(&store, &leases, Balances::new("clean"), clean.clone()).await;

    assert_eq!(dump_redis(&crashy).await, dump_redis(&clean).await);
    assert_balances(&crashy, &store).await;
    let gens = crashy.generations().await.unwrap();
    assert_eq!(gens.current, status.generation);
    assert_eq!(gens.building, None);
    assert!(
        gens.current.unwrap().0 > 1,
        "at least one rebuild completed: {gens:?}"
    );
    // Nothing is left of other generations but, at most, the one retired last (dropped by
    // the next owner, or after the grace period).
    let mut c = redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{ns}:crashy:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let mut generations: Vec<u64> = keys
        .iter()
        .filter_map(|k| k.split('}').next()?.rsplit(':').next()?.parse().ok())
        .collect();
    generations.sort_unstable();
    generations.dedup();
    let allowed: Vec<u64> = [gens.retired, gens.current]
        .into_iter()
        .flatten()
        .map(|g| g.0)
        .collect();
    assert!(
        generations.iter().all(|g| allowed.contains(g)),
        "{generations:?} left, {gens:?}"
    );
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tantivy_rebuild_aborted_20_times_equals_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = seeded_store(EVENTS).await;
    let leases = InMemoryLeases::new();
    let (crashy, schema) = Search::new("crashy");
    let crashy_model = crashy.open(dir.path(), schema);
    let mut mid_rebuild = 0;
    for i in 0..ABORTS {
        mid_rebuild +=
            usize::from(run_and_abort(&store, &leases, crashy.clone(), crashy_model.clone()).await);
        if i % 5 == 4 {
            seed(&store, EVENTS + i * 10, 10).await;
        }
    }
    assert!(
        mid_rebuild >= ABORTS / 4,
        "only {mid_rebuild} aborts hit a rebuild"
    );
    let status = run_to_end(&store, &leases, crashy.clone(), crashy_model.clone()).await;
    let (clean, schema) = Search::new("clean");
    let clean_model = clean.open(dir.path(), schema);
    run_to_end(&store, &leases, clean.clone(), clean_model.clone()).await;

    let got = dump_tantivy(&crashy_model, &crashy);
    let want = dump_tantivy(&clean_model, &clean);
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    let deposits = expected_balances(&store)
        .await
        .values()
        .map(|(_, n)| n)
        .sum::<i64>();
    assert_eq!(
        got.values().filter(|d| d.0 == "deposit").count() as i64,
        deposits
    );
    let gens = crashy_model.generations().unwrap();
    assert_eq!(gens.current, status.generation);
    assert_eq!(gens.building, None);
    // Only the serving generation's directory is left (old ones dropped, or retired and
    // dropped by the next owner).
    let dirs: Vec<_> = std::fs::read_dir(dir.path().join("crashy"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
        .collect();
    assert!(
        dirs.len() <= 2,
        "{} generation directories left",
        dirs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_half_built_redis_generation() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let store = seeded_store(EVENTS).await;
    let expected_total = expected_total(&store).await;
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "balances").unwrap();
    let runner = runner_with(
        &store,
        fast().with_retire_grace(Duration::from_millis(300)),
        Balances::new("balances"),
        model.clone(),
        small_batches(),
    );
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for("balances", head).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let model = model.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut reads = 0u32;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                let view = model
                    .view()
                    .await
                    .unwrap()
                    .expect("a generation always serves");
                let total = view.get("total").await.unwrap();
                assert_eq!(
                    total,
                    Some(expected_total.to_string()),
                    "{:?} is incomplete",
                    view.generation()
                );
                assert_eq!(view.checkpoint().await.unwrap(), Some(head));
                seen.insert(view.generation());
                reads += 1;
            }
            seen
        }));
    }
    for _ in 0..2 {
        let report = runner.rebuild("balances").await.unwrap();
        assert!(report.events >= EVENTS as u64);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, Ordering::SeqCst);
    let mut seen = std::collections::BTreeSet::new();
    for reader in readers {
        seen.extend(reader.await.unwrap());
    }
    assert_eq!(
        runner.status("balances").unwrap().generation,
        Some(annals_projections::Generation(3))
    );
    assert!(seen.len() >= 2, "the readers saw the switch: {seen:?}");
    runner.shutdown().await;
    cleanup_redis(&redis, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_half_built_tantivy_generation() {
    let dir = tempfile::tempdir().unwrap();
    let store = seeded_store(EVENTS).await;
    let (search, schema) = Search::new("search");
    let model = search.open(dir.path(), schema);
    assert!(model.view().unwrap().is_none());
    let runner = runner_with(
        &store,
        fast(),
        search.clone(),
        model.clone(),
        small_batches(),
    );
    let head = store.head_position().await.unwrap().unwrap();
    runner.wait_for("search", head).await.unwrap();
    let complete = dump_tantivy(&model, &search).len() as u64;

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let model = model.clone();
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::SeqCst) {
                let view = model.view().unwrap().expect("a generation always serves");
                assert_eq!(
                    view.num_docs(),
                    complete,
                    "{:?} is incomplete",
                    view.generation()
                );
                assert_eq!(view.checkpoint().unwrap(), Some(head));
                let hits = view.search_text("word3", &[search.memo], 5).unwrap();
                assert_eq!(hits.len(), 5);
                assert!(hits[0].score > 0.0);
                seen.insert(view.generation());
            }
            seen
        })
    };
    runner.rebuild("search").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert!(
        seen.contains(&annals_projections::Generation(2)),
        "{seen:?}"
    );
    runner.shutdown().await;
}

/// A build left pending by a dead owner shows in the status from the moment the next owner
/// starts: no status ever reads "caught up on the old generation, no rebuild" while the new
/// generation is still to be built (a reader waiting for that would stop too early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_build_is_in_the_status_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = seeded_store(EVENTS).await;
    let head = store.head_position().await.unwrap().unwrap();
    let leases = InMemoryLeases::new();
    let (search, schema) = Search::new("search");
    let model = search.open(dir.path(), schema);

    // A first owner builds generation 1, then dies in the middle of a rebuild.
    let runner = start(&store, &leases, search.clone(), model.clone());
    runner.wait_for("search", head).await.unwrap();
    let serving = runner.status("search").unwrap().generation;
    let _ = tokio::time::timeout(Duration::ZERO, runner.rebuild("search")).await;
    let mut status = runner.watch("search").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.rebuild.is_some_and(|r| r.events_done > 0)),
    )
    .await
    .expect("the rebuild starts")
    .unwrap();
    drop(status);
    drop(runner);
    tokio::time::sleep(Duration::from_millis(160)).await;
    let pending = model.generations().unwrap().building;
    assert!(pending.is_some(), "the rebuild was cut before it ended");

    // The next owner: every status it reports on the old generation names the rebuild.
    let runner = start(&store, &leases, search.clone(), model.clone());
    let mut status = runner.watch("search").unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let s = status.borrow_and_update().clone();
            if s.generation == serving && s.checkpoint.is_some() {
                assert!(s.rebuild.is_some(), "caught up with no rebuild: {s:?}");
            }
            if s.generation.is_some() && s.generation != serving {
                return s;
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the resumed rebuild ends");
    assert_eq!(watched.generation, pending);
    assert_eq!(watched.rebuild, None);
    runner.shutdown().await;
}
