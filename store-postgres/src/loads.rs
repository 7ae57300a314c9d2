//! Concurrent loads of different aggregates read together: one statement for many streams.
//!
//! A command loads its aggregate with one short statement ([`crate::aggregate`]), whose cost on
//! both sides is mostly the statement's own (a round trip, a wake-up, the executor's start and
//! end), not its few rows. While few calls are in the store (no more than its direct
//! connections, [`Direct::serves`]), each load reads alone on a direct connection: a batch of
//! so few would only make each wait for the one before. When many commands run at once, their
//! loads are gathered: the first caller to find no batch in flight reads its own stream at
//! once, as a lone command does; callers that arrive while a batch is in flight queue, and when
//! a batch ends, the first queued caller leads the next one, for itself and everyone queued
//! behind it, in one statement (a `LATERAL` read of each stream's first page). Beside a batch
//! in flight, a second starts as soon as [`MIN_SECOND_BATCH`] loads are at hand, rather than
//! wait for the first to end ([`MAX_LEADERS`] at most). Each caller gets its own rows back and
//! decodes them on its own task. No task of the store's runs it: a lone load pays nothing for
//! the batching.
//!
//! A caller whose future is dropped while queued is skipped; a leader dropped mid-batch drops
//! its followers' answers, and they read again; a batch that fails lets each follower read
//! alone, so every error is its own call's.

use std::{collections::VecDeque, sync::Mutex};

use annals::StreamId;
use futures::FutureExt;
use sqlx::{Row, postgres::PgRow};
use tokio::sync::oneshot;

use crate::{bounded::Db, direct::Direct, error::backend, read::stream_query};

/// Batches in flight at once: while one is read, the next gathers, and a second starts
/// beside it only with [`MIN_SECOND_BATCH`] loads.
///
/// A second batch for any load that queued (so two leaders unconditionally) read only two
/// fifths of the loads in batches at 8 tasks, against two thirds with one leader, and the
/// 64-task command path used a quarter more CPU a command. One leader alone made loads wait
/// for the batch in flight: 320-350 µs a load at 8 tasks against the hand-written path's
/// 270-290.
const MAX_LEADERS: usize = 2;

/// The fewest loads (the caller's and those queued) a batch starts with while another is in
/// flight. Measured with `command_cpu`, uncached, 8 tasks, alternating in the same minutes
/// (store-postgres/PERFORMANCE.md, "Two groups in flight do not share a flush"): 0.82-1.03
/// of the hand-written path (means 0.93 and 0.98 in two series of 9-10 rounds) against
/// 0.72-0.98 (means 0.89 and 0.90) with one batch in flight; with 2 loads, mean 0.93; with
/// 4, 0.92. A load took 241-269 µs against 316-358. At 64 tasks, unchanged.
const MIN_SECOND_BATCH: usize = 3;

/// The most streams one statement reads.
const MAX_BATCH: usize = 64;

/// What loading an aggregate reads: the first page of its stream, for folding.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) stream: StreamId,
    /// The first version read.
    pub(crate) from: u64,
    /// The most rows read.
    pub(crate) want: usize,
}

