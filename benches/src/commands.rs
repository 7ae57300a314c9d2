//! The command paths the `pg.command*` scenarios and the `command_cpu` example time, each
//! prepared on a fresh schema of its own (untimed) and then run (timed).
//!
//! - [`CommandPath::Cached`]: `Repository::with_cache` over `PgEventStore`, streams opened by
//!   one command each first (untimed), then one more command per stream.
//! - [`CommandPath::Uncached`]: `Repository::new` (no cache) over `PgEventStore`: every
//!   command loads its aggregate, decides, appends one event. [`COMMANDS_PER_AGGREGATE`]
//!   commands per aggregate, starting from empty streams, the aggregates dealt out to the
//!   tasks (no two tasks share one, so nothing conflicts).
//! - [`CommandPath::RawInsert`]: the cached path's baseline, single-row `INSERT`
//!   transactions (`BEGIN`, `INSERT`, `COMMIT`) into a `jsonb` table holding each stream's
//!   first event.
//! - [`CommandPath::RawCommand`]: the uncached path's baseline, a hand-written sqlx command
//!   path: one `SELECT` of the aggregate's events (the columns folding needs, payload as
//!   `jsonb` decoded into the typed event), fold, decide, encode the event with its
//!   metadata, one autocommit `INSERT` whose unique `(stream_id, stream_version)` is the
//!   concurrency check. The same commands as the uncached path.
//!
//! Both baselines hold one connection per task, as a hand-written service would keep them.

use annals::{Aggregate, CommandContext, DomainEvent, Repository};
use annals_postgres::{PgConfig, PgEventStore};
use sqlx::PgConnection;

use std::{sync::Arc, time::Instant};

use crate::{
    BenchResult,
    env::{PgSchema, pg_schema},
    ledger::{Account, Deposit, Deposited, LedgerEvent, account_id},
    raw::pg,
    timed::{CallSplit, CallTimes, Timed},
    workload::{self, RawRow},
};

/// The store of the framework's command paths: every load and append timed
/// ([`crate::timed`]).
type Store = Timed<PgEventStore>;

/// Commands each aggregate gets in the uncached paths.
pub const COMMANDS_PER_AGGREGATE: u64 = 10;

/// Connections of the framework's pool in every command scenario.
pub const STORE_CONNECTIONS: u32 = 16;

/// Which command path to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandPath {
    /// Cached repository, one command per stream (streams opened first, untimed).
    Cached,
    /// Repository without cache, [`COMMANDS_PER_AGGREGATE`] commands per aggregate.
    Uncached,
    /// The cached path's baseline: `BEGIN`, `INSERT`, `COMMIT`.
    RawInsert,
    /// The uncached path's baseline: `SELECT`, fold, decide, one `INSERT`.
    RawCommand,
}

impl std::str::FromStr for CommandPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "cached" => Ok(Self::Cached),
            "uncached" => Ok(Self::Uncached),
            "raw-insert" => Ok(Self::RawInsert),
            "raw-command" | "raw" => Ok(Self::RawCommand),
            other => Err(format!(
                "unknown command path {other:?}: expected cached, uncached, raw-insert or raw-command"
            )),
        }
    }
}

impl CommandPath {
    /// Commands one timed run makes over `streams` streams (or aggregates).
    pub fn commands(self, streams: u64) -> u64 {
        match self {
            Self::Cached | Self::RawInsert => streams,
            Self::Uncached | Self::RawCommand => streams * COMMANDS_PER_AGGREGATE,
        }
    }
}

/// A command path prepared on a fresh schema: [`Prepared::run`] it (timed), then
/// [`Prepared::drop`] it.
pub struct Prepared {
    streams: u64,
    tasks: usize,
    side: Side,
    /// The loads and appends of the timed run (the untimed preparation's are not counted).
    times: Arc<CallTimes>,
}

