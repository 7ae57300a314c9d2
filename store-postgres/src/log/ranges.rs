//! The bulk of a long log read as consecutive ranges of transaction ids, read two at a time.
//!
//! One PostgreSQL backend sending a replay's rows is itself about a core busy, and it works
//! alone: a batch of the log can only start where the previous one ended, which is known once
//! that one has been read. Ranges of transaction ids need no such wait: a horizon read first
//! (`pg_snapshot_xmin`) bounds them, every transaction below it has ended, so the range of ids
//! `[a, b)` below the horizon holds the same events whenever it is read, and the ranges
//! `[a, b)`, `[b, c)`, ... follow each other exactly, with nothing skipped or read twice. The
//! next range is read on a connection and a task of its own, its pages held (a batch's worth
//! at most, then it waits) while the current range is handed on; so two backends and two
//! decoding tasks work at once.
//!
//! A range's width comes from the density of the batch before it (events per transaction id),
//! aiming at [`RANGE_BATCHES`] batches of events, of which one is read ahead; a range that
//! turns out larger is streamed all the same.

use annals::{LogPosition, RecordedEvent};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    bounded::Db,
    copy,
    error::internal,
    pages::{Page, PageSender, Sent},
    read::Names,
};

/// How many batches of rows a range aims to hold. Only one batch of the next range is read
/// ahead (its pages held until the range before it ends), so memory stays at a batch's worth,
/// while each range's start (a round trip for its settings, the `COPY`'s plan and index
/// descent, and a moment with one backend at work while the next range starts) comes four
/// times less often (store-postgres/PERFORMANCE.md, "Ranges of four batches").
const RANGE_BATCHES: usize = 4;

/// Events per transaction id in a batch of `rows` events read after `before` up to `last`.
pub(crate) fn density(rows: usize, before: LogPosition, last: LogPosition) -> f64 {
    per_id(rows, last.commit.saturating_sub(before.commit))
}

/// `rows` events over `ids` transaction ids (at least one).
fn per_id(rows: usize, ids: u64) -> f64 {
    rows as f64 / ids.max(1) as f64
}

/// How many transaction ids a range spans to hold about `rows` events at `density`: at
/// least one, and as many as there are for a density of nothing seen (the horizon caps it).
fn width(rows: usize, density: f64) -> u64 {
    // A float cast saturates: infinity to u64::MAX, NaN to 0.
    ((rows as f64 / density).ceil() as u64).max(1)
}

/// The keyset just before every event of transaction `id`.
fn before_tx(id: u64) -> LogPosition {
    LogPosition::new(id.saturating_sub(1), i64::MAX.unsigned_abs())
}

/// One range being read on its own task, its pages queued for the reader.
struct Range {
    pages: mpsc::Receiver<Page>,
    task: JoinHandle<Sent<LogPosition>>,
    /// The transaction ids it covers: from the keyset's up to `below`.
    first: u64,
    below: u64,
}

impl Range {
    /// Starts reading the range once `start` fires (or is dropped): a range read ahead waits
    /// until the range before it holds its connection, so it never takes the connection that
    /// range waits for (with a small pool, each would wait for the other until the acquire
    /// timeout).
    fn spawn(
        db: &Db,
        after: LogPosition,
        below: u64,
        page_size: usize,
        pages: usize,
        start: Option<oneshot::Receiver<()>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(pages.max(1));
        let db = db.clone();
        let task = tokio::spawn(async move {
            if let Some(start) = start {
                let _ = start.await;
            }
            let batch = copy::Batch::LogRange {
                commit: after.commit,
                sequence: after.sequence,
                below,
            };
            let key = |e: &RecordedEvent| e.position;
            let mut names = Names::default();
            // A range has no limit (`Batch::LogRange` sets its own): 0 is not read.
            copy::send_batch(&db, batch, 0, &mut names, page_size, key, &tx).await
        });
        Self {
            pages: rx,
            task,
            first: after.commit,
            below,
        }
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        // A reader that has gone stops the range read ahead for it too (its connection,
        // mid-`COPY`, is closed, not pooled: see `copy::Copying`).
        self.task.abort();
    }
}