/// The statement reading a batch of `size` loads (a power of two): the folding columns of
/// each stream's rows ([`crate::read::fold_columns`]) in version order, and the load's place
/// `k` (1-based), from a `VALUES` list of `(stream, first version, version after)` bound one
/// parameter each.
///
/// Not one statement over arrays (`unnest($1::text[], ...)`): PostgreSQL estimates an
/// array parameter at 10 elements in a generic plan and at its true length in a custom
/// one, so with batches of a few loads the custom plans always looked cheaper, and every
/// batch was planned anew (a tenth of the server's time at 8 tasks). A `VALUES` list of
/// fixed length is estimated alike either way, so each statement is planned a few times
/// per connection, then runs its cached plan. Batches are padded up to the next size with
/// loads that read nothing, so [`BATCH_SIZES`] statements serve every batch.
fn batch_statement(size: usize) -> String {
    // The first row names the columns' types; the others take them from it.
    let mut sql = String::from(
        "SELECT e.tx, e.sequence, e.stream_version, e.event_type, \
         e.schema_version, e.payload, s.k \
         FROM (VALUES ($1::text, $2::bigint, $3::bigint, 1)",
    );
    for k in 1..size {
        let p = 3 * k;
        sql.push_str(&format!(
            ", (${}, ${}, ${}, {})",
            p + 1,
            p + 2,
            p + 3,
            k + 1
        ));
    }
    sql.push_str(concat!(
        ") AS s(id, from_v, upto, k) CROSS JOIN LATERAL (SELECT ",
        crate::read::fold_columns!(),
        " FROM events WHERE stream_id = s.id AND stream_version >= s.from_v \
           AND stream_version < s.upto ORDER BY stream_version) AS e \
         ORDER BY s.k, e.stream_version"
    ));
    sql
}

/// How many batch statements there are: sizes 2, 4, ... up to [`MAX_BATCH`].
const BATCH_SIZES: usize = MAX_BATCH.trailing_zeros() as usize;

/// The batch statements, by size: `BATCHES[i]` reads `2^(i+1)` loads.
static BATCHES: std::sync::LazyLock<[String; BATCH_SIZES]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|i| batch_statement(2 << i)));

/// The statement for a batch of `loads` loads (2 to [`MAX_BATCH`]) and its size.
fn batch_for(loads: usize) -> (&'static str, usize) {
    let size = loads.max(2).next_power_of_two().min(MAX_BATCH);
    let i = size.trailing_zeros() as usize - 1;
    (BATCHES[i].as_str(), size)
}

/// What a queued caller is told.
enum Turn {
    /// Its rows.
    Rows(Vec<PgRow>),
    /// Lead the next batch (the leader's place passes to it).
    Lead,
    /// The batch failed: read alone.
    Alone,
}

/// What [`Loads::join`] made of a caller.
enum Joined {
    /// Lead a batch, with these followers.
    Lead(Vec<Waiter>),
    /// Wait for the answer, or the lead.
    Queued(oneshot::Receiver<Turn>),
}

struct Waiter {
    load: Load,
    reply: oneshot::Sender<Turn>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiter>,
    leaders: usize,
}

/// The loads of one store.
#[derive(Default)]
pub(crate) struct Loads {
    state: Mutex<State>,
}

impl std::fmt::Debug for Loads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loads").finish_non_exhaustive()
    }
}

impl Loads {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change under the lock is one push, pop or counter step: a poisoned lock
        // still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows of `load`: read at once, or in a batch with other callers' loads.
    pub(crate) async fn read(
        &self,
        db: &Db,
        direct: Option<&Direct>,
        load: Load,
    ) -> annals::Result<Vec<PgRow>> {
        let loading = direct.map(Direct::enter_load);
        if let (Some(direct), Some(loading)) = (direct, &loading)
            && direct.serves(loading.at)
        {
            return alone(db, Some(direct), &load).await;
        }
        // Boxed apart (the load stays counted in `loading` meanwhile): a lone command reads
        // alone, and the batches' state would otherwise make its future too large for the
        // allocator's per-thread cache.
        self.gathered(db, direct, load).boxed().await
    }

    /// [`read`](Self::read) with other callers: queued for a batch, or leading one.
    async fn gathered(
        &self,
        db: &Db,
        direct: Option<&Direct>,
        load: Load,
    ) -> annals::Result<Vec<PgRow>> {
        loop {
            let rx = match self.join(&load) {
                Joined::Lead(followers) => return self.lead(db, direct, load, followers).await,
                Joined::Queued(rx) => rx,
            };
            let mut waiting = Waiting {
                loads: self,
                rx: Some(rx),
            };
            let turn = match waiting.rx.as_mut() {
                Some(rx) => rx.await,
                None => continue,
            };
            waiting.rx = None;
            match turn {
                Ok(Turn::Rows(rows)) => return Ok(rows),
                Ok(Turn::Lead) => {
                    let followers = self.followers();
                    return self.lead(db, direct, load, followers).await;
                }
                Ok(Turn::Alone) => return alone(db, direct, &load).await,
                // The leader was dropped with this caller's place: queue again.
                Err(_) => {}
            }
        }
    }

