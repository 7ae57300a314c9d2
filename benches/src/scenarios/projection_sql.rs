//! `projection.sql.rebuild` and `projection.sql.entries.rebuild`: a ledger read model
//! rebuilt from position 0 into PostgreSQL tables (`annals-projections-sql`) in the store's
//! database, beside the same rows written directly with batched `INSERT … ON CONFLICT DO
//! UPDATE`. The balances coalesce (about one row per 1,000 events), so their baseline writes
//! almost nothing and their ratio measures the log read; the entries (one row per event)
//! measure the write path.

use std::time::{Duration, Instant};

use annals::{BoxError, DomainEvent, EventStore, RecordedEvent};
use annals_postgres::PgEventStore;
use annals_projections::{
    EventFilter, LookupKeys, ProgressDisplay, Projection, ProjectionConfig, ProjectionRunner,
    RunnerConfig,
};
use annals_projections_sql::{PgTables, SqlBatch, SqlRow, SqlSchema};
use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use super::{
    pg_raw::check_count,
    pg_store::{fill, with_store},
    projection_run::{BATCH, declare_first, first_counterparty},
};
use crate::{
    BenchResult,
    env::Ctx,
    ledger::{Deposited, LedgerEvent},
    raw,
    runner::{Measured, timed},
    workload::{self, Batch},
};

const NAME: &str = "ledger_balances";
const ENTRIES: &str = "ledger_entries";

/// The ledger in SQL tables, one lookup per event (the account's first counterparty):
/// - [`Model::Balances`]: per account its balance, deposits, first and last counterparty,
///   one upsert per event (coalesced per batch);
/// - [`Model::Entries`]: one row per deposit, keyed by its event id.
struct SqlLedger(Model);

impl Projection for SqlLedger {
    type Model = PgTables;

    fn name(&self) -> &str {
        self.0.name()
    }

    fn filter(&self) -> EventFilter {
        EventFilter::domain::<LedgerEvent>()
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        declare_first(event, keys);
    }

    fn handle(&self, event: &RecordedEvent, batch: &mut SqlBatch) -> Result<(), BoxError> {
        let LedgerEvent::Deposited(d) = LedgerEvent::decode(event)?;
        let first = first_counterparty(batch, &d)?;
        let (table, row) = match self.0 {
            Model::Balances => (
                "accounts",
                SqlRow::new()
                    .key("id", d.account)
                    .add("balance", d.amount)
                    .add("deposits", 1)
                    .set("first_counterparty", first)
                    .set("last_counterparty", d.counterparty),
            ),
            Model::Entries => (
                "entries",
                SqlRow::new()
                    .key("id", event.event_id)
                    .set("account", d.account)
                    .set("amount", d.amount)
                    .set("counterparty", d.counterparty)
                    .set("first_counterparty", first),
            ),
        };
        batch.upsert(table, row)?;
        Ok(())
    }
}

/// Which read model a run rebuilds.
#[derive(Debug, Clone, Copy)]
enum Model {
    /// The balances: one row per account.
    Balances,
    /// The entries: one row per event.
    Entries,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Self::Balances => NAME,
            Self::Entries => ENTRIES,
        }
    }

    fn schema(self) -> SqlSchema {
        match self {
            Self::Balances => SqlSchema::new().table("accounts", raw::sql::ACCOUNTS_DDL),
            Self::Entries => SqlSchema::new().table("entries", raw::sql::ENTRIES_DDL),
        }
    }

    fn add(self, runner: &ProjectionRunner<PgEventStore>, model: PgTables) -> BenchResult<()> {
        let config = ProjectionConfig::new()
            .with_batch_size(BATCH)
            .with_page_size(BATCH)
            .with_progress(ProgressDisplay::Silent);
        runner.add(SqlLedger(self), model, config)?;
        Ok(())
    }

    /// The baseline: the same rows written directly, in batches of the runner's size.
    async fn write_raw(self, pool: &PgPool, rows: &[(Uuid, Deposited)]) -> BenchResult<()> {
        match self {
            Self::Balances => raw::sql::write_batched(pool, rows, BATCH).await,
            Self::Entries => raw::sql::write_entries_batched(pool, rows, BATCH).await,
        }
    }

    /// The events the baseline's table accounts for.
    async fn raw_stored(self, pool: &PgPool) -> BenchResult<u64> {
        match self {
            Self::Balances => raw::sql::deposits_stored(pool).await,
            Self::Entries => raw::sql::entries_stored(pool).await,
        }
    }

    /// Checks that the serving generation holds every event.
    async fn check(self, model: &PgTables, batches: &[Batch]) -> BenchResult<()> {
        match self {
            Self::Balances => check(model, batches).await,
            Self::Entries => {
                let view = model.view().await?.ok_or("no generation serves")?;
                let (rows,): (i64,) =
                    sqlx::query_as(AssertSqlSafe(view.sql("SELECT count(*) FROM {entries}")?))
                        .fetch_one(model.pool())
                        .await?;
                check_count(u64::try_from(rows)?, workload::count(batches))
            }
        }
    }
}

