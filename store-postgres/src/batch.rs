//! The fast path of a group whose calls each append to one stream, no two calls to the same
//! stream (the usual group of concurrent commands): one SQL statement judges and stores
//! the whole group, instead of `append_group`'s PL/pgSQL loops.
//!
//! The statement takes the streams' advisory locks first (the log's lock shared, then each
//! stream's key in ascending order, as `lock_streams` in migrations/0003_stream_order.sql
//! does), before anything takes the transaction's id. It then reads each stream's newest
//! version from `events` (or, for a call expecting a version this store has seen, takes that
//! version without reading: [`crate::seen`]), and inserts the events of exactly the calls
//! whose check passes, after their streams' versions. A call whose check fails stores nothing
//! and is left to `append_group`, which gives the exact answer; one call's conflict so never
//! fails another. An event id stored already fails the whole statement (a unique violation,
//! nothing written), and the writer hands the group to `append_group` with the stored-id
//! lookup.
//!
//! When every call's version is known before the statement runs (a version this store has
//! seen, or a new stream's 0, whose first version is taken exactly when the stream has
//! events), nothing needs reading or judging: a leaner statement takes the same locks and
//! inserts the events at the versions the calls expect ([`APPEND_KNOWN_PLAIN`]). A taken
//! version fails it on the key, nothing written, and the whole group goes to `append_group`.
//! That is the usual group of concurrent commands, each of which loaded its aggregate first.
//!
//! Why this is correct under concurrency: every append to a stream holds its advisory lock
//! until it commits, and versions only grow. The statement's snapshot is taken before its
//! locks are granted, so a version read may be older than an append it waited for; the
//! version it then writes is taken, and the key on `(stream_id, stream_version)` refuses it,
//! failing the whole statement with nothing written (the writer then asks `append_group`,
//! whose statements each see every commit before them). A version read or seen is never
//! ahead of the stream, so the statement can write a taken version but never leave a gap.

use std::collections::HashSet;

use crate::{
    bounded::Db,
    error::Failure,
    group::{Arrays, GroupResult, arrays},
    seen::{Check, Seen},
    single::version_taken,
    writer::Request,
};

/// One statement for the whole group: the `append_batch` function
/// (migrations/0007_versions_from_events.sql, owned by the migrating role so an application
/// role may append without any right to write the tables), bound to the arrays
/// `append_group` takes ([`crate::group::Arrays`]): `$1..$3` per call (stream, expected
/// version code, number of events; each call is one stream append here), `$4..$10` per event
/// (its call, 1-based, its place in that call, 1-based, and its columns). Inside, the locks
/// are one statement and the versions' read and the insert the next, so the read sees every
/// append the locks waited for.
const APPEND_BATCH: &str =
    "SELECT o_k, o_version, o_seq, o_tx FROM append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// `append_batch`'s work sent plain, as one statement, for a role that may write the tables
/// itself (see [`crate::single::Privileges`]): the same parameters, `$11`, the number of
/// calls, as a `LIMIT` on `a`, and `$12`, per call, whether its expected version is one this
/// store has seen (no read: [`crate::seen`]). `a` reads from `l` and `l` from `g`, so the
/// locks are taken in that order before any row is written; the keys are sorted in a
/// sub-query that is not flattened (`OFFSET 0`), so the outer query locks them in order. The
/// `LIMIT` changes no row, but it tells the planner that `a` is small even in a generic plan
/// (a `LIMIT` parameter is estimated at a tenth of its input, where `unnest` of a parameter
/// is estimated at 100 rows), so each stream's newest version is looked up in the events'
/// key rather than found by hashing a scan (measured on the former `streams` table: a third
/// of the 64-task command path's speed).
const APPEND_BATCH_PLAIN: &str = "\
WITH g AS (SELECT pg_advisory_xact_lock_shared(stream_lock_key(''))), \
l AS (SELECT count(pg_advisory_xact_lock(o.k)) AS n \
        FROM (SELECT stream_lock_key(s) AS k FROM g, unnest($1::text[]) AS s \
               ORDER BY 1 OFFSET 0) AS o), \
a AS (SELECT u.stream, u.expected, u.n, u.k, u.seen \
        FROM l, unnest($1::text[], $2::bigint[], $3::int[], $12::bool[]) WITH ORDINALITY \
          AS u(stream, expected, n, seen, k) LIMIT $11), \
c AS (SELECT a.stream, a.expected, a.n, a.k, \
              CASE WHEN a.seen THEN a.expected \
                   ELSE coalesce((SELECT e.stream_version FROM events AS e \
                                   WHERE e.stream_id = a.stream \
                                   ORDER BY e.stream_version DESC LIMIT 1), 0) END AS cur \
         FROM a), \
w AS (SELECT c.k, c.cur + c.n AS version FROM c \
       WHERE c.expected = -1 OR (c.expected = -2 AND c.cur > 0) OR c.expected = c.cur), \
ev AS (INSERT INTO events (tx, stream_id, stream_version, event_id, event_type, \
                           schema_version, payload, metadata) \
       SELECT pg_current_xact_id()::text::bigint, a.stream, w.version - a.n + e.pos, \
              e.id, e.t, e.sv, e.p, e.m \
         FROM unnest($4::int[], $5::int[], $6::uuid[], $7::text[], $8::int[], $9::text[], \
                     $10::text[]) AS e(k, pos, id, t, sv, p, m) \
         JOIN w ON w.k = e.k JOIN a ON a.k = e.k \
        ORDER BY e.k, e.pos \
       RETURNING events.sequence, events.tx) \
SELECT (SELECT coalesce(array_agg(w.k ORDER BY w.k), '{}') FROM w), \
       (SELECT coalesce(array_agg(w.version ORDER BY w.k), '{}') FROM w), \
       (SELECT coalesce(array_agg(ev.sequence ORDER BY ev.sequence), '{}') FROM ev), \
       (SELECT coalesce(min(ev.tx), 0) FROM ev)";

