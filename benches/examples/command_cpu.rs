//! Where the command path's CPU goes: rounds of one deposit command per stream (10,000
//! streams, cached aggregates, as `annals-bench pg.command.64` times them), each timed with
//! the CPU used by this process and by all PostgreSQL processes, in microseconds a command.
//!
//! `cargo run --release -p annals-bench --example command_cpu` (Linux only: it reads `/proc`).
//! Settings from the environment: `DATABASE_URL`, `TASKS` (concurrent tasks, 64), `WRITERS`
//! (the store's group-commit writers, 4), `RUNS` (timed rounds, 4), `KEEP=1` to keep the
//! schema `annals_command_cpu` afterwards (to look at it with `psql`).
use std::time::Instant;

use annals::{CommandContext, Repository};
use annals_bench::{
    BenchResult,
    ledger::{Account, Deposit, Deposited, account_id},
};
use annals_postgres::{PgConfig, PgEventStore};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One command per stream, the streams dealt out to `tasks` tasks.
async fn round(
    repo: &Repository<Account, PgEventStore>,
    streams: u64,
    tasks: u64,
    r: u64,
) -> BenchResult<()> {
    let context = CommandContext::new();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let repo = repo.clone();
            let context = context.clone();
            tokio::spawn(async move {
                let mut n = t;
                while n < streams {
                    repo.execute(
                        &account_id(n),
                        Deposit(Deposited::sample(n, n + r)),
                        &context,
                    )
                    .await?;
                    n += tasks;
                }
                BenchResult::Ok(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    Ok(())
}

async fn run() -> BenchResult<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let streams = 10_000u64;
    let tasks = env_or("TASKS", 64u64);
    let config = PgConfig::new(url)
        .with_schema("annals_command_cpu")
        .with_max_connections(16)
        .with_writers(env_or("WRITERS", 4usize));
    let store = PgEventStore::connect(config).await?;
    store.drop_schema().await?;
    store.migrate().await?;
    let repo = Repository::<Account, _>::new(store.clone()).with_cache(streams as usize);
    round(&repo, streams, 64, 1).await?;
    for r in 2..2 + env_or("RUNS", 4u64) {
        let (own0, pg0) = annals_bench::cpu::ticks();
        let start = Instant::now();
        round(&repo, streams, tasks, r).await?;
        let wall = start.elapsed().as_secs_f64();
        let (own1, pg1) = annals_bench::cpu::ticks();
        let us = |t: u64| t as f64 / annals_bench::cpu::TICKS_PER_SECOND / streams as f64 * 1e6;
        println!(
            "{:>6.0} commands/s  client {:.1} + postgres {:.1} us a command ({:.2} cores busy)",
            streams as f64 / wall,
            us(own1 - own0),
            us(pg1 - pg0),
            (own1 - own0 + pg1 - pg0) as f64 / annals_bench::cpu::TICKS_PER_SECOND / wall
        );
    }
    if env_or("KEEP", 0) == 0 {
        store.drop_schema().await?;
    }
    Ok(())
}

fn main() -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async { tokio::spawn(run()).await? })
}
