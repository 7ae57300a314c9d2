//! The framework side of the projection rebuilds (`annals-projections`): the ledger
//! projections, run by a `ProjectionRunner` over the PostgreSQL store's global log.

use std::{path::Path, time::Duration, time::Instant};

use annals::{BoxError, DomainEvent, EventStore, RecordedEvent};
use annals_postgres::PgEventStore;
use annals_projections::{
    EventFilter, Generation, LookupKeys, ProgressDisplay, Projection, ProjectionConfig,
    ProjectionRunner, ReadModel, RedisBatch, RedisConnection, RedisReadModel, RunnerConfig,
    TantivyBatch, TantivyConfig, TantivyReadModel, WriteBatch,
};

use super::pg_store::{fill, with_store};
use crate::{
    BenchResult,
    env::Ctx,
    ledger::{Deposited, LedgerEvent},
    raw::{self, tantivy::Fields},
    workload::{self, Batch},
};

/// Events per read-model write, for the projection and its baseline alike (the runner's
/// default).
pub(crate) const BATCH: usize = 5_000;

/// The one lookup per event of both projections: the account's first counterparty, kept on
/// its first deposit and read on every later one (as a projection would keep an account's
/// owner from its opening event).
pub(crate) fn first_counterparty<B: WriteBatch>(
    batch: &mut B,
    d: &Deposited,
) -> Result<String, BoxError> {
    let key = raw::redis::first_key(d);
    if let Some(first) = batch.lookups().get::<String>(&key)? {
        return Ok(first);
    }
    batch.lookups_mut().set(key, &d.counterparty)?;
    Ok(d.counterparty.clone())
}

/// Declares the lookup of [`first_counterparty`]: the account comes from the stream id, so
/// declaring costs no payload decode.
pub(crate) fn declare_first(event: &RecordedEvent, keys: &mut LookupKeys) {
    let stream = event.stream_id.as_str();
    let account = stream
        .split_once('-')
        .map_or(stream, |(_, account)| account);
    keys.add(raw::redis::first_key_of(account));
}

/// Balances in Redis: the same commands as [`raw::redis::add_commands`], with one lookup.
struct LedgerBalances;

impl Projection for LedgerBalances {
    type Model = RedisReadModel;

    fn name(&self) -> &str {
        "ledger-balances"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::domain::<LedgerEvent>()
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        declare_first(event, keys);
    }

    fn handle(&self, event: &RecordedEvent, batch: &mut RedisBatch) -> Result<(), BoxError> {
        let LedgerEvent::Deposited(d) = LedgerEvent::decode(event)?;
        let first = first_counterparty(batch, &d)?;
        batch.hset(&raw::redis::info_key(&d), "first_counterparty", &first);
        let account = raw::redis::account_key(&d);
        batch.hincrby(&account, "balance", d.amount);
        batch.hincrby(&account, "deposits", 1);
        batch.hset(
            &raw::redis::info_key(&d),
            "last_counterparty",
            &d.counterparty,
        );
        batch.zincrby(raw::redis::RANKING_KEY, &d.account, d.amount as f64);
        Ok(())
    }
}

/// Deposits searchable in tantivy: the same documents as [`raw::tantivy::index_directly`].
struct LedgerSearch {
    fields: Fields,
}

impl Projection for LedgerSearch {
    type Model = TantivyReadModel;

    fn name(&self) -> &str {
        "ledger-search"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::domain::<LedgerEvent>()
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        declare_first(event, keys);
    }

    fn handle(&self, event: &RecordedEvent, batch: &mut TantivyBatch) -> Result<(), BoxError> {
        let LedgerEvent::Deposited(d) = LedgerEvent::decode(event)?;
        let first = first_counterparty(batch, &d)?;
        let doc = raw::tantivy::document(&self.fields, &d, &first);
        batch.upsert(event.event_id.to_string(), doc);
        Ok(())
    }
}

/// Checks that the generation serving after a rebuild holds every event: a rebuild that
/// returned early must not count as fast.
trait Verify {
    async fn check(&self, batches: &[Batch]) -> BenchResult<()>;
    async fn serving(&self) -> BenchResult<Option<Generation>>;
}

impl Verify for RedisReadModel {
    async fn serving(&self) -> BenchResult<Option<Generation>> {
        Ok(self.view().await?.map(|v| v.generation()))
    }

