//! Group commit: a few background writers take the append calls queued by every handle of a
//! store and run as many as fit in one transaction, in one round trip: one plain statement
//! when each call appends to a stream of its own (`batch.rs`), else the `append_group`
//! function, which also answers whatever that statement did not store.
//!
//! Each call keeps its own result and its own conflict: the database checks the expected
//! versions of the whole group, call by call, and inserts only the calls that pass. A caller
//! that drops its future does not stop its call: it is committed wholly or not at all, and
//! the writer's connection is never left inside a transaction.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use annals::{AppendResult, Error, StreamAppend};
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    batch,
    bounded::Db,
    config::TestHooks,
    error::{Failure, internal, is_connection_lost, sql_state},
    group::{GroupResult, arrays, call, reply_each},
    probe::Probe,
    single,
};

/// One append call, validated, with its metadata already encoded.
pub(crate) struct Request {
    pub(crate) appends: Vec<StreamAppend>,
    /// Per event, in order: the metadata JSON, `None` when empty.
    pub(crate) metadata: Vec<Option<String>>,
    pub(crate) reply: oneshot::Sender<annals::Result<Outcome>>,
    /// When the call was queued.
    pub(crate) queued: std::time::Instant,
    /// The epoch of the store's memory of versions when the call came ([`crate::seen`]).
    pub(crate) epoch: u64,
}

/// What the writer made of one call.
pub(crate) enum Outcome {
    /// Stored now.
    Appended(Vec<AppendResult>),
    /// Some event id was stored already; the caller compares the stored events.
    Duplicate(Vec<StreamAppend>),
}

/// What every writer shares.
pub(crate) struct WriterContext {
    pub(crate) pool: PgPool,
    /// The pool with the bound of every statement's wait.
    pub(crate) db: Db,
    /// Wakes the notifier after a commit that stored events; a full channel already holds a
    /// wake-up, so notifications coalesce under load.
    pub(crate) notify: Option<mpsc::Sender<()>>,
    /// The most calls and events one group takes.
    pub(crate) limits: GroupLimits,
    /// Names the server when an append fails because it cannot be reached.
    pub(crate) probe: Probe,
    pub(crate) hooks: TestHooks,
    /// The groups in flight ([`InFlight`]).
    pub(crate) in_flight: InFlight,
}

/// The most calls and events one group takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupLimits {
    pub(crate) requests: usize,
    pub(crate) events: usize,
}

/// Starts `writers` writer tasks that serve the returned queue until every sender is dropped.
pub(crate) fn spawn(context: WriterContext, writers: usize) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel(4 * context.limits.requests.max(64));
    let rx = Arc::new(Mutex::new(rx));
    let context = Arc::new(context);
    for _ in 0..writers {
        tokio::spawn(run(rx.clone(), context.clone()));
    }
    tx
}

/// Sends `NOTIFY channel` after commits, outside the append transactions: a notification
/// inside them would take PostgreSQL's notify-queue lock until the commit is flushed, which
/// serialises the commits of all writers. Subscriptions poll too, so a lost one only delays.
pub(crate) fn spawn_notifier(db: Db, channel: String) -> mpsc::Sender<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let sent = db
                .run("a notification", async |c| {
                    // Its own transaction, committed without waiting for the disk: a
                    // notification is a wake-up, not data (subscribers poll without one),
                    // and a synchronous commit here would cost the server a WAL flush.
                    sqlx::query(
                        "SELECT set_config('synchronous_commit', 'off', true), \
                         pg_notify($1, '')",
                    )
                    .bind(&channel)
                    .execute(c)
                    .await
                })
                .await;
            if let Err(error) = sent {
                tracing::debug!(?error, "cannot notify subscribers; they will poll");
            }
            // At most one notification per 5 ms: commits meanwhile share the next. A
            // notification per commit would cost the server a transaction per append.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    tx
}

