//! The framework side of the PostgreSQL scenarios (`annals-postgres`).

use annals::{Aggregate, DomainEvent, EventStore, Payload, Repository, Snapshot};
use annals_postgres::PgEventStore;
use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;

use super::pg_raw::check_count;
use crate::{
    BenchResult,
    commands::new_store,
    env::Ctx,
    ledger::{Account, LedgerEvent, SnapshottedAccount, account_id},
    runner::timed,
    workload::{self, Batch},
};

/// The store's payload column type (`text`: it keeps the JSON as written), used for the
/// COPY baseline's table so both write the same bytes.
pub(crate) const PAYLOAD_TYPE: &str = "text";

/// Runs `work` on a fresh store and drops its schema afterwards, whatever happened.
pub(crate) async fn with_store<T, F, Fut>(ctx: &Ctx, connections: u32, work: F) -> BenchResult<T>
where
    F: FnOnce(PgEventStore) -> Fut,
    Fut: Future<Output = BenchResult<T>>,
{
    let store = new_store(&ctx.database_url, connections).await?;
    let result = work(store.clone()).await;
    store.drop_schema().await?;
    store.pool().close().await;
    result
}

/// Appends the batches, four calls at a time (an untimed fill).
pub(crate) async fn fill(store: &PgEventStore, batches: &[Batch]) -> BenchResult<()> {
    futures::stream::iter(batches.iter().cloned())
        .map(|b| async move { store.append(&b.stream, b.expected(), b.events).await })
        .buffer_unordered(4)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// Batched append, one writer, into a fresh schema; events/s.
pub(crate) async fn append_batched(ctx: &Ctx, batches: &[Batch]) -> BenchResult<f64> {
    let input: Vec<Batch> = batches.to_vec();
    with_store(ctx, 4, |store| async move {
        timed(workload::count(&input), async {
            for b in input {
                store.append(&b.stream, b.expected(), b.events).await?;
            }
            Ok(())
        })
        .await
    })
    .await
}

/// A fresh store filled with `batches` (and, with `snapshot`, the snapshot a policy would
/// have taken [`SNAPSHOT_TAIL`] events before the end of the first batch's stream). Drop it
/// with [`drop_store`].
pub(crate) async fn filled(
    ctx: &Ctx,
    batches: &[Batch],
    snapshot: bool,
) -> BenchResult<PgEventStore> {
    let store = new_store(&ctx.database_url, 4).await?;
    let prepared = async {
        let one_stream = batches.windows(2).all(|w| w[0].stream == w[1].stream);
        if one_stream {
            for b in batches {
                store
                    .append(&b.stream, b.expected(), b.events.clone())
                    .await?;
            }
        } else {
            fill(&store, batches).await?;
        }
        if snapshot {
            save_snapshot(&store, batches).await?;
        }
        crate::env::settle(store.pool(), "events, snapshots").await?;
        BenchResult::Ok(())
    }
    .await;
    match prepared {
        Ok(()) => Ok(store),
        Err(e) => {
            drop_store(store).await?;
            Err(e)
        }
    }
}

/// Drops the store's schema and closes its pool.
pub(crate) async fn drop_store(store: PgEventStore) -> BenchResult<()> {
    store.drop_schema().await?;
    store.pool().close().await;
    Ok(())
}

/// How far before the end of the stream the snapshot is taken.
pub(crate) const SNAPSHOT_TAIL: u64 = 100;

/// Saves the snapshot an `EveryNEvents` policy would have taken `SNAPSHOT_TAIL` events ago.
async fn save_snapshot(store: &PgEventStore, batches: &[Batch]) -> BenchResult<()> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    let total = workload::count(batches);
    let at = total.saturating_sub(SNAPSHOT_TAIL).max(1);
    let mut state = Account::default();
    for b in batches {
        for (i, e) in b.events.iter().enumerate() {
            if b.first_version + i as u64 <= at {
                state.apply(&LedgerEvent::from_payload("Deposited", e.payload.as_str())?);
            }
        }
    }
    store
        .save_snapshot(Snapshot {
            stream_id: first.stream.clone(),
            stream_version: at,
            schema_version: Account::SNAPSHOT_VERSION,
            payload: Payload::from_serialize(&state)?,
            taken_at: OffsetDateTime::now_utc(),
        })
        .await?;
    Ok(())
}

/// `loads` timed loads of the aggregate of account 1 through the repository, as an
/// [`Account`] (which keeps no snapshots) or, with `snapshot`, as a [`SnapshottedAccount`];
/// events/s.
pub(crate) async fn load(
    store: &PgEventStore,
    events: u64,
    loads: u64,
    snapshot: bool,
) -> BenchResult<f64> {
    let plain = Repository::<Account, _>::new(store.clone());
    let snapshotted = Repository::<SnapshottedAccount, _>::new(store.clone());
    timed(events * loads, async {
        for _ in 0..loads {
            let deposits = if snapshot {
                snapshotted.load(&account_id(1)).await?.state.0.deposits
            } else {
                plain.load(&account_id(1)).await?.state.deposits
            };
            check_count(deposits, events)?;
        }
        Ok(())
    })
    .await
}