    async fn check(&self, batches: &[Batch]) -> BenchResult<()> {
        let view = self.view().await?.ok_or("no generation serves")?;
        for b in batches {
            let Some(first) = b.events.first() else {
                continue;
            };
            let d: Deposited = first.payload.deserialize()?;
            let stored = view
                .field(&raw::redis::account_key(&d), "deposits")
                .await?
                .unwrap_or_default();
            if stored != b.events.len().to_string() {
                return Err(format!("{}: {stored:?} deposits after a rebuild", d.account).into());
            }
        }
        Ok(())
    }
}

impl Verify for TantivyReadModel {
    async fn serving(&self) -> BenchResult<Option<Generation>> {
        Ok(self.view()?.map(|v| v.generation()))
    }

    async fn check(&self, batches: &[Batch]) -> BenchResult<()> {
        let view = self.view()?.ok_or("no generation serves")?;
        super::pg_raw::check_count(view.num_docs(), workload::count(batches))
    }
}

fn config() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(BATCH)
        .with_page_size(BATCH)
        .with_progress(ProgressDisplay::Silent)
}

/// Fills a PostgreSQL store, builds the projection once (untimed), then times `runs`
/// blue/green rebuilds from position 0.
async fn rebuilds<P: Projection>(
    ctx: &Ctx,
    batches: &[Batch],
    runs: usize,
    projection: P,
    model: P::Model,
) -> BenchResult<Vec<f64>>
where
    P::Model: Verify + Clone,
{
    let verify = model.clone();
    let events = workload::count(batches);
    let name = projection.name().to_owned();
    with_store(ctx, 6, |store: PgEventStore| async move {
        fill(&store, batches).await?;
        let head = store.head_position().await?.ok_or("the log is empty")?;
        let runner = ProjectionRunner::new(store)
            .with_config(RunnerConfig::new().with_retire_grace(Duration::ZERO));
        runner.add(projection, model, config())?;
        let result = async {
            runner.wait_for(&name, head).await?;
            let mut out = Vec::with_capacity(runs);
            for _ in 0..runs {
                let before = verify.serving().await?;
                let start = Instant::now();
                let report = runner.rebuild(&name).await?;
                let elapsed = start.elapsed();
                let after = verify.serving().await?;
                if after == before || after != Some(report.generation) {
                    return Err(format!(
                        "the rebuild returned without switching generations \
                         (before {before:?}, after {after:?}, report {report:?})"
                    )
                    .into());
                }
                verify.check(batches).await?;
                out.push(events as f64 / elapsed.as_secs_f64().max(1e-9));
                // Let the retired generation's drop finish before the next run.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            BenchResult::Ok(out)
        }
        .await;
        runner.shutdown().await;
        result
    })
    .await
}

/// Redis rebuild, `runs` times after one fill of the log and one first build.
pub(crate) async fn redis(ctx: &Ctx, batches: &[Batch], runs: usize) -> BenchResult<Vec<f64>> {
    let namespace = format!("annals-bench-{}", uuid::Uuid::new_v4().simple());
    let connection = RedisConnection::single(&ctx.redis_url).await?;
    let model = RedisReadModel::with_namespace(connection, &namespace, LedgerBalances.name())?;
    let result = rebuilds(ctx, batches, runs, LedgerBalances, model).await;
    ctx.redis_cleanup(&format!("{{{namespace}:")).await?;
    result
}

/// tantivy rebuild, `runs` times after one fill of the log and one first build.
pub(crate) async fn tantivy(ctx: &Ctx, batches: &[Batch], runs: usize) -> BenchResult<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let (schema, fields) = raw::tantivy::schema();
    let model = open_index(dir.path(), schema, fields)?;
    rebuilds(ctx, batches, runs, LedgerSearch { fields }, model).await
}

fn open_index(
    root: &Path,
    schema: tantivy::schema::Schema,
    fields: Fields,
) -> BenchResult<TantivyReadModel> {
    let config = TantivyConfig::new().with_memory_budget(raw::tantivy::MEMORY_BUDGET);
    let model = TantivyReadModel::open(root, "ledger-search", schema, fields.id, config)?;
    debug_assert_eq!(model.projection(), "ledger-search");
    Ok(model)
}
