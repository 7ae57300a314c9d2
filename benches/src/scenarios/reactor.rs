//! `pg.reactor`: a reactor issuing one command per event on PostgreSQL, beside the plain
//! command path issuing the same commands at the same concurrency (one task).
//!
//! Each side gets a fresh store holding the same log: `streams` statements opened by one
//! deposit each, then one `Deposited` trigger on each of `streams` accounts. The framework
//! side starts a reactor ([`ProjectionRunner::add_reactor`], its checkpoint in `PgTables`
//! with no tables in the store's database, default batch size) that answers each trigger by
//! recording the deposit on the account's statement through [`Reaction::execute`] (an
//! idempotent command whose event ids are derived from the trigger): load, decide, append.
//! It is timed from `add_reactor` until `catch_up` returns. The baseline runs the same
//! commands with [`Repository::execute`] (a plain context), one after the other. Neither
//! repository caches, so every command loads its aggregate.

use std::time::{Duration, Instant};

use annals::{
    Aggregate, BoxError, CommandContext, DomainEvent, EventStore, ExpectedVersion, LogRead,
    RecordedEvent, Repository, StreamAppend, StreamId,
};
use annals_postgres::PgEventStore;
use annals_projections::{
    EventFilter, ProgressDisplay, ProjectionConfig, ProjectionRunner, Reaction, Reactor,
};
use annals_projections_sql::{PgTables, SqlSchema};
use futures::{TryStreamExt, future::BoxFuture};
use serde::{Deserialize, Serialize};

use super::{pg_raw::check_count, pg_store::with_store, projection_sql::drop_namespace};
use crate::{
    BenchResult,
    env::Ctx,
    ledger::{Account, AccountError, Deposit, Deposited, LedgerEvent, account_id},
    runner::{Measured, timed},
};

/// The reactor's name (its lease, checkpoint and the scope of its command ids).
const NAME: &str = "statements";

/// Streams per `append_multi` call of the fill.
const FILL_STREAMS: usize = 500;

/// How long `catch_up` may take before the run counts as failed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3_600);

/// An account's statement: a second aggregate that records the account's deposits (the
/// account's state and events, under another stream category).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Statement(Account);

impl Aggregate for Statement {
    const TYPE: &'static str = "statement";
    type Event = LedgerEvent;
    type Command = Deposit;
    type Error = AccountError;

    fn handle(&self, command: Deposit) -> Result<Vec<LedgerEvent>, AccountError> {
        self.0.handle(command)
    }

    fn apply(&mut self, event: &LedgerEvent) {
        self.0.apply(event);
    }
}

/// Records every deposit into an account on the account's statement: one command per event.
struct Statements {
    statements: Repository<Statement, PgEventStore>,
}

impl Reactor<PgEventStore> for Statements {
    fn name(&self) -> &str {
        NAME
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Account>()
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, PgEventStore>,
    ) -> Result<(), BoxError> {
        let LedgerEvent::Deposited(d) = LedgerEvent::decode(event)?;
        let id = d.account.clone();
        reaction.execute(&self.statements, &id, Deposit(d)).await?;
        Ok(())
    }
}

fn statement_of(n: u64) -> BenchResult<StreamId> {
    Ok(StreamId::for_aggregate(Statement::TYPE, &account_id(n))?)
}

fn account_of(n: u64) -> BenchResult<StreamId> {
    Ok(StreamId::for_aggregate(Account::TYPE, &account_id(n))?)
}

/// The deposit that triggers the command on statement `n` (and that command's payload).
fn trigger(n: u64) -> Deposited {
    Deposited::sample(n, n + 1)
}

/// Fills the log (untimed): `streams` statements opened by one deposit each, then one
/// trigger deposit on each of `streams` accounts, `FILL_STREAMS` streams per append.
async fn fill(store: &PgEventStore, streams: u64) -> BenchResult<()> {
    let one = |stream: StreamId, d: Deposited| {
        let event = LedgerEvent::Deposited(d).new_event();
        StreamAppend::new(stream, ExpectedVersion::Exact(0), vec![event])
    };
    let mut appends = Vec::with_capacity(2 * streams as usize);
    for n in 0..streams {
        appends.push(one(statement_of(n)?, Deposited::sample(n, n)));
    }
    for n in 0..streams {
        appends.push(one(account_of(n)?, trigger(n)));
    }
    for chunk in appends.chunks(FILL_STREAMS) {
        store.append_multi(chunk.to_vec()).await?;
    }
    sqlx::query("ANALYZE events").execute(store.pool()).await?;
    Ok(())
}

/// Checks that every statement holds its opening deposit and exactly one more.
async fn check(store: &PgEventStore, streams: u64) -> BenchResult<()> {
    let mut read = store.read_all(LogRead::from_start());
    let (mut second, mut all) = (0, 0);
    while let Some(event) = read.try_next().await? {
        if event.stream_id.category() == Statement::TYPE {
            all += 1;
            if event.stream_version == 2 {
                second += 1;
            }
        }
    }
    check_count(second, streams)?;
    check_count(all, 2 * streams)
}

/// One timed run of the reactor over a fresh store; commands/s.
async fn reactor_run(ctx: &Ctx, streams: u64) -> BenchResult<f64> {
    with_store(ctx, 6, |store: PgEventStore| async move {
        fill(&store, streams).await?;
        let pool = store.pool().clone();
        let namespace = format!(
            "reactbench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let checkpoints = PgTables::new(pool.clone(), &namespace, NAME, SqlSchema::new())?;
        let result = async {
            checkpoints.migrate().await?;
            let runner = ProjectionRunner::new(store.clone());
            let reactor = Statements {
                statements: Repository::new(store.clone()),
            };
            let config = ProjectionConfig::new().with_progress(ProgressDisplay::Silent);
            let start = Instant::now();
            runner.add_reactor(reactor, checkpoints.clone(), config)?;
            let caught_up = runner.catch_up(CATCH_UP_TIMEOUT).await;
            let elapsed = start.elapsed();
            runner.shutdown().await;
            caught_up?;
            check(&store, streams).await?;
            BenchResult::Ok(streams as f64 / elapsed.as_secs_f64().max(1e-9))
        }
        .await;
        let dropped = drop_namespace(&pool, &namespace).await;
        let rate = result?;
        dropped?;
        Ok(rate)
    })
    .await
}

/// One timed run of the plain command path over a fresh store with the same log: the same
/// commands, one task; commands/s.
async fn command_run(ctx: &Ctx, streams: u64) -> BenchResult<f64> {
    with_store(ctx, 6, |store: PgEventStore| async move {
        fill(&store, streams).await?;
        let statements = Repository::<Statement, _>::new(store.clone());
        let commands: Vec<(String, Deposit)> = (0..streams)
            .map(|n| (account_id(n), Deposit(trigger(n))))
            .collect();
        let rate = timed(streams, async {
            for (id, command) in commands {
                statements
                    .execute(&id, command, &CommandContext::new())
                    .await?;
            }
            Ok(())
        })
        .await?;
        check(&store, streams).await?;
        Ok(rate)
    })
    .await
}

/// `pg.reactor`: `streams` trigger events, each answered by one command; the reactor and the
/// plain command path alternate run by run.
pub(crate) fn reactor(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let streams = ctx.sizes.streams;
        let mut m = Measured::new(streams);
        for _ in 0..ctx.runs {
            m.framework.push(reactor_run(ctx, streams).await?);
            m.baseline.push(command_run(ctx, streams).await?);
        }
        Ok(m)
    })
}