/// The group statement when every call's version is known before it runs (see [`append`]): the
/// same locks, taken in the same order, then the events inserted at the versions the calls
/// expect, with no read and no judging. A version taken meanwhile fails the whole statement on
/// the key, nothing written, as a taken version does in [`APPEND_BATCH_PLAIN`]. `$1` is per
/// call (its stream), `$2..$8` per event (stream, version, id, type, schema version, payload,
/// metadata). Its plan has a third of the nodes of the judging statement's, which is most of
/// a small group's cost on the server.
const APPEND_KNOWN_PLAIN: &str = "\
WITH g AS (SELECT pg_advisory_xact_lock_shared(stream_lock_key(''))), \
l AS (SELECT count(pg_advisory_xact_lock(o.k)) AS n \
        FROM (SELECT stream_lock_key(s) AS k FROM g, unnest($1::text[]) AS s \
               ORDER BY 1 OFFSET 0) AS o) \
INSERT INTO events (tx, stream_id, stream_version, event_id, event_type, schema_version, \
                    payload, metadata) \
SELECT pg_current_xact_id()::text::bigint, e.s, e.v, e.id, e.t, e.sv, e.p, e.m \
  FROM l, unnest($2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::int[], $7::text[], \
                 $8::text[]) WITH ORDINALITY AS e(s, v, id, t, sv, p, m, i) \
 ORDER BY e.i \
RETURNING sequence, tx";

/// Whether the fast path can judge `group`: more than one call, each to one stream, no
/// stream named twice. (`MAX_GROUP_STREAMS` in the writer keeps the number of streams, and so
/// of advisory locks, at most 128, far below the 1,000 where `lock_streams` would switch to the
/// log-wide lock.)
///
/// A call whose version would be read, to a stream where a one-statement append read its
/// version too early ([`Check::ReadAfterLock`]), goes to `append_group` instead, which reads it
/// after the locks: in one statement it would likely fail the whole group again.
pub(crate) fn applies(group: &[Request], seen: &Seen) -> bool {
    if group.len() < 2 {
        return false;
    }
    let mut streams = HashSet::with_capacity(group.len());
    group
        .iter()
        .all(|request| match request.appends.as_slice() {
            [append] => {
                streams.insert(append.stream.as_str()) && seen.check(append) != Check::ReadAfterLock
            }
            _ => false,
        })
}

/// What the fast path stored: for the calls that were written, in group order, their
/// result (all statuses 0); `written[i]` says whether call `i` was.
pub(crate) struct Stored {
    pub(crate) written: Vec<bool>,
    pub(crate) result: GroupResult,
    /// Stored by [`APPEND_KNOWN_PLAIN`].
    pub(crate) known: bool,
}

