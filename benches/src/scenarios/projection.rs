//! Projection rebuilds: `annals-projections` into Redis and tantivy, beside the same writes
//! done directly.

use futures::future::BoxFuture;

use super::projection_run;
use crate::{
    BenchResult,
    env::Ctx,
    ledger::Deposited,
    raw,
    runner::{Measured, timed},
    workload,
};

/// `projection.redis.rebuild`: the ledger projection rebuilt from position 0 into Redis,
/// against the same Redis commands pipelined directly in batches of the same size.
pub(crate) fn redis(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = workload::many_streams(ctx.sizes.events, ctx.sizes.batch);
        let events = workload::count(&batches);
        let docs: Vec<Deposited> = workload::deposits(&batches)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let mut m = Measured::new(events);
        m.framework = projection_run::redis(ctx, &batches, ctx.runs).await?;
        for _ in 0..ctx.runs {
            // Shaped like a projection generation's prefix (one hash tag).
            let prefix = format!("{{{}:ledger-balances:1}}:", ctx.redis_prefix());
            let mut conn = ctx.redis().await?;
            let rate = timed(events, async {
                raw::redis::write_pipelined(&mut conn, &prefix, &docs, projection_run::BATCH).await
            })
            .await;
            ctx.redis_cleanup(&prefix).await?;
            m.baseline.push(rate?);
        }
        Ok(m)
    })
}

/// `projection.tantivy.rebuild`: the ledger search projection rebuilt from position 0 into
/// a new tantivy index, against indexing the same documents directly with one commit.
pub(crate) fn tantivy(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = workload::many_streams(ctx.sizes.events, ctx.sizes.batch);
        let events = workload::count(&batches);
        let docs: Vec<(String, Deposited)> = workload::deposits(&batches)?
            .into_iter()
            .map(|(id, d)| (id.to_string(), d))
            .collect();
        let mut m = Measured::new(events);
        m.framework = projection_run::tantivy(ctx, &batches, ctx.runs).await?;
        for _ in 0..ctx.runs {
            let dir = tempfile::tempdir()?;
            let rate = timed(events, async {
                let path = dir.path().to_owned();
                let docs = docs.clone();
                let indexed =
                    tokio::task::spawn_blocking(move || raw::tantivy::index_directly(&path, &docs))
                        .await??;
                super::pg_raw::check_count(indexed, events)
            })
            .await?;
            m.baseline.push(rate);
        }
        Ok(m)
    })
}