enum Side {
    Store {
        store: PgEventStore,
        repo: Repository<Account, Store>,
        /// The round of the timed commands (the cached path's second command per stream).
        cached: bool,
    },
    Raw {
        schema: PgSchema,
        conns: Vec<PgConnection>,
        /// The rows of the timed inserts (`RawInsert`); `None` for `RawCommand`.
        rows: Option<Vec<RawRow>>,
    },
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("streams", &self.streams)
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

/// A store in a new schema of its own, migrated, with the default group-commit settings.
/// For experiments with `command_cpu`, the environment variables `WRITERS` and `DIRECT`,
/// when set, set the number of writers and of direct connections, and `NOTIFY=false` turns
/// the store's notifications to subscribers off.
pub(crate) async fn new_store(url: &str, connections: u32) -> BenchResult<PgEventStore> {
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut config = PgConfig::new(url)
        .with_schema(schema)
        .with_max_connections(connections);
    if let Some(writers) = crate::env_setting("WRITERS")? {
        config = config.with_writers(writers);
    }
    if let Some(direct) = crate::env_setting("DIRECT")? {
        config = config.with_direct_connections(direct);
    }
    if let Some(notify) = crate::env_setting("NOTIFY")? {
        config = config.with_notify(notify);
    }
    let store = PgEventStore::connect(config).await?;
    store.migrate().await?;
    Ok(store)
}

/// Prepares `path` over `streams` streams (aggregates) for `tasks` concurrent tasks, on a
/// fresh schema of the database at `url`.
///
/// # Errors
/// PostgreSQL failures.
pub async fn prepare(
    url: &str,
    path: CommandPath,
    streams: u64,
    tasks: usize,
) -> BenchResult<Prepared> {
    let tasks = tasks.max(1);
    let times = Arc::new(CallTimes::default());
    let side = match path {
        CommandPath::Cached | CommandPath::Uncached => {
            let store = new_store(url, STORE_CONNECTIONS).await?;
            let cached = path == CommandPath::Cached;
            let repo = Repository::<Account, _>::new(Timed::new(store.clone(), times.clone()));
            let repo = if cached {
                repo.with_cache(streams as usize)
            } else {
                repo
            };
            if cached && let Err(e) = cached_round(&repo, streams, 64, 1).await {
                drop_store(store).await?;
                return Err(e);
            }
            // The timers count the timed run only.
            times.reset();
            Side::Store {
                store,
                repo,
                cached,
            }
        }
        CommandPath::RawInsert | CommandPath::RawCommand => {
            let schema = pg_schema(url, tasks as u32).await?;
            let prepared = raw_prepare(&schema, path, streams, tasks).await;
            match prepared {
                Ok((conns, rows)) => Side::Raw {
                    schema,
                    conns,
                    rows,
                },
                Err(e) => {
                    schema.drop().await?;
                    return Err(e);
                }
            }
        }
    };
    Ok(Prepared {
        streams,
        tasks,
        side,
        times,
    })
}

async fn raw_prepare(
    schema: &PgSchema,
    path: CommandPath,
    streams: u64,
    tasks: usize,
) -> BenchResult<(Vec<PgConnection>, Option<Vec<RawRow>>)> {
    pg::create_table(&schema.pool, "jsonb").await?;
    let rows = if path == CommandPath::RawInsert {
        let (setup, timed_rows) = insert_rows(streams);
        let mut conn = schema.pool.acquire().await?;
        for chunk in setup.chunks(1_000) {
            pg::copy_rows(&mut conn, chunk).await?;
        }
        Some(timed_rows)
    } else {
        None
    };
    let mut conns = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        conns.push(schema.pool.acquire().await?.detach());
    }
    Ok((conns, rows))
}

impl Prepared {
    /// Runs the commands (the timed part); returns how many were made.
    ///
    /// # Errors
    /// PostgreSQL failures, or a command the aggregate refused.
    pub async fn run(&mut self) -> BenchResult<u64> {
        let (streams, tasks) = (self.streams, self.tasks);
        match &mut self.side {
            Side::Store {
                repo, cached: true, ..
            } => {
                cached_round(repo, streams, tasks, 2).await?;
                Ok(streams)
            }
            Side::Store { repo, .. } => {
                uncached_commands(repo, streams, tasks).await?;
                Ok(streams * COMMANDS_PER_AGGREGATE)
            }
            Side::Raw {
                conns,
                rows: Some(rows),
                ..
            } => {
                *conns = raw_inserts(std::mem::take(conns), std::mem::take(rows)).await?;
                Ok(streams)
            }
            Side::Raw { conns, .. } => {
                *conns = raw_commands(std::mem::take(conns), streams, &self.times).await?;
                Ok(streams * COMMANDS_PER_AGGREGATE)
            }
        }
    }

    /// The mean time of a load and of an append (or the hand-written path's `SELECT` and
    /// `INSERT`) in the runs so far. The raw `INSERT` transactions are not timed.
    pub fn call_split(&self) -> CallSplit {
        self.times.split()
    }

    /// Drops the schema and closes the connections.
    ///
    /// # Errors
    /// PostgreSQL failures.
    pub async fn drop(self) -> BenchResult<()> {
        match self.side {
            Side::Store { store, .. } => drop_store(store).await,
            Side::Raw { schema, conns, .. } => {
                for conn in conns {
                    sqlx::Connection::close(conn).await?;
                }
                schema.drop().await
            }
        }
    }
}

/// Prepares, runs and drops `path` once; events (commands) per second of the run.
pub(crate) async fn timed_run(
    url: &str,
    path: CommandPath,
    streams: u64,
    tasks: usize,
) -> BenchResult<f64> {
    let mut prepared = prepare(url, path, streams, tasks).await?;
    let start = std::time::Instant::now();
    let ran = prepared.run().await;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    prepared.drop().await?;
    Ok(ran? as f64 / secs)
}

async fn drop_store(store: PgEventStore) -> BenchResult<()> {
    store.drop_schema().await?;
    store.pool().close().await;
    Ok(())
}

/// The deposit of command `round` on aggregate `n`: the same for the framework and its
/// baseline.
fn deposit(n: u64, round: u64) -> Deposit {
    Deposit(Deposited::sample(n, n * COMMANDS_PER_AGGREGATE + round))
}

