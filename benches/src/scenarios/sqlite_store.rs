//! The framework side of the SQLite scenarios (`annals-sqlite`).

use annals::EventStore;
use annals_sqlite::{Durability, SqliteConfig, SqliteEventStore};

use crate::{
    BenchResult,
    runner::timed,
    workload::{self, Batch},
};

/// A store in a new file under `dir`, durable like the raw baseline (`synchronous = FULL`).
async fn open(dir: &std::path::Path) -> BenchResult<SqliteEventStore> {
    let config = SqliteConfig::new(dir.join("events.db")).with_durability(Durability::Full);
    Ok(SqliteEventStore::open(config).await?)
}

async fn append_all(store: &SqliteEventStore, batches: &[Batch]) -> BenchResult<()> {
    for b in batches {
        store
            .append(&b.stream, b.expected(), b.events.clone())
            .await?;
    }
    Ok(())
}

/// Runs `work` on a runtime of its own (same shape as the main one: 2 workers) on a blocking
/// thread, and waits for it.
///
/// The store's futures are `Send`, but proving it inside the runner's boxed, borrowed
/// scenario futures trips a rustc limitation ("implementation of `Send` is not general
/// enough"); `block_on` needs no `Send`.
async fn on_own_runtime<T, F, Fut>(work: F) -> BenchResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = BenchResult<T>>,
{
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(work())
    })
    .await?
}

/// Batched append into a fresh file; events/s.
pub(crate) async fn append_batched(batches: &[Batch]) -> BenchResult<f64> {
    let input: Vec<Batch> = batches.to_vec();
    let events = workload::count(batches);
    on_own_runtime(move || async move {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path()).await?;
        let rate = timed(events, async {
            for b in input {
                store.append(&b.stream, b.expected(), b.events).await?;
            }
            Ok(())
        })
        .await;
        store.close().await;
        rate
    })
    .await
}

/// Global-log replay decoded into typed events, `runs` times after one fill (on a runtime
/// of its own, see [`on_own_runtime`]).
pub(crate) async fn replay(batches: &[Batch], runs: usize) -> BenchResult<Vec<f64>> {
    let input: Vec<Batch> = batches.to_vec();
    on_own_runtime(move || replay_owned(input, runs)).await
}

async fn replay_owned(batches: Vec<Batch>, runs: usize) -> BenchResult<Vec<f64>> {
    let events = workload::count(&batches);
    let dir = tempfile::tempdir()?;
    let store = open(dir.path()).await?;
    let result = async {
        append_all(&store, &batches).await?;
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            out.push(super::typed_replay(&store, events).await?);
        }
        Ok(out)
    }
    .await;
    store.close().await;
    result
}
