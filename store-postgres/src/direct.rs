//! The direct path: while few calls are in the store (at most as many appends and loads as
//! it has direct connections), a call to one stream runs the single-stream statement
//! ([`crate::single`]) on the caller's own task instead of handing it to a writer and waiting
//! for the answer (two task hand-offs, a pool checkout and the pool's release ping per
//! command), and a load reads alone instead of waiting for a batch. With few callers, groups
//! and batches would be small anyway, and each would wait for the one before.
//!
//! The statement runs in autocommit mode: it is its own transaction, committed wholly or not
//! at all, so no transaction can stay open whatever happens to the caller. The connection is
//! one held aside by the store, detached from the pool: a caller that drops its future
//! mid-statement drops the connection with it (closing the socket), so a connection left
//! mid-protocol is never handed to anyone else. Anything the statement cannot decide (a
//! conflict, a stored event id, an error) goes to the writers, which give the exact answer.

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use annals::{AppendResult, StreamAppend};
use futures::FutureExt;
use sqlx::postgres::PgConnection;

use crate::{
    bounded::{Db, timed_out},
    error::{Failure, answered_live},
    group::position,
    single,
};

/// The connections the direct path uses, when no caller holds them.
///
/// At most [`PgConfig::with_direct_connections`](crate::PgConfig::with_direct_connections)
/// (four by default), used while no more calls than that are in the store: with more,
/// concurrent callers go to the writers, whose group commit serves many callers better than
/// one connection each.
///
/// They are detached from the pool and do not count in its size (the pool may open others
/// in their place): a connection closed here, by a dropped caller or a timeout, is simply
/// gone, and the pool never sees one left mid-protocol.
pub(crate) struct Direct {
    idle: Mutex<Vec<PgConnection>>,
    /// How many direct connections exist (idle here or held by a caller).
    exists: AtomicUsize,
    max: usize,
    /// How many append calls are in the store right now, direct or with the writers.
    appending: AtomicUsize,
    /// How many loads of aggregates are in the store right now.
    loading: AtomicUsize,
}

/// A call (an append or a load) counted in the store until dropped.
pub(crate) struct InStore<'a> {
    /// The count it is in: the store's appends or its loads.
    count: &'a AtomicUsize,
    /// Calls in the store (appends and loads) when this one came, itself included.
    pub(crate) at: usize,
}