    /// Leads a batch (with the callers queued so far), or queues `load` for the next one.
    fn join(&self, load: &Load) -> Joined {
        let mut state = self.state();
        if leads(state.leaders, state.queue.len()) {
            state.leaders += 1;
            return Joined::Lead(take_batch(&mut state.queue));
        }
        let (reply, rx) = oneshot::channel();
        state.queue.push_back(Waiter {
            load: load.clone(),
            reply,
        });
        Joined::Queued(rx)
    }

    /// Reads `load` and the followers' loads in one statement (or `load` alone), answers the
    /// followers, and passes the lead on.
    async fn lead(
        &self,
        db: &Db,
        direct: Option<&Direct>,
        load: Load,
        followers: Vec<Waiter>,
    ) -> annals::Result<Vec<PgRow>> {
        let _lead = Leading(self);
        if followers.is_empty() {
            return alone(db, direct, &load).await;
        }
        let mut loads = Vec::with_capacity(followers.len() + 1);
        loads.push(&load);
        loads.extend(followers.iter().map(|w| &w.load));
        match batch(db, &loads).await {
            Ok(mut per_load) => {
                for (waiter, rows) in followers.into_iter().zip(per_load.drain(1..)) {
                    let _ = waiter.reply.send(Turn::Rows(rows));
                }
                Ok(per_load.pop().unwrap_or_default())
            }
            Err(_) => {
                for waiter in followers {
                    let _ = waiter.reply.send(Turn::Alone);
                }
                alone(db, direct, &load).await
            }
        }
    }

    /// The callers queued for the batch a caller told to lead reads.
    fn followers(&self) -> Vec<Waiter> {
        take_batch(&mut self.state().queue)
    }

    /// A batch ended (or its leader was dropped): the first queued caller still waiting leads
    /// the next one, or there is one leader fewer.
    fn pass_lead(&self) {
        let mut state = self.state();
        while let Some(waiter) = state.queue.pop_front() {
            if waiter.reply.send(Turn::Lead).is_ok() {
                return;
            }
        }
        state.leaders = state.leaders.saturating_sub(1);
    }
}

/// Whether a caller that finds `leaders` batches in flight and `queued` callers waiting
/// leads a batch now.
fn leads(leaders: usize, queued: usize) -> bool {
    leaders == 0 || (leaders < MAX_LEADERS && queued + 1 >= MIN_SECOND_BATCH)
}

/// Up to [`MAX_BATCH`]` - 1` queued callers still waiting.
fn take_batch(queue: &mut VecDeque<Waiter>) -> Vec<Waiter> {
    let mut batch = Vec::new();
    while batch.len() < MAX_BATCH - 1 {
        match queue.pop_front() {
            Some(waiter) if !waiter.reply.is_closed() => batch.push(waiter),
            Some(_) => {}
            None => break,
        }
    }
    batch
}

/// Passes the lead on when the leader's batch ends or its future is dropped.
struct Leading<'a>(&'a Loads);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.pass_lead();
    }
}

/// A queued caller: dropped while told to lead, it passes the lead on.
struct Waiting<'a> {
    loads: &'a Loads,
    rx: Option<oneshot::Receiver<Turn>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take()
            && let Ok(Turn::Lead) = rx.try_recv()
        {
            self.loads.pass_lead();
        }
    }
}

/// One load's statement, alone: on the direct connection when it is idle.
async fn alone(db: &Db, direct: Option<&Direct>, load: &Load) -> annals::Result<Vec<PgRow>> {
    let id = load.stream.as_str();
    let statement = async |c: &mut sqlx::PgConnection| {
        stream_query(id, load.from, true, true, load.want)
            .fetch_all(c)
            .await
    };
    if let Some(direct) = direct
        && let Some(read) = direct.read(db, "reading an aggregate", statement).await
    {
        return read;
    }
    db.read("reading an aggregate", statement).await
}

