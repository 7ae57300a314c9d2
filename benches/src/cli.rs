//! The command line: which scenarios, how big, how many runs, where the JSON goes.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use serde_json::json;

use crate::{
    BenchResult, Sizes,
    env::Ctx,
    report::{self, Report, Status},
    runner, scenarios,
};

/// Annals throughput benchmarks, each scenario beside its raw baseline measured in the same
/// run.
#[derive(Debug, Clone, Parser)]
#[command(name = "annals-bench", version, about)]
pub struct Args {
    /// What to run: `all`, `list` (print the scenarios), or scenario names or name prefixes
    /// (`pg`, `pg.command`, `sqlite.replay`, `projection.redis`, `memory`).
    #[arg(default_value = "all")]
    pub scenarios: Vec<String>,
    /// Events of the batched append, the replay and the projection rebuilds [default: 200000;
    /// quick: 400].
    #[arg(long)]
    pub events: Option<u64>,
    /// Streams of the command path, one command each [default: 10000; quick: 100].
    #[arg(long)]
    pub streams: Option<u64>,
    /// Tiny sizes and one run: checks that every scenario works, measures nothing useful.
    #[arg(long)]
    pub quick: bool,
    /// Timed runs of each side of each scenario [default: 3; quick: 1].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench-results.json")]
    pub json: PathBuf,
    /// PostgreSQL to use; each scenario works in a schema of its own.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub database_url: String,
    /// Redis to use; each scenario works under a key prefix of its own.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// Runs the selected scenarios, prints the table and writes the JSON.
///
/// Returns failure when a scenario failed.
///
/// # Errors
/// An unknown scenario name, or the JSON file cannot be written.
pub fn run(args: Args) -> BenchResult<ExitCode> {
    let all = scenarios::all();
    if args.scenarios.iter().any(|s| s == "list") {
        for s in &all {
            println!("{:<28} {}", s.spec.name, s.spec.description);
            println!("{:<28}   baseline: {}", "", s.spec.baseline);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let wanted = |name: &str| {
        args.scenarios.iter().any(|w| {
            w == "all" || name == w || name.starts_with(&format!("{w}.")) || name.starts_with(w)
        })
    };
    let selected: Vec<_> = all.iter().filter(|s| wanted(s.spec.name)).collect();
    if selected.is_empty() {
        return Err(format!("no scenario matches {:?}; try `list`", args.scenarios).into());
    }
    let mut sizes = if args.quick {
        Sizes::QUICK
    } else {
        Sizes::DEFAULT
    };
    if let Some(events) = args.events {
        sizes.events = events.max(1);
    }
    if let Some(streams) = args.streams {
        sizes.streams = streams.max(1);
    }
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = Ctx::new(
            args.database_url.clone(),
            args.redis_url.clone(),
            sizes,
            runs,
            selected.len() as u64,
        );
        let mut rows = Vec::with_capacity(selected.len());
        for scenario in selected {
            ctx.phase(scenario.spec.name);
            let outcome = (scenario.run)(&ctx).await;
            let row = runner::row(&scenario.spec, runs, outcome);
            ctx.done(runner::summary(&row));
            rows.push(row);
        }
        ctx.finish();
        let environment = environment(&args, sizes, runs).await;
        println!("\n{}", report::table(&rows));
        report::write_json(
            &args.json,
            &Report {
                environment: &environment,
                scenarios: &rows,
            },
        )?;
        println!("results written to {}", args.json.display());
        let failed = rows.iter().any(|r| r.status == Status::Failed);
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

async fn environment(args: &Args, sizes: Sizes, runs: usize) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let postgres = async {
        let pool = sqlx::PgPool::connect(&args.database_url).await.ok()?;
        let v: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&pool)
            .await
            .ok()?;
        pool.close().await;
        Some(v)
    }
    .await;
    let redis = async {
        let client = redis::Client::open(args.redis_url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(str::to_owned)
    }
    .await;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({
        "date": now,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu,
        "postgres": postgres,
        "redis": redis,
        "quick": args.quick,
        "runs": runs,
        "sizes": {
            "events": sizes.events,
            "batch": sizes.batch,
            "streams": sizes.streams,
            "aggregate_events": sizes.aggregate_events,
        },
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
