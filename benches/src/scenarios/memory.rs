//! In-memory store scenarios: the framework's own overhead, with no database in the way.

use std::{collections::HashMap, sync::Mutex};

use annals::{Aggregate, CommandContext, EventStore, InMemoryEventStore, Repository};
use futures::future::BoxFuture;

use crate::{
    BenchResult,
    env::Ctx,
    ledger::{Account, Deposit, Deposited, account_id},
    runner::{Measured, timed},
    workload::{self, Batch},
};

fn all_batches(ctx: &Ctx) -> Vec<Batch> {
    workload::many_streams(ctx.sizes.events, ctx.sizes.batch)
}

/// `memory.append.batched`: append calls of `batch` events into the in-memory store, against
/// pushing the same events into a locked `Vec`.
pub(crate) fn append_batched(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = all_batches(ctx);
        let events = workload::count(&batches);
        let mut m = Measured::new(events);
        for _ in 0..ctx.runs {
            let input = batches.clone();
            let store = InMemoryEventStore::new();
            let fw = timed(events, async {
                for b in input {
                    store.append(&b.stream, b.expected(), b.events).await?;
                }
                Ok(())
            })
            .await?;
            let input = batches.clone();
            let log = Mutex::new(Vec::new());
            let base = timed(events, async {
                for b in input {
                    let mut log = log.lock().map_err(|_| "poisoned")?;
                    for (i, event) in b.events.into_iter().enumerate() {
                        log.push((b.stream.clone(), b.first_version + i as u64, event));
                    }
                }
                Ok(())
            })
            .await?;
            push(&mut m, fw, base);
        }
        Ok(m)
    })
}

fn push(m: &mut Measured, fw: f64, base: f64) {
    m.framework.push(fw);
    m.baseline.push(base);
}

/// `memory.replay`: the whole log read and decoded into typed events, against decoding the
/// same payload texts with serde directly.
pub(crate) fn replay(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let batches = all_batches(ctx);
        let events = workload::count(&batches);
        let payloads: Vec<String> = batches
            .iter()
            .flat_map(|b| b.events.iter().map(|e| e.payload.as_str().to_owned()))
            .collect();
        let store = InMemoryEventStore::new();
        for b in batches {
            store.append(&b.stream, b.expected(), b.events).await?;
        }
        let mut m = Measured::new(events);
        for _ in 0..ctx.runs {
            let fw = super::typed_replay(&store, events).await?;
            let base = timed(events, async {
                let mut sum = 0i64;
                for p in &payloads {
                    let d: Deposited = serde_json::from_str(p)?;
                    sum = sum.wrapping_add(d.amount);
                }
                std::hint::black_box(sum);
                Ok(())
            })
            .await?;
            push(&mut m, fw, base);
        }
        Ok(m)
    })
}

/// `memory.command`: one deposit command per stream through a cached [`Repository`] over
/// the in-memory store, against handling and applying the same commands on a `HashMap` of
/// states.
pub(crate) fn command(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let streams = ctx.sizes.streams;
        let mut m = Measured::new(streams);
        let context = CommandContext::new();
        for run in 0..ctx.runs as u64 {
            let repo = Repository::<Account, _>::new(InMemoryEventStore::new())
                .with_cache(streams as usize);
            for n in 0..streams {
                let cmd = Deposit(Deposited::sample(n, n));
                repo.execute(&account_id(n), cmd, &context).await?;
            }
            let fw = timed(streams, async {
                for n in 0..streams {
                    let cmd = Deposit(Deposited::sample(n, n + run));
                    repo.execute(&account_id(n), cmd, &context).await?;
                }
                Ok(())
            })
            .await?;
            let mut states: HashMap<String, Account> = HashMap::new();
            for n in 0..streams {
                states.entry(account_id(n)).or_default();
            }
            let base = timed(streams, async {
                for n in 0..streams {
                    let id = account_id(n);
                    let state = states.get_mut(&id).ok_or("missing state")?;
                    let events = state.handle(Deposit(Deposited::sample(n, n + run)))?;
                    for e in &events {
                        let encoded = e.new_event().with_metadata(context.metadata());
                        std::hint::black_box(&encoded);
                        state.apply(e);
                    }
                }
                Ok(())
            })
            .await?;
            push(&mut m, fw, base);
        }
        Ok(m)
    })
}