/// The rows of each of `loads`, in order, from one statement.
async fn batch(db: &Db, loads: &[&Load]) -> annals::Result<Vec<Vec<PgRow>>> {
    let (sql, size) = batch_for(loads.len());
    let rows: Vec<PgRow> = db
        .read("reading aggregates", async |c| {
            let mut query = sqlx::query(sql);
            for load in loads {
                query = query
                    .bind(load.stream.as_str())
                    .bind(i64::try_from(load.from).unwrap_or(i64::MAX))
                    .bind(
                        i64::try_from(load.from.saturating_add(load.want as u64))
                            .unwrap_or(i64::MAX),
                    );
            }
            // The padding: no stream is named "", and no version is below 1.
            for _ in loads.len()..size {
                query = query.bind("").bind(1i64).bind(1i64);
            }
            query.fetch_all(c).await
        })
        .await?;
    let mut per_load: Vec<Vec<PgRow>> = (0..loads.len()).map(|_| Vec::new()).collect();
    for row in rows {
        let k: i32 = row.try_get_unchecked(6).map_err(backend)?;
        let slot = usize::try_from(k - 1)
            .ok()
            .and_then(|i| per_load.get_mut(i))
            .ok_or_else(|| crate::error::internal(false, "a batch row names no load"))?;
        slot.push(row);
    }
    Ok(per_load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_batch_starts_only_with_enough_loads() {
        // No batch in flight: the caller reads at once, alone or with whoever queued.
        assert!(leads(0, 0));
        assert!(leads(0, 5));
        // Beside one batch: only once the caller and those queued make the least batch.
        for queued in 0..MIN_SECOND_BATCH - 1 {
            assert!(!leads(1, queued), "{queued} queued");
        }
        assert!(leads(1, MIN_SECOND_BATCH - 1));
        // Never beyond the most batches in flight.
        assert!(!leads(MAX_LEADERS, 100));
    }

    #[tokio::test]
    async fn beside_a_batch_in_flight_the_third_load_leads_the_queued_two() {
        let loads = Loads::default();
        let load = |n: u64| Load {
            stream: StreamId::try_from(format!("account-{n}")).unwrap_or_else(|e| panic!("{e}")),
            from: 1,
            want: 10,
        };
        // The first leads; its batch is in flight until `first` is dropped.
        let Joined::Lead(followers) = loads.join(&load(0)) else {
            panic!("the first load must lead");
        };
        assert!(followers.is_empty());
        let first = Leading(&loads);
        // The next ones queue, until a third is at hand.
        let mut queued = Vec::new();
        for n in 1..MIN_SECOND_BATCH as u64 {
            match loads.join(&load(n)) {
                Joined::Queued(rx) => queued.push(rx),
                Joined::Lead(_) => panic!("load {n} must queue"),
            }
        }
        let Joined::Lead(second) = loads.join(&load(99)) else {
            panic!("the load that makes the least batch must lead");
        };
        assert_eq!(
            second
                .iter()
                .map(|w| w.load.stream.as_str())
                .collect::<Vec<_>>(),
            ["account-1", "account-2"]
        );
        // Two batches in flight: the next queues whatever is queued.
        assert!(matches!(loads.join(&load(100)), Joined::Queued(_)));
        drop(second);
        drop(first);
    }

    #[test]
    fn every_batch_has_a_statement_of_its_size_or_the_next() {
        for loads in 1..=MAX_BATCH {
            let (sql, size) = batch_for(loads);
            assert!(size >= loads && size <= MAX_BATCH && size.is_power_of_two());
            assert!(sql.contains(&format!("${}, {size})", 3 * size)));
            assert!(!sql.contains(&format!("${}", 3 * size + 1)));
        }
    }
}
