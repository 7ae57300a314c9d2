//! Where the command path's CPU goes: timed runs of each command path, alternating, each
//! measured with the CPU used by this process and by all PostgreSQL processes, in
//! microseconds a command. Steadier than commands/s on a shared 2-core machine.
//!
//! `cargo run --release -p annals-bench --example command_cpu` (Linux only: it reads `/proc`).
//! Settings from the environment:
//! - `PATHS`: the command paths, comma-separated, run in this order in every round (default
//!   `uncached,raw-command`): `cached` (a cached repository, one command on each of
//!   `STREAMS` streams opened first, as `annals-bench pg.command.N` times it), `raw-insert`
//!   (its baseline: `BEGIN`, `INSERT`, `COMMIT`), `uncached` (no cache: load, decide,
//!   append, 10 commands on each of `STREAMS / 10` aggregates, as
//!   `pg.command.uncached.N`), `raw-command` (its baseline: a hand-written `SELECT`, fold,
//!   decide, `INSERT`);
//! - `TASKS`: concurrent tasks, comma-separated (default `1,8,64`);
//! - `STREAMS` (10000), `RUNS` (rounds per task count, 3), `WORKERS` (tokio worker threads,
//!   2), `DATABASE_URL`.
//!
//! Under each line, the mean wall time of a load and of an append (the hand-written path's
//! `SELECT` and `INSERT`), from [`annals_bench::timed`]: where a command's time goes; the
//! WAL the cluster wrote during the run, in bytes a command (what each commit must flush);
//! and the cluster's WAL flushes (`pg_stat_wal`): how many, commands a flush, one every how
//! many microseconds, and, when the backends time their I/O (`DATABASE_URL` with
//! `?options=-c%20track_wal_io_timing%3Don`, a superuser's setting), how long each took and
//! how much of the run the disk spent syncing. A path paced by its flushes that keeps the
//! disk syncing less of the time leaves room between them.
//!
//! `backends` is the CPU of the PostgreSQL backends serving this process's connections
//! ([`annals_bench::cpu::Sample`]): other sessions in the same cluster (test suites, say) do
//! not disturb it, but it leaves out the server's shared work (the WAL writer's). `all
//! postgres` is every postgres process on the machine, theirs included.
use std::time::Instant;

use annals_bench::{
    BenchResult,
    commands::{self, COMMANDS_PER_AGGREGATE, CommandPath},
    cpu, env_or,
};

fn list<T: std::str::FromStr>(name: &str, default: &str) -> BenchResult<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|e| format!("{name}: {e}").into())
        })
        .collect()
}

async fn run() -> BenchResult<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let streams = env_or("STREAMS", 10_000u64);
    let paths: Vec<CommandPath> = list("PATHS", "uncached,raw-command")?;
    let tasks: Vec<usize> = list("TASKS", "1,8,64")?;
    let wal = sqlx::PgPool::connect(&url).await?;
    for &t in &tasks {
        for _ in 0..env_or("RUNS", 3u64) {
            for &path in &paths {
                let n = match path {
                    CommandPath::Cached | CommandPath::RawInsert => streams,
                    CommandPath::Uncached | CommandPath::RawCommand => {
                        (streams / COMMANDS_PER_AGGREGATE).max(1)
                    }
                };
                let mut prepared = commands::prepare(&url, path, n, t).await?;
                let wal_before = wal_position(&wal).await?;
                let syncs_before = wal_syncs(&wal).await?;
                let before = cpu::Sample::take();
                let start = Instant::now();
                let ran = prepared.run().await;
                let wall = start.elapsed().as_secs_f64();
                let used = cpu::Sample::take().since(&before);
                let wal_bytes = wal_position(&wal).await? - wal_before;
                let calls = prepared.call_split();
                prepared.drop().await?;
                // Backends report their WAL statistics at the latest when they exit: read
                // them once the run's connections are closed and their backends gone.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let syncs = wal_syncs(&wal).await?;
                let commands = ran?;
                let us = |t: u64| t as f64 / cpu::TICKS_PER_SECOND / commands as f64 * 1e6;
                println!(
                    "{:<12} {t:>3} tasks {:>6.0} commands/s  client {:>5.1} + backends {:>5.1} \
                     = {:>5.1} us a command (all postgres {:>5.1}; {:.2} cores busy)",
                    format!("{path:?}"),
                    commands as f64 / wall,
                    us(used.client),
                    us(used.backends),
                    us(used.client + used.backends),
                    us(used.all_postgres),
                    (used.client + used.all_postgres) as f64 / cpu::TICKS_PER_SECOND / wall
                );
                let mean =
                    |us: Option<f64>| us.map_or_else(|| "-".to_owned(), |us| format!("{us:.0} us"));
                println!(
                    "{:>23} a load {:>7}, an append {:>7} (wall time, mean); {:.0} bytes of WAL \
                     a command",
                    "",
                    mean(calls.load_us),
                    mean(calls.append_us),
                    wal_bytes as f64 / commands as f64
                );
                let (Some(before), Some(after)) = (syncs_before, syncs) else {
                    continue;
                };
                let syncs = after.since(before);
                // The sync time is zero unless `track_wal_io_timing` is on for the backends
                // that flush (the URL's `?options=-c%20track_wal_io_timing%3Don`, say).
                let timed = if syncs.ms > 0.0 {
                    format!(
                        ", {:.0} us each, the disk syncing {:.0} % of the wall time",
                        syncs.ms * 1e3 / syncs.count.max(1) as f64,
                        syncs.ms / 1e3 / wall * 100.0
                    )
                } else {
                    String::new()
                };
                println!(
                    "{:>23} {} WAL flushes, {:.1} commands a flush, one every {:.0} us{timed}",
                    "",
                    syncs.count,
                    commands as f64 / syncs.count.max(1) as f64,
                    wall * 1e6 / syncs.count.max(1) as f64
                );
            }
        }
    }
    Ok(())
}

/// The cluster's WAL insert position in bytes: the WAL written between two readings, by this
/// process's commands and anything else the cluster ran meanwhile.
async fn wal_position(pool: &sqlx::PgPool) -> BenchResult<i64> {
    let (lsn,): (i64,) =
        sqlx::query_as("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
            .fetch_one(pool)
            .await?;
    Ok(lsn)
}

/// The cluster's WAL flushes so far (`pg_stat_wal`): how many, and their time in
/// milliseconds (zero without `track_wal_io_timing`).
#[derive(Clone, Copy)]
struct Syncs {
    count: i64,
    ms: f64,
}

impl Syncs {
    fn since(self, before: Self) -> Self {
        Self {
            count: self.count - before.count,
            ms: self.ms - before.ms,
        }
    }
}

/// `None` on a server without `pg_stat_wal` (PostgreSQL before 14): the flush line is then
/// left out.
async fn wal_syncs(pool: &sqlx::PgPool) -> BenchResult<Option<Syncs>> {
    let read = sqlx::query_as::<_, (i64, f64)>("SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
        .fetch_one(pool)
        .await;
    match read {
        Ok((count, ms)) => Ok(Some(Syncs { count, ms })),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("WORKERS", 2usize).max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async { tokio::spawn(run()).await? })
}