/// One deposit command per stream, spread over `tasks` concurrent tasks.
async fn cached_round(
    repo: &Repository<Account, Store>,
    streams: u64,
    tasks: usize,
    round: u64,
) -> BenchResult<()> {
    let context = CommandContext::new();
    let handles: Vec<_> = split((0..streams).collect(), tasks)
        .into_iter()
        .map(|share| {
            let repo = repo.clone();
            let context = context.clone();
            tokio::spawn(async move {
                for n in share {
                    let command = Deposit(Deposited::sample(n, n + round));
                    repo.execute(&account_id(n), command, &context).await?;
                }
                BenchResult::Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

/// [`COMMANDS_PER_AGGREGATE`] commands on each of `streams` aggregates, each task taking its
/// share of the aggregates round by round.
async fn uncached_commands(
    repo: &Repository<Account, Store>,
    streams: u64,
    tasks: usize,
) -> BenchResult<()> {
    let context = CommandContext::new();
    let handles: Vec<_> = split((0..streams).collect(), tasks)
        .into_iter()
        .map(|share| {
            let repo = repo.clone();
            let context = context.clone();
            tokio::spawn(async move {
                for round in 0..COMMANDS_PER_AGGREGATE {
                    for &n in &share {
                        let id = account_id(n);
                        let executed = repo.execute(&id, deposit(n, round), &context).await?;
                        if executed.version != round + 1 {
                            return Err(format!(
                                "aggregate {n} at version {} after command {}",
                                executed.version,
                                round + 1
                            )
                            .into());
                        }
                    }
                }
                BenchResult::Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

/// The rows of the cached path's baseline: version 1 (set up untimed) and version 2 (the
/// timed insert) of each stream, with command metadata like the repository writes.
pub(crate) fn insert_rows(streams: u64) -> (Vec<RawRow>, Vec<RawRow>) {
    let context = CommandContext::new();
    let row = |n: u64, version: u64| {
        let event = LedgerEvent::Deposited(Deposited::sample(n, n + version))
            .new_event()
            .with_metadata(context.metadata());
        RawRow::of(&workload::stream_of(n), version, &event)
    };
    (
        (0..streams).map(|n| row(n, 1)).collect(),
        (0..streams).map(|n| row(n, 2)).collect(),
    )
}

/// Single-row `INSERT` transactions, one task per connection. Gives the connections back
/// (their backends stay, for the CPU they used to be read).
async fn raw_inserts(
    conns: Vec<PgConnection>,
    rows: Vec<RawRow>,
) -> BenchResult<Vec<PgConnection>> {
    let shares = split(rows, conns.len());
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(shares)
        .map(|(mut conn, rows)| {
            tokio::spawn(async move {
                for row in &rows {
                    pg::insert_one(&mut conn, row).await?;
                }
                BenchResult::Ok(conn)
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    for task in tasks {
        back.push(task.await??);
    }
    Ok(back)
}

/// The hand-written command path: per command one `SELECT` of the aggregate, fold, decide,
/// encode, one `INSERT`. Gives the connections back (as [`raw_inserts`]).
async fn raw_commands(
    conns: Vec<PgConnection>,
    streams: u64,
    times: &Arc<CallTimes>,
) -> BenchResult<Vec<PgConnection>> {
    let shares = split((0..streams).collect::<Vec<_>>(), conns.len());
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(shares)
        .map(|(mut conn, share)| {
            let times = times.clone();
            tokio::spawn(async move {
                let context = CommandContext::new();
                for round in 0..COMMANDS_PER_AGGREGATE {
                    for &n in &share {
                        raw_command(&mut conn, n, round, &context, &times).await?;
                    }
                }
                BenchResult::Ok(conn)
            })
        })
        .collect();
    let mut back = Vec::with_capacity(tasks.len());
    for task in tasks {
        back.push(task.await??);
    }
    Ok(back)
}

/// One command of the hand-written path.
async fn raw_command(
    conn: &mut PgConnection,
    n: u64,
    round: u64,
    context: &CommandContext,
    times: &CallTimes,
) -> BenchResult<()> {
    let stream = workload::stream_of(n);
    let started = Instant::now();
    let (account, version) = pg::load_stream(&mut *conn, stream.as_str()).await?;
    times.load_ended(started);
    if version != round {
        return Err(
            format!("raw aggregate {n} at version {version} before command {round}").into(),
        );
    }
    let events = account.handle(deposit(n, round))?;
    let metadata = context.metadata();
    for (i, event) in events.iter().enumerate() {
        let new = event.to_new_event()?.with_metadata(metadata.clone());
        let row = RawRow::of(&stream, version + 1 + i as u64, &new);
        let started = Instant::now();
        pg::insert_row(&mut *conn, &row).await?;
        times.append_ended(started);
    }
    Ok(())
}

/// Splits `items` round-robin into `parts` shares.
pub(crate) fn split<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let parts = parts.max(1);
    let mut shares: Vec<Vec<T>> = (0..parts).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        shares[i % parts].push(item);
    }
    shares
}