/// An account in the in-process read model.
#[derive(Debug, Clone, Default)]
struct AccountDoc {
    balance: i64,
    deposits: u64,
    first_counterparty: String,
    last_counterparty: String,
}

/// The ledger balances, in process: one document per account, with one lookup per event.
struct MemoryBalances;

impl annals_projections::Projection for MemoryBalances {
    type Model = annals_projections::MemoryReadModel<AccountDoc>;

    fn name(&self) -> &str {
        "ledger-balances"
    }

    fn filter(&self) -> annals_projections::EventFilter {
        annals_projections::EventFilter::domain::<crate::ledger::LedgerEvent>()
    }

    fn lookups(&self, event: &annals::RecordedEvent, keys: &mut annals_projections::LookupKeys) {
        super::projection_run::declare_first(event, keys);
    }

    fn handle(
        &self,
        event: &annals::RecordedEvent,
        batch: &mut annals_projections::MemoryBatch<AccountDoc>,
    ) -> Result<(), annals::BoxError> {
        use annals::DomainEvent;
        let crate::ledger::LedgerEvent::Deposited(d) = crate::ledger::LedgerEvent::decode(event)?;
        let first = super::projection_run::first_counterparty(batch, &d)?;
        batch.update(d.account, |doc| {
            doc.balance += d.amount;
            doc.deposits += 1;
            doc.first_counterparty = first;
            doc.last_counterparty = d.counterparty;
        });
        Ok(())
    }
}

/// `projection.memory.rebuild`: the ledger balances rebuilt from position 0 into the
/// in-process read model over the in-memory store, against the same folding into a
/// `HashMap` of the same events read and decoded from the same store.
pub(crate) fn projection_rebuild(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    use annals::{DomainEvent, LogRead};
    use annals_projections::{
        MemoryReadModel, ProgressDisplay, ProjectionConfig, ProjectionRunner, RunnerConfig,
    };
    use futures::TryStreamExt;
    Box::pin(async move {
        let batches = all_batches(ctx);
        let events = workload::count(&batches);
        let accounts = batches
            .iter()
            .map(|b| b.stream.clone())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let store = InMemoryEventStore::new();
        for b in batches {
            store.append(&b.stream, b.expected(), b.events).await?;
        }
        let head = store.head_position().await?.ok_or("the log is empty")?;
        let model = MemoryReadModel::new("ledger-balances")?;
        let runner = ProjectionRunner::new(store.clone())
            .with_config(RunnerConfig::new().with_retire_grace(std::time::Duration::ZERO));
        let config = ProjectionConfig::new()
            .with_batch_size(super::projection_run::BATCH)
            .with_page_size(super::projection_run::BATCH)
            .with_progress(ProgressDisplay::Silent);
        runner.add(MemoryBalances, model.clone(), config)?;
        runner.wait_for("ledger-balances", head).await?;
        let mut m = Measured::new(events);
        for _ in 0..ctx.runs {
            let fw = timed(events, async {
                runner.rebuild("ledger-balances").await?;
                let view = model.view().ok_or("no generation serves")?;
                let deposits: u64 = view.with(|docs| docs.values().map(|d| d.deposits).sum());
                super::pg_raw::check_count(deposits, events)?;
                if view.len() != accounts {
                    return Err(format!("{} accounts, {accounts} expected", view.len()).into());
                }
                Ok(())
            })
            .await?;
            let base = timed(events, async {
                let mut docs: HashMap<String, AccountDoc> = HashMap::new();
                let mut first: HashMap<String, String> = HashMap::new();
                let mut read = store.read_all(LogRead::from_start().with_page_size(5_000));
                while let Some(recorded) = read.try_next().await? {
                    let crate::ledger::LedgerEvent::Deposited(d) =
                        crate::ledger::LedgerEvent::decode(&recorded)?;
                    let f = first
                        .entry(d.account.clone())
                        .or_insert_with(|| d.counterparty.clone())
                        .clone();
                    let doc = docs.entry(d.account).or_default();
                    doc.balance += d.amount;
                    doc.deposits += 1;
                    doc.first_counterparty = f;
                    doc.last_counterparty = d.counterparty;
                }
                super::pg_raw::check_count(docs.values().map(|d| d.deposits).sum(), events)
            })
            .await?;
            push(&mut m, fw, base);
        }
        runner.shutdown().await;
        Ok(m)
    })
}
