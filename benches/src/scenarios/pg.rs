//! PostgreSQL scenarios: `annals-postgres` beside raw sqlx on the same server.

use futures::future::BoxFuture;

use super::{pg_raw, pg_store};
use annals_postgres::PgEventStore;

use crate::{
    BenchResult,
    commands::{self, COMMANDS_PER_AGGREGATE, CommandPath},
    env::{Ctx, PgSchema},
    runner::Measured,
    workload::{self, Batch},
};

/// `pg.append.batched`: append calls of 1,000 events (one new stream each), one writer,
/// against one raw `COPY` of the same 1,000 rows per statement.
pub(crate) fn append_batched(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = workload::many_streams(ctx.sizes.events, ctx.sizes.batch);
        let mut m = Measured::new(workload::count(&batches));
        for _ in 0..ctx.runs {
            m.framework
                .push(pg_store::append_batched(ctx, &batches).await?);
            m.baseline
                .push(pg_raw::copy(ctx, &batches, pg_store::PAYLOAD_TYPE).await?);
        }
        Ok(m)
    })
}

/// Alternates `path` and `baseline` run by run, each on a fresh schema.
fn alternate(
    ctx: &Ctx,
    path: CommandPath,
    baseline: CommandPath,
    streams: u64,
    tasks: usize,
) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let url = ctx.database_url.as_str();
        let mut m = Measured::new(path.commands(streams));
        for _ in 0..ctx.runs {
            m.framework
                .push(commands::timed_run(url, path, streams, tasks).await?);
            m.baseline
                .push(commands::timed_run(url, baseline, streams, tasks).await?);
        }
        Ok(m)
    })
}

/// The cached command path over `--streams` streams, one command each, against single-row
/// `INSERT` transactions.
fn command(ctx: &Ctx, tasks: usize) -> BoxFuture<'_, BenchResult<Measured>> {
    let streams = ctx.sizes.streams;
    alternate(
        ctx,
        CommandPath::Cached,
        CommandPath::RawInsert,
        streams,
        tasks,
    )
}

/// `pg.command.1`: one task; see [`command`].
pub(crate) fn command_1(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    command(ctx, 1)
}

/// `pg.command.8`: eight tasks.
pub(crate) fn command_8(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    command(ctx, 8)
}

/// `pg.command.64`: 64 tasks.
pub(crate) fn command_64(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    command(ctx, 64)
}

/// Aggregates of the uncached command path: a tenth of `--streams` (1,000 by default), so a
/// run makes as many commands as the cached path's.
pub(crate) fn uncached_aggregates(streams: u64) -> u64 {
    (streams / COMMANDS_PER_AGGREGATE).max(1)
}

/// The uncached command path (load, decide, append, one event per command; 10 commands per
/// aggregate from an empty stream) against the hand-written sqlx command path.
fn uncached(ctx: &Ctx, tasks: usize) -> BoxFuture<'_, BenchResult<Measured>> {
    let aggregates = uncached_aggregates(ctx.sizes.streams);
    alternate(
        ctx,
        CommandPath::Uncached,
        CommandPath::RawCommand,
        aggregates,
        tasks,
    )
}

/// `pg.command.uncached.1`: one task; see [`uncached`].
pub(crate) fn uncached_1(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    uncached(ctx, 1)
}

/// `pg.command.uncached.8`: eight tasks.
pub(crate) fn uncached_8(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    uncached(ctx, 8)
}

/// `pg.command.uncached.64`: 64 tasks.
pub(crate) fn uncached_64(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    uncached(ctx, 64)
}

/// Which read the interleaved runs time.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// The whole global log.
    Replay,
    /// The aggregate of account 1, this many times per run.
    Load { loads: u64, snapshot: bool },
}

impl Read {
    async fn framework(self, store: &PgEventStore, events: u64) -> BenchResult<f64> {
        match self {
            Self::Replay => super::typed_replay(store, events).await,
            Self::Load { loads, snapshot } => pg_store::load(store, events, loads, snapshot).await,
        }
    }

    async fn baseline(self, raw: &PgSchema, events: u64) -> BenchResult<f64> {
        match self {
            Self::Replay => pg_raw::scan(raw, events).await,
            Self::Load { loads, .. } => {
                let stream = workload::stream_of(1);
                pg_raw::load_stream(raw, stream.as_str(), events, loads).await
            }
        }
    }
}

/// Fills a store and a raw table with the same batches, then alternates their timed reads
/// `runs` times, and removes both.
async fn interleaved_reads(
    ctx: &Ctx,
    batches: &[Batch],
    read: Read,
    mut m: Measured,
) -> BenchResult<Measured> {
    let events = workload::count(batches);
    let snapshot = matches!(read, Read::Load { snapshot: true, .. });
    let store = pg_store::filled(ctx, batches, snapshot).await?;
    let raw = pg_raw::filled(ctx, batches).await;
    let result = async {
        let raw = raw.as_ref().map_err(|e| e.to_string())?;
        for _ in 0..ctx.runs {
            m.framework.push(read.framework(&store, events).await?);
            m.baseline.push(read.baseline(raw, events).await?);
        }
        BenchResult::Ok(m)
    }
    .await;
    pg_store::drop_store(store).await?;
    if let Ok(raw) = raw {
        raw.drop().await?;
    }
    result
}

/// `pg.replay`: the global log from 0, decoded into typed events, against the raw jsonb
/// scan of the same events.
pub(crate) fn replay(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = workload::many_streams(ctx.sizes.events, ctx.sizes.batch);
        let events = workload::count(&batches);
        interleaved_reads(ctx, &batches, Read::Replay, Measured::new(events)).await
    })
}

/// How many loads of the aggregate one timed run makes: one load is too short to time, and
/// with 10 (0.1 s) the ratio moved between 1.28 and 1.53 from run to run.
pub(crate) const LOADS_PER_RUN: u64 = 30;

fn load(ctx: &Ctx, snapshot: bool) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches: Vec<Batch> =
            workload::one_stream(1, ctx.sizes.aggregate_events, ctx.sizes.batch);
        let events = workload::count(&batches);
        let read = Read::Load {
            loads: LOADS_PER_RUN,
            snapshot,
        };
        interleaved_reads(ctx, &batches, read, Measured::new(events * LOADS_PER_RUN)).await
    })
}

/// `pg.load`: one aggregate of 10,000 events loaded by the repository, no snapshot.
pub(crate) fn load_plain(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    load(ctx, false)
}

/// `pg.load.snapshot`: the same with a snapshot 100 events before the end.
pub(crate) fn load_snapshot(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    load(ctx, true)
}