async fn run(rx: Arc<Mutex<mpsc::Receiver<Request>>>, context: Arc<WriterContext>) {
    // Calls that shared an event id with an earlier call of a group wait for the next one.
    let mut deferred: VecDeque<Request> = VecDeque::new();
    loop {
        let group = match deferred.pop_front() {
            // Never wait for the queue while deferred calls are ready: the other writer may
            // hold it, waiting for new calls that might never come.
            Some(first) => match rx.try_lock() {
                Ok(mut rx) => gather(
                    first,
                    Vec::new(),
                    Some(&mut rx),
                    &mut deferred,
                    context.limits,
                ),
                Err(_) => gather(first, Vec::new(), None, &mut deferred, context.limits),
            },
            None => {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else {
                    return;
                };
                // Callers just answered by the last group are about to send their next call:
                // let them run once, so they join this group instead of the one after.
                tokio::task::yield_now().await;
                let company = context.in_flight.company(&mut rx).await;
                gather(first, company, Some(&mut rx), &mut deferred, context.limits)
            }
        };
        if !group.is_empty() {
            let _running = context.in_flight.start();
            execute(group, &context).await;
        }
    }
}

/// The fewest calls a writer starts a group with while another writer's group is in flight
/// (see [`InFlight::company`]).
///
/// Two groups in flight do not share a WAL flush: PostgreSQL flushes the second commit after
/// the first, so a second group of one or two calls costs a flush (and its statement) for
/// few calls, and leaves the next group smaller. Measured with `command_cpu`, 8 tasks,
/// 2 writers: groups of 2.4 calls, one flush each, against 3.3 with this rule; the uncached
/// command path went from 0.79-0.91 of its baseline to 0.80-0.96 (mean 0.90), and at 64
/// tasks from 2.1 to 2.2-2.5 (store-postgres/PERFORMANCE.md, "Two groups in flight do not
/// share a flush").
const MIN_OVERLAPPING_GROUP: usize = 4;

/// The longest a writer waits for [`MIN_OVERLAPPING_GROUP`] calls while another group is in
/// flight. A group commits in well under a millisecond; one that takes longer is waiting on
/// something (a lock, a slow disk, a silent network), and the calls queued behind it go on
/// a connection of their own.
const OVERLAP_WAIT: Duration = Duration::from_millis(2);

/// The groups the writers are running now, so that a writer about to start another can wait
/// for company.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    groups: AtomicUsize,
    /// Woken whenever a group ends.
    ended: Notify,
}

/// One group in flight, counted until dropped.
struct Running<'a>(&'a InFlight);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.groups.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl InFlight {
    /// Counts a group in flight until the guard is dropped.
    fn start(&self) -> Running<'_> {
        self.groups.fetch_add(1, Ordering::AcqRel);
        Running(self)
    }

    /// The calls a writer holding one received call should start its group with, beyond that
    /// one. With no group in flight: none, at once (the writer takes what is queued). With a
    /// group in flight: the calls received until [`MIN_OVERLAPPING_GROUP`] are at hand
    /// (received or queued), that group ends, or [`OVERLAP_WAIT`] passes, whichever comes
    /// first. A closed queue ends the wait too.
    async fn company(&self, rx: &mut mpsc::Receiver<Request>) -> Vec<Request> {
        let mut received = Vec::new();
        // Registered before the count is read: a group that ends after the read still wakes
        // this wait.
        let ended = self.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        if self.groups.load(Ordering::Acquire) == 0 {
            return received;
        }
        let deadline = tokio::time::sleep(OVERLAP_WAIT);
        tokio::pin!(deadline);
        while 1 + received.len() + rx.len() < MIN_OVERLAPPING_GROUP {
            tokio::select! {
                call = rx.recv() => match call {
                    Some(call) => received.push(call),
                    None => break,
                },
                () = &mut ended => break,
                () = &mut deadline => break,
            }
        }
        received
    }
}

/// The most stream appends one group gathers beyond its first call. A group holds the
/// advisory locks of all its streams until it commits (`lock_streams`,
/// migrations/0006_wide_appends.sql, which locks up to 1,000 streams one by one and the whole
/// log beyond that): a larger group would hold more streams for longer, and more entries of
/// the server's lock table.
const MAX_GROUP_STREAMS: usize = 128;