/// Checks that the serving generation holds every event, one row per account.
async fn check(model: &PgTables, batches: &[Batch]) -> BenchResult<()> {
    let view = model.view().await?.ok_or("no generation serves")?;
    let (rows, sum): (i64, Option<i64>) = sqlx::query_as(AssertSqlSafe(
        view.sql("SELECT count(*), sum(deposits)::bigint FROM {accounts}")?,
    ))
    .fetch_one(model.pool())
    .await?;
    check_count(u64::try_from(sum.unwrap_or(0))?, workload::count(batches))?;
    if rows as usize != batches.len() {
        return Err(format!("{rows} accounts, {} expected", batches.len()).into());
    }
    Ok(())
}

/// Drops the namespace's schemas (its metadata and every generation).
pub(crate) async fn drop_namespace(pool: &PgPool, namespace: &str) -> BenchResult<()> {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(namespace)
            .fetch_all(pool)
            .await?;
    for (name,) in names {
        // Names of our own namespace (a uuid), never user input.
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
        )))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// The framework side: fills a store, builds once (untimed), then times `runs` rebuilds
/// from position 0 into a new generation of `PgTables` in the store's database.
async fn rebuilds(
    ctx: &Ctx,
    batches: &[Batch],
    runs: usize,
    which: Model,
) -> BenchResult<Vec<f64>> {
    let events = workload::count(batches);
    with_store(ctx, 6, |store: PgEventStore| async move {
        fill(&store, batches).await?;
        let head = store.head_position().await?.ok_or("the log is empty")?;
        let pool = store.pool().clone();
        let namespace = format!(
            "sqlbench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let name = which.name();
        let model = PgTables::new(pool.clone(), &namespace, name, which.schema())?;
        let runner = ProjectionRunner::new(store)
            .with_config(RunnerConfig::new().with_retire_grace(Duration::ZERO));
        which.add(&runner, model.clone())?;
        let result = async {
            runner.wait_for(name, head).await?;
            which.check(&model, batches).await?;
            let mut out = Vec::with_capacity(runs);
            for _ in 0..runs {
                let before = model.view().await?.map(|v| v.generation());
                let start = Instant::now();
                let report = runner.rebuild(name).await?;
                let elapsed = start.elapsed();
                let after = model.view().await?.map(|v| v.generation());
                if after == before || after != Some(report.generation) {
                    return Err(format!(
                        "the rebuild returned without switching generations \
                         (before {before:?}, after {after:?}, report {report:?})"
                    )
                    .into());
                }
                which.check(&model, batches).await?;
                out.push(events as f64 / elapsed.as_secs_f64().max(1e-9));
                // Let the retired generation's drop finish before the next run.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            BenchResult::Ok(out)
        }
        .await;
        runner.shutdown().await;
        let dropped = drop_namespace(&pool, &namespace).await;
        let out = result?;
        dropped?;
        Ok(out)
    })
    .await
}

/// `projection.sql.rebuild`: the ledger balances rebuilt from position 0 into `PgTables`,
/// against the same rows written with raw batched upserts, batches of the same size.
pub(crate) fn rebuild(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(measure(ctx, Model::Balances))
}

/// `projection.sql.entries.rebuild`: one row per deposit rebuilt from position 0 into
/// `PgTables`, against the same rows written with raw batched upserts, batches of the same
/// size.
pub(crate) fn entries(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(measure(ctx, Model::Entries))
}

/// Times `which` rebuilt by the runner, then written by its raw baseline, `ctx.runs` times
/// each.
async fn measure(ctx: &Ctx, which: Model) -> BenchResult<Measured> {
    let batches = workload::many_streams(ctx.sizes.events, ctx.sizes.batch);
    let events = workload::count(&batches);
    let rows = workload::deposits(&batches)?;
    let mut m = Measured::new(events);
    m.framework = rebuilds(ctx, &batches, ctx.runs, which).await?;
    let schema = ctx.pg_schema(2).await?;
    let result = async {
        for _ in 0..ctx.runs {
            raw::sql::create_tables(&schema.pool).await?;
            let rate = timed(events, which.write_raw(&schema.pool, &rows)).await?;
            check_count(which.raw_stored(&schema.pool).await?, events)?;
            m.baseline.push(rate);
        }
        BenchResult::Ok(())
    }
    .await;
    schema.drop().await?;
    result?;
    Ok(m)
}
