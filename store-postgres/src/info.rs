//! What the store says about itself rather than about its events: its identity
//! ([`store_id`]), the exact number of events between two log positions ([`count_events`]),
//! and what holds the visible end of the log back ([`log_hold`]).

use annals::{LogHold, LogPosition};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::bounded::Db;

/// The id made once by migration `0004_store_info.sql`.
pub(crate) async fn store_id(db: &Db) -> annals::Result<Uuid> {
    db.read("the store's id", async |c| {
        sqlx::query_scalar("SELECT store_id FROM store_info")
            .fetch_one(c)
            .await
    })
    .await
}

/// The events a log reader sees after `$1, $2` and up to `$3, $4`: ordered by
/// `(tx, sequence)`, and only below the oldest running transaction, like the page queries of
/// `read.rs`, so events committed behind an open transaction are not counted yet.
const COUNT: &str = "SELECT count(*) FROM events \
     WHERE (tx, sequence) > ($1, $2) AND (tx, sequence) <= ($3, $4) \
       AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// How many events a reader sees after `after`, through `through`.
pub(crate) async fn count_events(
    db: &Db,
    after: LogPosition,
    through: LogPosition,
) -> annals::Result<u64> {
    if through <= after {
        return Ok(0);
    }
    let n: i64 = db
        .read("a count of events", async |c| {
            sqlx::query_scalar(COUNT)
                .bind(to_i64(after.commit))
                .bind(to_i64(after.sequence))
                .bind(to_i64(through.commit))
                .bind(to_i64(through.sequence))
                .fetch_one(c)
                .await
        })
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The oldest running transaction (the snapshot's xmin), if events committed after it are
/// stored in this schema (so readers cannot see them yet), and the session or prepared
/// transaction that runs it. One statement: an index probe of `events_log` for the first
/// event above the horizon, and a look at the server's activity. `backend_xid` is the 32-bit
/// form of the transaction id, which `xid8::xid` gives. A role that may not see other roles'
/// sessions (no `pg_read_all_stats`) finds no session: the hold is still reported, without a
/// pid, as open since the first held event was written.
const HOLD: &str = "\
WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin), \
held AS (SELECT h.xmin, (SELECT e.recorded_at FROM events AS e \
                          WHERE e.tx > h.xmin::text::bigint \
                          ORDER BY e.tx, e.sequence LIMIT 1) AS first \
           FROM h) \
SELECT s.pid, coalesce(s.since, held.first), s.query \
  FROM held LEFT JOIN LATERAL ( \
    SELECT a.pid::bigint AS pid, a.xact_start AS since, left(a.query, 256) AS query, 0 AS o \
      FROM pg_stat_activity AS a \
     WHERE a.backend_xid = held.xmin::xid AND a.xact_start IS NOT NULL \
    UNION ALL \
    SELECT NULL::bigint, p.prepared, 'PREPARE TRANSACTION ' || quote_literal(p.gid), 1 \
      FROM pg_prepared_xacts AS p WHERE p.transaction = held.xmin::xid \
    ORDER BY o LIMIT 1) AS s ON true \
 WHERE held.first IS NOT NULL";

/// The open transaction that holds back committed events, if any.
pub(crate) async fn log_hold(db: &Db) -> annals::Result<Option<LogHold>> {
    let row: Option<(Option<i64>, OffsetDateTime, Option<String>)> = db
        .read("what holds the log", async |c| {
            sqlx::query_as(HOLD).fetch_optional(c).await
        })
        .await?;
    Ok(row.map(|(pid, since, query)| LogHold::new(pid, since, query)))
}