/// Builds one group: `first`, then `received` (calls already taken off the queue), then
/// whatever is queued, within the limits. A call whose caller has gone before it started is
/// dropped unstored; a received call beyond the limits waits in `deferred`.
fn gather(
    first: Request,
    received: Vec<Request>,
    mut rx: Option<&mut mpsc::Receiver<Request>>,
    deferred: &mut VecDeque<Request>,
    limits: GroupLimits,
) -> Vec<Request> {
    let mut group = Vec::new();
    let mut ids: HashSet<Uuid> = HashSet::new();
    let mut events = 0usize;
    let mut streams = 0usize;
    let mut next = Some(first);
    let mut received = received.into_iter();
    while let Some(request) = next.take() {
        if !request.reply.is_closed() {
            let count: usize = request.appends.iter().map(|a| a.events.len()).sum();
            if let [only] = group.as_slice() {
                // A second call joins: from now on ids are compared.
                ids.extend(event_ids(only));
            }
            if group.is_empty() {
                events += count;
                streams += request.appends.len();
                group.push(request);
            } else if events + count > limits.events
                || streams + request.appends.len() > MAX_GROUP_STREAMS
                || event_ids(&request).any(|id| ids.contains(&id))
            {
                deferred.push_back(request);
            } else {
                ids.extend(event_ids(&request));
                events += count;
                streams += request.appends.len();
                group.push(request);
            }
        }
        if group.len() < limits.requests
            && deferred.len() < limits.requests
            && events < limits.events
            && streams < MAX_GROUP_STREAMS
        {
            next = received
                .next()
                .or_else(|| rx.as_mut().and_then(|rx| rx.try_recv().ok()));
        }
    }
    deferred.extend(received);
    group
}

fn event_ids(request: &Request) -> impl Iterator<Item = Uuid> + '_ {
    request
        .appends
        .iter()
        .flat_map(|a| &a.events)
        .map(|e| e.event_id)
}

/// How often a group is retried after a unique violation or a serialization failure.
const ATTEMPTS: usize = 6;

/// The fast path for a group of one call to one stream; `None` when `append_group` must
/// answer instead (a conflict, a stored id, a test hook).
async fn execute_single(group: &[Request], context: &WriterContext) -> Single {
    let ([request], false) = (group, context.hooks.active()) else {
        return Single::NotTried;
    };
    let [append] = request.appends.as_slice() else {
        return Single::NotTried;
    };
    let stored = context
        .db
        .append(async |c| single::append(c, append, &request.metadata, &context.db).await)
        .await;
    match stored {
        Ok(Some((version, seq, tx))) => Single::Stored(GroupResult {
            status: vec![0],
            version: vec![version],
            seq,
            tx,
        }),
        // No connection to be had: `append_group` would only wait as long again.
        Err(Failure::Sql(sqlx::Error::PoolTimedOut)) => Single::NoConnection,
        // A conflict, a duplicate id or a lost race: nothing was written.
        Ok(None) | Err(Failure::Sql(_)) => Single::Undecided,
        Err(Failure::TimedOut(error)) => Single::TimedOut(error),
    }
}

/// What the fast path did.
enum Single {
    NotTried,
    Stored(GroupResult),
    Undecided,
    /// No answer in time: the append may have been stored.
    TimedOut(crate::Error),
    /// No pooled connection within the acquire timeout: nothing was sent.
    NoConnection,
}

/// Answers every call of `group` with `error`, an append that got no answer in time: each may
/// have been stored, and sending it again on the same silent network would only wait as long
/// again. The caller's retry, idempotent by event id, decides.
fn time_out(group: Vec<Request>, error: &crate::Error) {
    for request in group {
        let error = error.copy().map_or_else(
            || internal(true, "an append got no answer in time"),
            |e| Error::backend(true, e),
        );
        let _ = request.reply.send(Err(error));
    }
}