/// Runs the statement for `group` (see [`applies`]). An error means nothing was written, or
/// the outcome is unknown (a broken connection): either way `append_group` with the stored-id
/// lookup decides.
pub(crate) async fn append(db: &Db, group: &[Request]) -> Result<Stored, Failure> {
    let n = group.len();
    let a = arrays(group);
    // Per call: its expected version is one this store has seen, and needs no read.
    let seen: Vec<bool> = group
        .iter()
        .map(|request| {
            request
                .appends
                .first()
                .is_some_and(|append| db.seen.check(append) == Check::Seen)
        })
        .collect();
    // A call expecting a new stream knows its versions too: version 1 is taken exactly when
    // the stream has events (versions start at 1 and events are never deleted).
    let known = seen
        .iter()
        .zip(&a.expected)
        .all(|(seen, e)| *seen || *e == 0);
    if known && db.privileges.plain() {
        match append_known(db, &a).await {
            Err(Failure::Sql(error)) if db.privileges.refused(&error) => {}
            stored => return stored,
        }
    }
    let (ks, versions, seq, tx): (Vec<i64>, Vec<i64>, Vec<i64>, i64) = db
        .append(async |c| {
            let run = |sql| {
                sqlx::query_as(sql)
                    .bind(&a.stream)
                    .bind(&a.expected)
                    .bind(&a.count)
                    .bind(&a.event_k)
                    .bind(&a.event_pos)
                    .bind(&a.event_id)
                    .bind(&a.event_type)
                    .bind(&a.schema_version)
                    .bind(&a.payload)
                    .bind(&a.metadata)
            };
            if db.privileges.plain() {
                let calls = i64::try_from(a.stream.len()).unwrap_or(i64::MAX);
                let query = run(APPEND_BATCH_PLAIN).bind(calls).bind(&seen);
                match query.fetch_one(&mut *c).await {
                    Err(error) if db.privileges.refused(&error) => {}
                    other => return other,
                }
            }
            run(APPEND_BATCH).fetch_one(c).await
        })
        .await
        .inspect_err(|failure| {
            // A version read before an append the locks waited for: which stream is not
            // said, so every stream whose version was read counts as contended.
            if let Failure::Sql(error) = failure
                && version_taken(error)
            {
                for (request, seen) in group.iter().zip(&seen) {
                    if let (false, Some(append)) = (seen, request.appends.first()) {
                        db.seen.contend(append.stream.as_str());
                    }
                }
            }
        })?;
    // The answer must account for every event of every call it names: otherwise (it cannot
    // happen, but nothing here may guess) `append_group` finds the stored ids and answers.
    let mut written = vec![false; n];
    let mut stored_events = 0usize;
    for k in &ks {
        let slot = usize::try_from(*k - 1)
            .ok()
            .and_then(|i| Some((written.get_mut(i)?, group.get(i)?)));
        match slot {
            Some((slot, request)) if !*slot => {
                *slot = true;
                stored_events += request.metadata.len();
            }
            _ => {
                return Err(Failure::Sql(sqlx::Error::Protocol(
                    "append batch: a call named twice".into(),
                )));
            }
        }
    }
    if versions.len() != ks.len() || seq.len() != stored_events {
        return Err(Failure::Sql(sqlx::Error::Protocol(
            "append batch: the answer does not match the stored events".into(),
        )));
    }
    Ok(Stored {
        written,
        known: false,
        result: GroupResult {
            status: vec![0; ks.len()],
            version: versions,
            seq,
            tx,
        },
    })
}

/// Runs [`APPEND_KNOWN_PLAIN`] for a group whose every call expects a version known before
/// the statement (one this store has seen, or a new stream's 0): every call is written, or
/// none (an error).
async fn append_known(db: &Db, a: &Arrays<'_>) -> Result<Stored, Failure> {
    // Per event, in the arrays' order (each call's events in turn): its stream and version.
    let mut stream = Vec::with_capacity(a.event_id.len());
    let mut version = Vec::with_capacity(a.event_id.len());
    for ((id, expected), count) in a.stream.iter().zip(&a.expected).zip(&a.count) {
        for pos in 1..=i64::from(*count) {
            stream.push(*id);
            version.push(expected.saturating_add(pos));
        }
    }
    let rows: Vec<(i64, i64)> = db
        .append(async |c| {
            sqlx::query_as(APPEND_KNOWN_PLAIN)
                .bind(&a.stream)
                .bind(&stream)
                .bind(&version)
                .bind(&a.event_id)
                .bind(&a.event_type)
                .bind(&a.schema_version)
                .bind(&a.payload)
                .bind(&a.metadata)
                .fetch_all(c)
                .await
        })
        .await?;
    // Every event must come back, all of one transaction; otherwise (it cannot happen, but
    // nothing here may guess) `append_group` finds the stored ids and answers.
    let tx = rows.first().map_or(0, |(_, tx)| *tx);
    if rows.len() != a.event_id.len() || rows.iter().any(|(_, t)| *t != tx) {
        return Err(Failure::Sql(sqlx::Error::Protocol(
            "append batch: the answer does not match the stored events".into(),
        )));
    }
    // Sequence numbers are drawn in insert order, which is the events' order.
    let mut seq: Vec<i64> = rows.into_iter().map(|(seq, _)| seq).collect();
    seq.sort_unstable();
    let versions = a
        .expected
        .iter()
        .zip(&a.count)
        .map(|(e, n)| e.saturating_add(i64::from(*n)))
        .collect();
    Ok(Stored {
        written: vec![true; a.stream.len()],
        known: true,
        result: GroupResult {
            status: vec![0; a.stream.len()],
            version: versions,
            seq,
            tx,
        },
    })
}