impl Drop for InStore<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Direct {
    /// A direct path of at most `max` connections (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            exists: AtomicUsize::new(0),
            max: max.max(1),
            appending: AtomicUsize::new(0),
            loading: AtomicUsize::new(0),
        }
    }

    /// Counts an append call in until the guard is dropped.
    pub(crate) fn enter(&self) -> InStore<'_> {
        count_in(&self.appending, &self.loading)
    }

    /// Counts a load in until the guard is dropped.
    pub(crate) fn enter_load(&self) -> InStore<'_> {
        count_in(&self.loading, &self.appending)
    }

    /// Whether a call that found `at` calls in the store (itself included) runs on a direct
    /// connection: at most as many as there are direct connections.
    pub(crate) fn serves(&self, at: usize) -> bool {
        at <= self.max
    }

    /// An idle direct connection, or a new one from the idle lanes or pool when there are
    /// fewer than the most; `None` otherwise (never waits).
    fn checkout(&self, db: &Db) -> Option<PgConnection> {
        if let Some(conn) = self.take() {
            return Some(conn);
        }
        if !self.claim_new() {
            return None;
        }
        match db.lanes.take().or_else(|| db.pool.try_acquire()) {
            Some(pooled) => Some(pooled.detach()),
            None => {
                self.exists.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }

    /// An idle direct connection, if any.
    fn take(&self) -> Option<PgConnection> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// Puts `conn` back for the next caller.
    fn put_back(&self, conn: PgConnection) -> bool {
        self.idle.lock().is_ok_and(|mut idle| {
            idle.push(conn);
            true
        })
    }

    /// Claims a place for a new direct connection, if one is free.
    fn claim_new(&self) -> bool {
        self.exists
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }
}

impl Direct {
    /// Stores `append` at once, or `None` when the writers must answer (nothing was
    /// written, or an error left the outcome open: the writers' idempotent retry decides).
    /// A statement that got no answer within the I/O timeout is an error: it may have been
    /// stored, and the writers would only wait as long again on the same silent network.
    ///
    /// `appending` is the caller's place among the calls in the store (appends and loads):
    /// beyond the number of direct connections, concurrency is up and the writers' group
    /// commit does better, so the caller goes there even if a direct connection is idle.
    pub(crate) async fn append(
        &self,
        db: &Db,
        appending: &InStore<'_>,
        append: &StreamAppend,
        metadata: &[Option<String>],
    ) -> annals::Result<Option<AppendResult>> {
        if !self.serves(appending.at) {
            return Ok(None);
        }
        let since = db.seen.epoch();
        // Other callers hold every direct connection, or none is idle to be had: let the
        // writers group this append with the others (never wait here while they need one).
        let Some(mut conn) = self.checkout(db) else {
            return Ok(None);
        };
        // Unless the connection goes back to the slot, it is dropped (also when the caller
        // drops this future mid-statement): then the next caller may open a new one.
        let mut claim = Claim {
            exists: &self.exists,
            kept: false,
        };
        // Out of time, the connection is dropped with the claim (closed, its socket shut).
        // Boxed apart from the caller's future: each stays small enough for the allocator's
        // per-thread cache, so a command's futures reuse warm memory.
        let statement = single::append(&mut conn, append, metadata, db).boxed();
        let stored = match db.within("an append", statement).await {
            Ok(stored) => stored,
            Err(_) => {
                drop(claim);
                drop(conn);
                return Err(annals::Error::backend(
                    true,
                    timed_out("an append", db.timeout, true),
                ));
            }
        };
        // A database error answered by a live connection keeps it; one that says the
        // connection is closed (57P01 after `pg_terminate_backend`) does not.
        claim.kept = answered_live(&stored) && self.put_back(conn);
        drop(claim);
        let Some((version, seq, tx)) = stored.ok().flatten() else {
            return Ok(None);
        };
        let (Some(first), Some(last)) = (seq.first(), seq.last()) else {
            return Ok(None);
        };
        // Answered in autocommit mode: committed.
        let stream_version = u64::try_from(version).unwrap_or(0);
        db.seen
            .record(append.stream.as_str(), stream_version, since);
        Ok(Some(AppendResult {
            stream_version,
            first_position: position(tx, *first),
            last_position: position(tx, *last),
        }))
    }

    /// Runs the read `statement` on a direct connection (a load made while few calls are in
    /// the store, so that the load and the append of a command go to one server process, as
    /// a hand-written command's do); `None` when callers hold them all and no more may be
    /// opened: read on a pooled connection instead. A read that got no answer in time drops
    /// the connection, as an append does.
    pub(crate) async fn read<T>(
        &self,
        db: &Db,
        operation: &'static str,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Option<annals::Result<T>> {
        let mut conn = self.checkout(db)?;
        let mut claim = Claim {
            exists: &self.exists,
            kept: false,
        };
        // Boxed apart, as the append's statement is.
        let read = Box::pin(statement(&mut conn));
        let Ok(result) = db.within(operation, read).await else {
            // The claim drops the connection's place; the connection is closed with it.
            return Some(Err(Failure::TimedOut(db.timed_out(operation)).into()));
        };
        claim.kept = answered_live(&result) && self.put_back(conn);
        Some(result.map_err(|error| Failure::Sql(error).into()))
    }
}

/// Counts a call in `count`, and the calls in the store with it (`others` the other kind).
fn count_in<'a>(count: &'a AtomicUsize, others: &AtomicUsize) -> InStore<'a> {
    let at = count.fetch_add(1, Ordering::AcqRel) + 1 + others.load(Ordering::Acquire);
    InStore { count, at }
}

/// Counts a direct connection gone when it is not put back.
struct Claim<'a> {
    exists: &'a AtomicUsize,
    kept: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.exists.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