async fn execute(mut group: Vec<Request>, context: &WriterContext) {
    // Calls that waited in the queue while another group found the server unreachable get
    // that answer now: trying again would make them wait as long once more.
    let mut waiting = Vec::with_capacity(group.len());
    for request in group {
        match context.probe.unreachable_since(request.queued) {
            Some(error) => {
                let _ = request.reply.send(Err(Error::backend(true, error)));
            }
            None => waiting.push(request),
        }
    }
    group = waiting;
    if group.is_empty() {
        return;
    }
    // After a fast path could not decide, look for stored ids at once.
    let mut check_dups = match execute_single(&group, context).await {
        Single::Stored(result) => {
            notify(context);
            reply_each(group, result, context);
            return;
        }
        Single::Undecided => true,
        Single::NotTried => false,
        Single::TimedOut(error) => return time_out(group, &error),
        Single::NoConnection => return fail(group, sqlx::Error::PoolTimedOut, context).await,
    };
    if !check_dups && !context.hooks.active() && batch::applies(&group, &context.db.seen) {
        // An error: nothing was written, or the outcome is unknown; the lookup decides.
        let stored = match batch::append(&context.db, &group).await {
            Err(Failure::TimedOut(error)) => return time_out(group, &error),
            // No connection to be had: `append_group` would only wait as long again.
            Err(Failure::Sql(sqlx::Error::PoolTimedOut)) => {
                return fail(group, sqlx::Error::PoolTimedOut, context).await;
            }
            stored => stored,
        };
        if let Ok(stored) = stored {
            let (written, rest): (Vec<_>, Vec<_>) = group
                .into_iter()
                .zip(stored.written)
                .partition(|(_, written)| *written);
            if !written.is_empty() {
                context.hooks.batched_groups.fetch_add(1, Ordering::Relaxed);
                if stored.known {
                    context.hooks.known_groups.fetch_add(1, Ordering::Relaxed);
                }
                notify(context);
                reply_each(
                    written.into_iter().map(|(r, _)| r).collect(),
                    stored.result,
                    context,
                );
            }
            if rest.is_empty() {
                return;
            }
            // Conflicts, or streams another transaction created meanwhile: nothing of these
            // calls was written; `append_group` gives their exact answers.
            group = rest.into_iter().map(|(r, _)| r).collect();
        }
        check_dups = true;
    }
    let a = arrays(&group);
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match call(&a, check_dups, context).await {
            Ok(result) => break Ok(result),
            Err(Failure::TimedOut(error)) => break Err(Failure::TimedOut(error)),
            Err(Failure::Sql(error)) => {
                // An event id or a new stream that another transaction stored meanwhile, or a
                // serialization failure: nothing was written; try again, looking for stored ids.
                let retry = matches!(
                    sql_state(&error).as_deref(),
                    Some("23505" | "40001" | "40P01")
                );
                // A dead connection (the server restarted, or terminated it while it sat in
                // the pool): the statement did not run, or its commit's answer was lost. Sent
                // again on a tested connection, looking for stored ids first, it is stored
                // once either way: a call whose ids are all stored gets its original result.
                let lost = is_connection_lost(&error);
                if (retry || lost) && attempt < ATTEMPTS {
                    if lost {
                        tracing::debug!(%error, "a pooled connection was dead; sending the group again");
                        context.db.lanes.release();
                        sweep(&context.pool).await;
                    }
                    check_dups = true;
                    continue;
                }
                break Err(Failure::Sql(error));
            }
        }
    };
    drop(a);
    match result {
        Ok(result) => {
            if !result.seq.is_empty() {
                notify(context);
            }
            reply_each(group, result, context);
        }
        Err(Failure::TimedOut(error)) => time_out(group, &error),
        Err(Failure::Sql(error)) => fail(group, error, context).await,
    }
}

/// Answers every call of `group` with `error`, which stored nothing.
async fn fail(group: Vec<Request>, error: sqlx::Error, context: &WriterContext) {
    // A missing table or an unreachable server is said as such, to every caller.
    let named = match crate::Error::not_migrated(&error) {
        Some(missing) => Some(missing),
        None => context.probe.explain(&error).await,
    };
    let transient = crate::error::is_transient(&error);
    let error = Arc::new(error);
    for request in group {
        let error = match named.as_ref().and_then(crate::Error::copy) {
            Some(named) => Error::backend(named.is_transient(), named),
            None => Error::backend(transient, SharedError(error.clone())),
        };
        let _ = request.reply.send(Err(error));
    }
}

/// Tests each idle pooled connection once, closing the dead ones: a server restart or
/// `pg_terminate_backend` kills every connection at once, and the pool would otherwise hand
/// them out one by one, each failing its call. Runs only after a dead connection was seen.
async fn sweep(pool: &PgPool) {
    let mut live = Vec::new();
    for _ in 0..pool.num_idle() {
        let Some(mut conn) = pool.try_acquire() else {
            break;
        };
        let ping = tokio::time::timeout(Duration::from_secs(2), sqlx::Connection::ping(&mut *conn));
        if matches!(ping.await, Ok(Ok(()))) {
            live.push(conn);
        } else {
            conn.close_on_drop();
        }
    }
    // Back to the pool, tested.
    drop(live);
}

/// Wakes the notifier after a commit that stored events.
fn notify(context: &WriterContext) {
    if let Some(notify) = &context.notify {
        let _ = notify.try_send(());
    }
}