/// Reads every event after `after` below the horizon as it is now, in ranges of about
/// `rows` events, and sends them on to `tx` in order.
pub(crate) async fn read(
    db: &Db,
    after: LogPosition,
    mut density: f64,
    rows: usize,
    page_size: usize,
    tx: &PageSender,
) -> Sent<LogPosition> {
    let horizon = db
        .read("the log's horizon", async |c| {
            sqlx::query_scalar::<_, i64>(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            )
            .fetch_one(c)
            .await
        })
        .await;
    let horizon = match horizon.map(u64::try_from) {
        Ok(Ok(horizon)) => horizon,
        Ok(Err(_)) => {
            let _ = tx.send(Err(internal(false, "a negative horizon"))).await;
            return Sent::Stopped;
        }
        Err(error) => {
            let _ = tx.send(Err(error)).await;
            return Sent::Stopped;
        }
    };
    if horizon <= after.commit {
        return Sent::Done {
            rows: 0,
            last: None,
        };
    }
    // A batch's worth of pages read ahead; a range spans several batches (see
    // `RANGE_BATCHES`), the rest of it streamed once it is the current range.
    let ahead = rows.div_ceil(page_size.max(1)) + 1;
    let span = rows.saturating_mul(RANGE_BATCHES);
    let end = |first: u64, density: f64| first.saturating_add(width(span, density)).min(horizon);
    let mut current = Range::spawn(
        db,
        after,
        end(after.commit, density),
        page_size,
        ahead,
        None,
    );
    // With a pool of one connection, the next range could only wait for it: no read ahead.
    let read_ahead = db.pool.options().get_max_connections() > 1;
    let (mut count, mut last) = (0usize, None);
    loop {
        let (mut start, next) = match (current.below < horizon, read_ahead) {
            (true, true) => {
                let (start, wait) = oneshot::channel();
                let from = current.below;
                let next = Range::spawn(
                    db,
                    before_tx(from),
                    end(from, density),
                    page_size,
                    ahead,
                    Some(wait),
                );
                (Some(start), Some(next))
            }
            _ => (None, None),
        };
        while let Some(page) = current.pages.recv().await {
            // The current range has its connection (it sent a page, or failed): the next may
            // take one now.
            if let Some(start) = start.take() {
                let _ = start.send(());
            }
            if tx.send(page).await.is_err() {
                return Sent::Stopped;
            }
        }
        drop(start);
        match (&mut current.task).await {
            Ok(Sent::Done { rows: n, last: l }) => {
                count += n;
                last = l.or(last);
                density = if n > 0 {
                    per_id(n, current.below.saturating_sub(current.first))
                } else {
                    // An empty range: the next ones twice as wide.
                    density / 2.0
                };
            }
            // The range sent its error on, or the reader has gone.
            Ok(Sent::Stopped) => return Sent::Stopped,
            Err(_) => {
                let _ = tx
                    .send(Err(internal(false, "a log range read ended abruptly")))
                    .await;
                return Sent::Stopped;
            }
        }
        match next {
            Some(next) => current = next,
            None if current.below < horizon => {
                let from = current.below;
                current = Range::spawn(
                    db,
                    before_tx(from),
                    end(from, density),
                    page_size,
                    ahead,
                    None,
                );
            }
            None => return Sent::Done { rows: count, last },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_aim_at_the_rows_and_stay_positive() {
        assert_eq!(width(16_000, 1_000.0), 16);
        assert_eq!(width(16_000, 3.0), 5_334);
        assert_eq!(width(10, 1e9), 1);
        assert_eq!(width(10, 0.0), u64::MAX);
        assert_eq!(width(10, f64::NAN), 1);
        assert_eq!(width(10, -1.0), 1);
        assert_eq!(
            density(1_000, LogPosition::new(5, 1), LogPosition::new(5, 900)),
            1_000.0
        );
        assert_eq!(
            density(1_000, LogPosition::new(5, 1), LogPosition::new(15, 9)),
            100.0
        );
    }

    #[test]
    fn a_range_starts_before_every_event_of_its_first_transaction() {
        let keyset = before_tx(42);
        assert!(keyset < LogPosition::new(42, 0));
        assert!(keyset > LogPosition::new(41, u64::try_from(i64::MAX).unwrap() - 1));
    }
}
