//! SQLite scenarios: `annals-sqlite` beside raw sqlx SQLite on a file of its own.

use futures::future::BoxFuture;

use super::sqlite_store;
use crate::{
    BenchResult,
    env::Ctx,
    raw::sqlite as raw,
    runner::{Measured, timed},
    workload::{self, Batch, RawRow},
};

async fn raw_insert(batches: &[Batch]) -> BenchResult<f64> {
    let rows: Vec<Vec<RawRow>> = batches.iter().map(RawRow::of_batch).collect();
    let dir = tempfile::tempdir()?;
    let pool = raw::open(&dir.path().join("raw.db")).await?;
    let rate = timed(workload::count(batches), async {
        for batch in &rows {
            raw::insert_batch(&pool, batch).await?;
        }
        Ok(())
    })
    .await;
    pool.close().await;
    rate
}

/// `sqlite.append.batched`: append calls of 1,000 events, against one raw transaction of
/// one 1,000-row INSERT.
pub(crate) fn append_batched(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = workload::many_streams(ctx.sizes.events, ctx.sizes.batch);
        let mut m = Measured::new(workload::count(&batches));
        for _ in 0..ctx.runs {
            m.framework
                .push(sqlite_store::append_batched(&batches).await?);
            m.baseline.push(raw_insert(&batches).await?);
        }
        Ok(m)
    })
}

async fn raw_scan(batches: &[Batch], runs: usize) -> BenchResult<Vec<f64>> {
    let events = workload::count(batches);
    let dir = tempfile::tempdir()?;
    let pool = raw::open(&dir.path().join("raw.db")).await?;
    let result = async {
        for batch in batches {
            raw::insert_batch(&pool, &RawRow::of_batch(batch)).await?;
        }
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            out.push(
                timed(events, async {
                    let (seen, _) = raw::scan_all(&pool).await?;
                    super::pg_raw::check_count(seen, events)
                })
                .await?,
            );
        }
        Ok(out)
    }
    .await;
    pool.close().await;
    result
}

/// `sqlite.replay`: the global log from 0 decoded into typed events, against a raw scan of
/// the same rows decoded with serde.
pub(crate) fn replay(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = workload::many_streams(ctx.sizes.events, ctx.sizes.batch);
        let mut m = Measured::new(workload::count(&batches));
        m.framework = sqlite_store::replay(&batches, ctx.runs).await?;
        m.baseline = raw_scan(&batches, ctx.runs).await?;
        Ok(m)
    })
}
