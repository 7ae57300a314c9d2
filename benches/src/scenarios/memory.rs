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
