//! The direct path: a call to one stream, made while no other call holds the direct
//! connection, runs the single-stream statement ([`crate::single`]) on the caller's own task instead of
//! handing it to a writer and waiting for the answer (two task hand-offs, a pool checkout and
//! the pool's release ping per command).
//!
//! The statement runs in autocommit mode: it is its own transaction, committed wholly or not
//! at all, so no transaction can stay open whatever happens to the caller. The connection is
//! one held aside by the store, detached from the pool: a caller that drops its future
//! mid-statement drops the connection with it (closing the socket), so a connection left
//! mid-protocol is never handed to anyone else. Anything the statement cannot decide (a
//! conflict, a stored event id, an error) goes to the writers, which give the exact answer.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use annals::{AppendResult, StreamAppend};
use sqlx::postgres::PgConnection;

use crate::{
    bounded::{Db, timed_out},
    error::is_connection_lost,
    group::position,
    single,
};

/// The connection the direct path uses, when no caller holds it.
///
/// There is at most one: while a caller holds it, concurrent callers go to the writers,
/// whose group commit serves many callers better than one connection each. (Up to eight
/// direct connections measured no better at 8 tasks and a fifth slower at 64: BENCHMARKS.md,
/// "the command path at every concurrency".)
#[derive(Default)]
pub(crate) struct Direct {
    idle: Mutex<Option<PgConnection>>,
    /// Whether the direct connection exists (idle in the slot or held by a caller).
    exists: AtomicBool,
}

impl Direct {
    /// Stores `append` at once, or `None` when the writers must answer (nothing was
    /// written, or an error left the outcome open: the writers' idempotent retry decides).
    /// A statement that got no answer within the I/O timeout is an error: it may have been
    /// stored, and the writers would only wait as long again on the same silent network.
    pub(crate) async fn append(
        &self,
        db: &Db,
        append: &StreamAppend,
        metadata: &[Option<String>],
    ) -> annals::Result<Option<AppendResult>> {
        let held = self.idle.lock().ok().and_then(|mut idle| idle.take());
        let mut conn = match held {
            Some(conn) => conn,
            // Another caller holds the direct connection: concurrency is up, let the
            // writers group this append with the others.
            None if self.exists.swap(true, Ordering::AcqRel) => return Ok(None),
            // Only an idle connection (a lane's, or the pool's): never wait here while the
            // writers need one.
            None => match db.lanes.take().or_else(|| db.pool.try_acquire()) {
                Some(pooled) => pooled.detach(),
                None => {
                    self.exists.store(false, Ordering::Release);
                    return Ok(None);
                }
            },
        };
        // Unless the connection goes back to the slot, it is dropped (also when the caller
        // drops this future mid-statement): then the next caller may open a new one.
        let mut claim = Claim {
            exists: &self.exists,
            kept: false,
        };
        // Out of time, the connection is dropped with the claim (closed, its socket shut).
        let stored = match db
            .within(
                "an append",
                single::append(&mut conn, append, metadata, &db.privileges),
            )
            .await
        {
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
        claim.kept = match &stored {
            Ok(_) => true,
            Err(error @ sqlx::Error::Database(_)) => !is_connection_lost(error),
            Err(_) => false,
        } && self.idle.lock().is_ok_and(|mut idle| {
            // The connection answered, so it is ready for the next statement.
            idle.get_or_insert(conn);
            true
        });
        drop(claim);
        let Some((version, seq, tx)) = stored.ok().flatten() else {
            return Ok(None);
        };
        let (Some(first), Some(last)) = (seq.first(), seq.last()) else {
            return Ok(None);
        };
        Ok(Some(AppendResult {
            stream_version: u64::try_from(version).unwrap_or(0),
            first_position: position(tx, *first),
            last_position: position(tx, *last),
        }))
    }
}

impl Direct {
    /// Runs the read `statement` on the direct connection if it is idle (a lone command's
    /// load, so that the load and the append of a command go to one server process, as a
    /// hand-written command's do); `None` when another caller holds it (or there is none
    /// yet): read on a pooled connection instead. A read that got no answer in time drops
    /// the connection, as an append does.
    pub(crate) async fn read<T>(
        &self,
        db: &Db,
        operation: &'static str,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Option<annals::Result<T>> {
        let mut conn = self.idle.lock().ok().and_then(|mut idle| idle.take())?;
        let claim = Claim {
            exists: &self.exists,
            kept: false,
        };
        let Ok(result) = db.within(operation, statement(&mut conn)).await else {
            drop(claim);
            drop(conn);
            return Some(Err(annals::Error::backend(true, db.timed_out(operation))));
        };
        let live = match &result {
            Ok(_) => true,
            Err(error @ sqlx::Error::Database(_)) => !is_connection_lost(error),
            Err(_) => false,
        };
        let mut claim = claim;
        claim.kept = live
            && self.idle.lock().is_ok_and(|mut idle| {
                idle.get_or_insert(conn);
                true
            });
        drop(claim);
        Some(result.map_err(crate::error::backend))
    }
}

/// Marks the direct connection gone when it is not put back.
struct Claim<'a> {
    exists: &'a AtomicBool,
    kept: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.exists.store(false, Ordering::Release);
        }
    }
}
