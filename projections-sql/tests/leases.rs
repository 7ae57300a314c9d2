//! The lease stores: acquire, renew, release, expiry and takeover; fences that grow across
//! handles (separate pools, as separate processes); one winner among concurrent acquirers;
//! migrations safe when several processes start at once.

mod common;

use std::{future::Future, sync::Arc, time::Duration};

use annals_projections::LeaseStore;
use annals_projections_sql::{PgLeases, SqliteLeases};
use common::{drop_schemas_now, postgres, postgres_with, sqlite, unique};

/// The semantics every lease store shares (as `InMemoryLeases` in annals-projections).
async fn acquire_renew_release_expire(leases: &impl LeaseStore) {
    let ttl = Duration::from_millis(300);
    assert_eq!(leases.try_acquire("p", "a", ttl).await.unwrap(), Some(1));
    assert_eq!(leases.try_acquire("p", "b", ttl).await.unwrap(), None);
    assert!(leases.renew("p", "a", 1, ttl).await.unwrap());
    assert!(
        !leases.renew("p", "b", 1, ttl).await.unwrap(),
        "not b's lease"
    );
    assert!(
        !leases.renew("p", "a", 7, ttl).await.unwrap(),
        "not that fence"
    );
    // Another projection is independent.
    assert_eq!(leases.try_acquire("q", "b", ttl).await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !leases.renew("p", "a", 1, ttl).await.unwrap(),
        "an expired lease is not renewed"
    );
    // Takeover of an expired lease.
    assert_eq!(leases.try_acquire("p", "b", ttl).await.unwrap(), Some(2));
    assert!(!leases.renew("p", "a", 1, ttl).await.unwrap());
    assert_eq!(leases.try_acquire("p", "a", ttl).await.unwrap(), None);
    // Released: free at once, and the fence still grows.
    leases.release("p", "b", 2).await.unwrap();
    assert_eq!(leases.try_acquire("p", "a", ttl).await.unwrap(), Some(3));
    // The holder taking it again gets a new fence; a release with an old fence does nothing.
    assert_eq!(leases.try_acquire("p", "a", ttl).await.unwrap(), Some(4));
    leases.release("p", "a", 3).await.unwrap();
    assert_eq!(leases.try_acquire("p", "b", ttl).await.unwrap(), None);
    assert!(leases.renew("p", "a", 4, ttl).await.unwrap());
}

/// Handles made by `open` (each on a pool of its own, as separate processes would) see one
/// lease: fences strictly increase across them, including after a handle is gone.
async fn fences_grow_across_handles<L, F>(open: impl Fn() -> F)
where
    L: LeaseStore,
    F: Future<Output = L>,
{
    let ttl = Duration::from_secs(30);
    let mut last = 0;
    for round in 0..6 {
        // A new "process" each round: its own pool, taking the lease, then releasing it.
        let leases = open().await;
        let owner = format!("process-{round}");
        let fence = leases
            .try_acquire("p", &owner, ttl)
            .await
            .unwrap()
            .expect("the lease is free");
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        // A second live handle cannot take it.
        let other = open().await;
        assert_eq!(other.try_acquire("p", "someone", ttl).await.unwrap(), None);
        if round % 2 == 0 {
            leases.release("p", &owner, fence).await.unwrap();
        } else {
            // A crash: the lease is never released; the next process waits for expiry.
            let short = Duration::from_millis(50);
            assert!(leases.renew("p", &owner, fence, short).await.unwrap());
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
}

/// `n` handles (pools of their own) try to take one free lease at the same moment: exactly
/// one gets it.
async fn one_winner<L: LeaseStore>(handles: Vec<L>) {
    let handles: Vec<Arc<L>> = handles.into_iter().map(Arc::new).collect();
    for round in 0..5 {
        let projection = format!("race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(handles.len()));
        let tasks: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(i, leases)| {
                let (leases, barrier, projection) =
                    (leases.clone(), barrier.clone(), projection.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    leases
                        .try_acquire(&projection, &format!("owner-{i}"), Duration::from_secs(30))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut won = Vec::new();
        for task in tasks {
            if let Some(fence) = task.await.unwrap() {
                won.push(fence);
            }
        }
        assert_eq!(won, [1], "round {round}: winners' fences {won:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_acquire_renew_release_expire() {
    let Some(pool) = postgres().await else { return };
    let schema = unique("sqlleases_");
    let leases = PgLeases::new(pool.clone(), &schema).unwrap();
    leases.migrate().await.unwrap();
    leases.migrate().await.unwrap();
    acquire_renew_release_expire(&leases).await;
    assert!(PgLeases::new(pool.clone(), "x; drop table y").is_err());
    assert!(PgLeases::new(pool, "\"q\"").is_err());
    drop_schemas_now(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fences_grow_across_handles() {
    let Some(pool) = postgres().await else { return };
    let schema = unique("sqlleases_");
    PgLeases::new(pool, &schema)
        .unwrap()
        .migrate()
        .await
        .unwrap();
    fences_grow_across_handles(|| async {
        let pool = postgres_with(1).await.unwrap();
        PgLeases::new(pool, &schema).unwrap()
    })
    .await;
    drop_schemas_now(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_acquirers_get_one_winner() {
    let Some(pool) = postgres().await else { return };
    let schema = unique("sqlleases_");
    PgLeases::new(pool, &schema)
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let pool = postgres_with(1).await.unwrap();
        handles.push(PgLeases::new(pool, &schema).unwrap());
    }
    one_winner(handles).await;
    drop_schemas_now(&schema);
}

/// Eight processes migrating a fresh schema at once, ten times: all succeed (before the
/// advisory lock, one of two failed with 23505 or 42P07 in about three runs of five).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_migrations_all_succeed() {
    let Some(_) = postgres().await else { return };
    let mut pools = Vec::new();
    for _ in 0..8 {
        pools.push(postgres_with(1).await.unwrap());
    }
    let prefix = unique("sqlmig_");
    for round in 0..10 {
        let schema = format!("{prefix}_{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(pools.len()));
        let tasks: Vec<_> = pools
            .iter()
            .map(|pool| {
                let leases = PgLeases::new(pool.clone(), &schema).unwrap();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    leases.migrate().await
                })
            })
            .collect();
        for task in tasks {
            task.await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        }
        let leases = PgLeases::new(pools[0].clone(), &schema).unwrap();
        assert_eq!(
            leases
                .try_acquire("p", "a", Duration::from_secs(1))
                .await
                .unwrap(),
            Some(1)
        );
    }
    drop_schemas_now(&prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leases_acquire_renew_release_expire() {
    let dir = tempfile::tempdir().unwrap();
    let leases = SqliteLeases::new(sqlite(&dir.path().join("a.db"), 2).await);
    leases.migrate().await.unwrap();
    leases.migrate().await.unwrap();
    acquire_renew_release_expire(&leases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fences_grow_across_handles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    SqliteLeases::new(sqlite(&path, 1).await)
        .migrate()
        .await
        .unwrap();
    fences_grow_across_handles(|| async { SqliteLeases::new(sqlite(&path, 1).await) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_acquirers_get_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    SqliteLeases::new(sqlite(&path, 1).await)
        .migrate()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        handles.push(SqliteLeases::new(sqlite(&path, 1).await));
    }
    one_winner(handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_migrations_all_succeed() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut handles = Vec::new();
        for _ in 0..8 {
            handles.push(SqliteLeases::new(sqlite(&path, 1).await));
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(handles.len()));
        let tasks: Vec<_> = handles
            .into_iter()
            .map(|leases| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    leases.migrate().await
                })
            })
            .collect();
        for task in tasks {
            task.await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        }
    }
}
