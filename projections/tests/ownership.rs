//! Several runners, one owner per projection: fencing, takeover, PostgreSQL leases.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;

use annals::{EventStore, LogPosition};
use annals_projections::{
    Backoff, Durability, GenerationWriter, InMemoryLeases, LeaseStore, ProjectionConfig,
    ProjectionRunner, ProjectionState, ReadModel, RedisReadModel, RunnerConfig,
};
use common::*;

fn fast() -> RunnerConfig {
    RunnerConfig::new()
        .with_lease_ttl(Duration::from_millis(400))
        .with_lease_poll(Duration::from_millis(20))
        .with_backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
        ))
}

/// Two runners, one projection: one owns it, the other waits; kill the owner and the other
/// takes over; the counters end exactly right (doubles would show in the HINCRBYs).
async fn two_runners_one_owner(
    leases: impl LeaseStore + Clone,
    ns: &str,
    redis: &annals_projections::RedisConnection,
) {
    let store = seeded_store(300).await;
    let model = RedisReadModel::with_namespace(redis.clone(), ns, "balances").unwrap();
    let a = ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(fast());
    let b = ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(fast());
    a.add(
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new().with_batch_size(20),
    )
    .unwrap();
    let head = store.head_position().await.unwrap().unwrap();
    a.wait_for("balances", head).await.unwrap();
    b.add(
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new().with_batch_size(20),
    )
    .unwrap();
    wait_status(&b, "balances", |s| {
        s.state == ProjectionState::WaitingForLease
    })
    .await;

    // Both alive while events arrive: only `a` writes.
    let head = seed(&store, 300, 100).await;
    a.wait_for("balances", head).await.unwrap();
    assert_eq!(
        b.status("balances").unwrap().state,
        ProjectionState::WaitingForLease
    );
    assert_balances(&model, &store).await;

    // Kill `a` mid-stream: `b` takes over within about a lease ttl and resumes.
    let writer = tokio::spawn({
        let store = store.clone();
        async move { seed(&store, 400, 200).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(a);
    let head = writer.await.unwrap();
    let started = std::time::Instant::now();
    wait_status(&b, "balances", |s| {
        matches!(
            s.state,
            ProjectionState::Running | ProjectionState::CatchingUp
        )
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "takeover took {:?}",
        started.elapsed()
    );
    b.wait_for("balances", head).await.unwrap();
    assert_balances(&model, &store).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_leases_one_owner_and_takeover() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    two_runners_one_owner(InMemoryLeases::new(), &ns, &redis).await;
    cleanup_redis(&redis, &ns).await;
}

async fn postgres() -> Option<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => Some(pool),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is unreachable at {url}: {e}"
            );
            eprintln!("notice: PostgreSQL unreachable at {url}, skipping");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_fence_and_expire() {
    let Some(pool) = postgres().await else { return };
    let schema = unique("leases_");
    let leases = annals_projections_sql::PgLeases::new(pool.clone(), &schema).unwrap();
    leases.migrate().await.unwrap();
    leases.migrate().await.unwrap();
    let ttl = Duration::from_millis(300);
    assert_eq!(leases.try_acquire("p", "a", ttl).await.unwrap(), Some(1));
    assert_eq!(leases.try_acquire("p", "b", ttl).await.unwrap(), None);
    assert!(leases.renew("p", "a", 1, ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !leases.renew("p", "a", 1, ttl).await.unwrap(),
        "an expired lease is not renewed"
    );
    assert_eq!(leases.try_acquire("p", "b", ttl).await.unwrap(), Some(2));
    assert!(!leases.renew("p", "a", 1, ttl).await.unwrap());
    leases.release("p", "b", 2).await.unwrap();
    assert_eq!(leases.try_acquire("p", "a", ttl).await.unwrap(), Some(3));
    assert!(annals_projections_sql::PgLeases::new(pool.clone(), "x; drop table y").is_err());

    if let Some(redis) = redis().await {
        let ns = unique("t");
        two_runners_one_owner(leases, &ns, &redis).await;
        cleanup_redis(&redis, &ns).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop schema \"{schema}\" cascade"
    )))
    .execute(&pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_fenced_tantivy_writer_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let (search, schema) = Search::new("search");
    let model = search.open(dir.path(), schema);
    let (generation, mut old) = begin_writing(&model).await;
    let mut batch = old.batch();
    batch.upsert("a", tantivy::TantivyDocument::new());
    assert!(!batch.is_empty());
    old.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    // One writer per index: a second one cannot open while the first lives (transient).
    let busy = model.open_writer(generation, 2).await.unwrap_err();
    assert!(busy.is_transient(), "{busy:?}");
    drop(old);
    // The new owner claims the projection, then the generation (as the runner does).
    model.claim(2, uuid::Uuid::nil()).await.unwrap();
    let mut new = model.open_writer(generation, 2).await.unwrap();
    assert_eq!(new.checkpoint(), Some(LogPosition::serial(1)));
    let mut batch = new.batch();
    batch.upsert("b", tantivy::TantivyDocument::new());
    new.write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap();
    drop(new);
    // The old owner, back from a pause, is refused by the index and by the state file.
    let err = model.open_writer(generation, 1).await.unwrap_err();
    assert_fenced_out(&model, generation, err).await;
    model.switch(generation, 2).await.unwrap();
    let view = model.view().unwrap().unwrap();
    assert_eq!(view.num_docs(), 2);
    assert!(view.get("b").unwrap().is_some());
    assert_eq!(view.checkpoint().unwrap(), Some(LogPosition::serial(2)));
}

/// Leases where one owner's renewals are acknowledged but not recorded: that owner believes
/// it still holds its lease after it expired, like a process that was paused.
#[derive(Debug, Clone, Default)]
struct PausedOwnerLeases {
    inner: InMemoryLeases,
    paused: Arc<Mutex<Option<String>>>,
}

impl LeaseStore for PausedOwnerLeases {
    fn try_acquire<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, annals_projections::Result<Option<u64>>> {
        self.inner.try_acquire(projection, owner, ttl)
    }
    fn renew<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, annals_projections::Result<bool>> {
        if self.paused.lock().unwrap().as_deref() == Some(owner) {
            return Box::pin(async { Ok(true) });
        }
        self.inner.renew(projection, owner, fence, ttl)
    }
    fn release<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: u64,
    ) -> BoxFuture<'a, annals_projections::Result<()>> {
        self.inner.release(projection, owner, fence)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_missed_its_takeover_cannot_write() {
    let Some(redis) = redis().await else { return };
    let ns = unique("t");
    let store = seeded_store(100).await;
    let leases = PausedOwnerLeases::default();
    let model = RedisReadModel::with_namespace(redis.clone(), &ns, "balances").unwrap();
    // `a` keeps writing on its own clock's say-so: a long ttl, so its local lease check
    // alone would not stop it; only the fence can.
    let slow = fast().with_lease_ttl(Duration::from_secs(2));
    let a = ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(slow.clone());
    let b = ProjectionRunner::new(store.clone())
        .with_leases(leases.clone())
        .with_config(slow);
    a.add(
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new().with_batch_size(10),
    )
    .unwrap();
    a.wait_for("balances", store.head_position().await.unwrap().unwrap())
        .await
        .unwrap();
    b.add(
        Balances::new("balances"),
        model.clone(),
        ProjectionConfig::new().with_batch_size(10),
    )
    .unwrap();
    wait_status(&b, "balances", |s| {
        s.state == ProjectionState::WaitingForLease
    })
    .await;

    // `a` stops renewing but believes it did; once its lease expires, `b` takes over.
    *leases.paused.lock().unwrap() = Some(a.owner().to_owned());
    wait_status(&b, "balances", |s| {
        matches!(
            s.state,
            ProjectionState::Running | ProjectionState::CatchingUp
        )
    })
    .await;
    assert!(!matches!(
        a.status("balances").unwrap().state,
        ProjectionState::WaitingForLease
    ));
    // Both follow the log now; every write of `a` is refused by the fence.
    let head = seed(&store, 100, 100).await;
    b.wait_for("balances", head).await.unwrap();
    wait_status(&a, "balances", |s| {
        s.state == ProjectionState::WaitingForLease
    })
    .await;
    assert_balances(&model, &store).await;
    let head = seed(&store, 200, 50).await;
    b.wait_for("balances", head).await.unwrap();
    assert_balances(&model, &store).await;
    drop(a);
    b.shutdown().await;
    cleanup_redis(&redis, &ns).await;
}
