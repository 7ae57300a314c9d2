//! Paged reads of streams and of the global log, and subscriptions.
//!
//! Every page is one keyset query (`seq > ?` or `stream_version >= ?`, never `OFFSET`) on a
//! pooled read connection, released between pages: memory is bounded by the page size, and
//! no reader holds a WAL snapshot open while its caller works.

use std::sync::Arc;

use annals::{Direction, LogPosition, LogRead, RecordedEvent, StreamId, StreamRead};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use sqlx::sqlite::SqlitePool;

use crate::{row::Decoder, store::Shared};

const LOG_PAGE: &str = "SELECT e.seq, e.stream_version, e.event_id, e.event_type, \
        e.schema_version, e.payload, e.metadata, e.recorded_at, s.stream_id \
     FROM events AS e CROSS JOIN streams AS s \
     WHERE s.stream_key = e.stream_key AND e.seq > ? ORDER BY e.seq LIMIT ?";

const STREAM_FORWARD: &str = "SELECT seq, stream_version, event_id, event_type, \
        schema_version, payload, metadata, recorded_at \
     FROM events \
     WHERE stream_key = (SELECT stream_key FROM streams WHERE stream_id = ?) \
       AND stream_version >= ? \
     ORDER BY stream_version LIMIT ?";

const STREAM_BACKWARD: &str = "SELECT seq, stream_version, event_id, event_type, \
        schema_version, payload, metadata, recorded_at \
     FROM events \
     WHERE stream_key = (SELECT stream_key FROM streams WHERE stream_id = ?) \
       AND stream_version <= ? \
     ORDER BY stream_version DESC LIMIT ?";

/// The last log position (0 for an empty log).
pub(crate) async fn head_seq(pool: &SqlitePool) -> Result<u64, sqlx::Error> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(head).unwrap_or_default())
}