/// One sqlx error reported to every call of a failed group.
#[derive(Debug, Clone)]
struct SharedError(Arc<sqlx::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call for the queue; `company` looks at none of its fields.
    fn call() -> (Request, oneshot::Receiver<annals::Result<Outcome>>) {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            appends: Vec::new(),
            metadata: Vec::new(),
            reply,
            queued: std::time::Instant::now(),
            epoch: 0,
        };
        (request, answer)
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_group_in_flight_a_writer_waits_for_no_one() {
        let in_flight = InFlight::default();
        let (_tx, mut rx) = mpsc::channel(16);
        let started = tokio::time::Instant::now();
        assert!(in_flight.company(&mut rx).await.is_empty());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn beside_a_group_in_flight_a_writer_waits_for_enough_calls() {
        let in_flight = InFlight::default();
        let _running = in_flight.start();
        let (tx, mut rx) = mpsc::channel(16);
        let mut answers = Vec::new();
        let sender = tokio::spawn(async move {
            // Tokio's timers tick in milliseconds: the calls come one by one, 1 ms on.
            tokio::time::sleep(Duration::from_millis(1)).await;
            for _ in 1..MIN_OVERLAPPING_GROUP {
                tokio::task::yield_now().await;
                let (request, answer) = call();
                tx.send(request).await.map_err(|_| "queue closed")?;
                answers.push(answer);
            }
            Ok::<_, &str>((tx, answers))
        });
        let started = tokio::time::Instant::now();
        let company = in_flight.company(&mut rx).await;
        // The writer's own call and the company make the least group: the wait ended when
        // the last of them came, before the group in flight ended or the wait ran out.
        assert_eq!(1 + company.len() + rx.len(), MIN_OVERLAPPING_GROUP);
        assert_eq!(started.elapsed(), Duration::from_millis(1));
        assert!(started.elapsed() < OVERLAP_WAIT);
        assert!(sender.await.is_ok_and(|sent| sent.is_ok()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_that_ends_ends_the_wait() {
        let in_flight = Arc::new(InFlight::default());
        let running = in_flight.clone();
        let ender = tokio::spawn(async move {
            let _running = running.start();
            tokio::time::sleep(Duration::from_millis(1)).await;
        });
        // The group is counted before the writer looks.
        tokio::task::yield_now().await;
        assert_eq!(in_flight.groups.load(Ordering::Acquire), 1);
        let (tx, mut rx) = mpsc::channel(16);
        let (request, _answer) = call();
        assert!(tx.send(request).await.is_ok());
        let started = tokio::time::Instant::now();
        let company = in_flight.company(&mut rx).await;
        assert_eq!(company.len(), 1, "the queued call is taken along");
        assert_eq!(started.elapsed(), Duration::from_millis(1));
        assert!(started.elapsed() < OVERLAP_WAIT);
        assert!(ender.await.is_ok());
        assert_eq!(in_flight.groups.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_that_does_not_end_delays_the_next_by_at_most_the_overlap_wait() {
        let in_flight = InFlight::default();
        let _stuck = in_flight.start();
        let (_tx, mut rx) = mpsc::channel(16);
        let started = tokio::time::Instant::now();
        assert!(in_flight.company(&mut rx).await.is_empty());
        assert_eq!(started.elapsed(), OVERLAP_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_queue_ends_the_wait() {
        let in_flight = InFlight::default();
        let _running = in_flight.start();
        let (tx, mut rx) = mpsc::channel::<Request>(16);
        drop(tx);
        let started = tokio::time::Instant::now();
        assert!(in_flight.company(&mut rx).await.is_empty());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn received_calls_beyond_a_groups_limits_wait_for_the_next_group() {
        let limits = GroupLimits {
            requests: 2,
            events: 1_000,
        };
        let (first, _a) = call();
        let (calls, _answers): (Vec<_>, Vec<_>) = (1..=3)
            .map(|k| {
                let (mut request, answer) = call();
                request.epoch = k;
                (request, answer)
            })
            .unzip();
        let mut deferred = VecDeque::new();
        let group = gather(first, calls, None, &mut deferred, limits);
        assert_eq!(group.iter().map(|c| c.epoch).collect::<Vec<_>>(), [0, 1]);
        // Not dropped: the next group starts with them, in their order.
        assert_eq!(deferred.iter().map(|c| c.epoch).collect::<Vec<_>>(), [2, 3]);
    }
}