/// The sequence after which events come strictly after `after` in `(commit, sequence)` order;
/// here `commit == sequence`, but a position from elsewhere is still ordered correctly.
fn seq_after(after: LogPosition) -> i64 {
    let seq = if after.sequence < after.commit {
        after.commit - 1
    } else {
        after.commit
    };
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// How many events lie after `after`, through `through`: positions are serial (`(n, n)`), so
/// the last one at or before a position is found as [`seq_after`] finds the first after it.
pub(crate) async fn count_events(
    shared: &Shared,
    after: LogPosition,
    through: LogPosition,
) -> annals::Result<u64> {
    let (low, high) = (seq_after(after), seq_after(through));
    if high <= low {
        return Ok(0);
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE seq > ? AND seq <= ?")
        .bind(low)
        .bind(high)
        .fetch_one(&shared.readers)
        .await
        .map_err(|e| shared.backend(e))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One page of the log after `after`.
async fn log_page(
    shared: &Shared,
    decoder: &mut Decoder,
    after: i64,
    n: usize,
) -> annals::Result<Vec<RecordedEvent>> {
    let mut page = Vec::with_capacity(n.min(annals::DEFAULT_PAGE_SIZE));
    let mut rows = sqlx::query(LOG_PAGE)
        .bind(after)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch(&shared.readers);
    while let Some(row) = rows.try_next().await.map_err(|e| shared.backend(e))? {
        page.push(decoder.decode(&shared.path, &row, None)?);
    }
    Ok(page)
}

pub(crate) fn read_all(
    shared: Arc<Shared>,
    read: LogRead,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    async_stream::try_stream! {
        let mut after = seq_after(read.after);
        let mut left = read.limit.unwrap_or(u64::MAX);
        let mut decoder = Decoder::default();
        while left > 0 {
            let n = read.page_size.min(usize::try_from(left).unwrap_or(usize::MAX));
            let page = log_page(&shared, &mut decoder, after, n).await?;
            let len = page.len();
            for event in page {
                after = to_i64(event.position.sequence);
                yield event;
            }
            left -= len as u64;
            if len < n {
                break;
            }
        }
    }
    .boxed()
}

pub(crate) fn read_stream(
    shared: Arc<Shared>,
    stream: StreamId,
    read: StreamRead,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    let sql = match read.direction {
        Direction::Forward => STREAM_FORWARD,
        Direction::Backward => STREAM_BACKWARD,
    };
    async_stream::try_stream! {
        let mut next = to_i64(read.from);
        let mut left = read.limit.unwrap_or(u64::MAX);
        let mut decoder = Decoder::default();
        while left > 0 && !(read.direction == Direction::Backward && next < 1) {
            let n = read.page_size.min(usize::try_from(left).unwrap_or(usize::MAX));
            let mut page = Vec::with_capacity(n.min(annals::DEFAULT_PAGE_SIZE));
            {
                let mut rows = sqlx::query(sql)
                    .bind(stream.as_str())
                    .bind(next)
                    .bind(i64::try_from(n).unwrap_or(i64::MAX))
                    .fetch(&shared.readers);
                while let Some(row) = rows.try_next().await.map_err(|e| shared.backend(e))? {
                    page.push(decoder.decode(&shared.path, &row, Some(&stream))?);
                }
            }
            let len = page.len();
            for event in page {
                let version = to_i64(event.stream_version);
                next = match read.direction {
                    Direction::Forward => version + 1,
                    Direction::Backward => version - 1,
                };
                yield event;
            }
            left -= len as u64;
            if len < n {
                break;
            }
        }
    }
    .boxed()
}

pub(crate) fn subscribe(
    shared: Arc<Shared>,
    after: LogPosition,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    async_stream::try_stream! {
        // Subscribed before the first read: a commit after any read marks the channel changed.
        let mut commits = shared.head.subscribe();
        let mut after = seq_after(after);
        let mut decoder = Decoder::default();
        loop {
            commits.borrow_and_update();
            let page = log_page(&shared, &mut decoder, after, annals::DEFAULT_PAGE_SIZE).await?;
            if page.is_empty() {
                // Woken by this process's appends at once; other processes' appends are
                // found by the poll.
                tokio::select! {
                    _ = commits.changed() => {}
                    () = tokio::time::sleep(shared.poll_interval) => {}
                }
                continue;
            }
            for event in page {
                after = to_i64(event.position.sequence);
                yield event;
            }
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use sqlx::Row as _;

    use proptest::prelude::*;

    use super::*;
    use crate::SqliteEventStore;

    proptest! {
        /// Reading "after" any position, even one with `commit != sequence` from another
        /// store, returns exactly the serial positions ordered after it.
        #[test]
        fn seq_after_matches_position_order(commit in 0u64..50, sequence in 0u64..50, seq in 1u64..60) {
            let after = LogPosition::new(commit, sequence);
            let returned = i64::try_from(seq).unwrap_or(i64::MAX) > seq_after(after);
            prop_assert_eq!(returned, LogPosition::serial(seq) > after);
        }
    }

    /// Every page query is a keyset seek: no table scan, no sort, whatever the log's size.
    #[tokio::test]
    async fn page_queries_seek_an_index_and_never_sort() {
        let store = SqliteEventStore::in_memory().await.expect("store");
        for (sql, index) in [
            (LOG_PAGE, "INTEGER PRIMARY KEY (rowid>?)"),
            (STREAM_FORWARD, "(stream_key=? AND stream_version>?)"),
            (STREAM_BACKWARD, "(stream_key=? AND stream_version<?)"),
        ] {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
            for _ in 0..sql.matches('?').count() {
                query = query.bind(1_i64);
            }
            let plan: Vec<String> = query
                .fetch_all(&store.shared.readers)
                .await
                .expect("explain")
                .iter()
                .map(|row| row.try_get::<String, _>(3).expect("detail"))
                .collect();
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{sql}: {plan:?}"
            );
            for step in &plan {
                assert!(!step.contains("TEMP B-TREE"), "{sql}: {plan:?}");
                assert!(!step.starts_with("SCAN"), "{sql}: {plan:?}");
            }
        }
    }
}
