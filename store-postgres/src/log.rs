//! The global log as streams: `read_all` (up to the end visible now) and `subscribe`
//! (catch-up, then live). Both read keyset pages of `(tx, sequence)` through the reading
//! pipeline ([`pages`](crate::pages)).

use std::time::Duration;

use annals::{LogPosition, LogRead, RecordedEvent};
use futures::stream::BoxStream;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::OnceCell;

mod ranges;

use crate::{
    pages::{self, PageSender},
    pages::{Sent, batch_rows, send_rows},
    read::{Names, log_key, log_query, pending},
};

/// The longest pause between two looks at events waiting behind an older transaction.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
const MIN_BACKOFF: Duration = Duration::from_millis(1);

/// What a log reader does once it has caught up with the horizon.
enum AtEnd {
    /// `read_all`: wait, up to a bound, for events committed before the read that are
    /// still behind an older open transaction; then end.
    Stop {
        goal: Option<i64>,
        waited: Duration,
        limit: Duration,
    },
    /// `subscribe`: wait for a notification or the poll interval, for ever.
    Follow {
        listener: Option<PgListener>,
        poll_interval: Duration,
    },
}

/// `read_all`: pages up to the end visible when the read started, then ends.
pub(crate) fn read_all(
    pool: PgPool,
    read: LogRead,
    visibility_wait: Duration,
    stats: Stats,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    let at_end = AtEnd::Stop {
        goal: None,
        waited: Duration::ZERO,
        limit: visibility_wait,
    };
    let limit = read.limit.unwrap_or(u64::MAX);
    // A small limit needs no bigger pages.
    let page_size = usize::try_from(limit).map_or(read.page_size, |l| l.min(read.page_size));
    pages::events(limit, Names::default(), move |tx| {
        tokio::spawn(produce(pool, read.after, page_size, at_end, stats, tx));
    })
}

/// `subscribe`: everything after `after`, then each event as it becomes visible.
pub(crate) fn subscribe(
    pool: PgPool,
    after: LogPosition,
    channel: Option<String>,
    poll_interval: Duration,
    stats: Stats,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    pages::events(u64::MAX, Names::default(), move |tx| {
        tokio::spawn(async move {
            // Listening starts before the first read, so no commit after it goes unnoticed.
            let listener = match channel {
                Some(channel) => listen(&pool, &channel).await,
                None => None,
            };
            let at_end = AtEnd::Follow {
                listener,
                poll_interval,
            };
            produce(pool, after, annals::DEFAULT_PAGE_SIZE, at_end, stats, tx).await;
        });
    })
}

async fn produce(
    pool: PgPool,
    mut after: LogPosition,
    page_size: usize,
    mut at_end: AtEnd,
    stats: Stats,
    tx: PageSender,
) {
    let page_size = page_size.max(1);
    let mut backoff = MIN_BACKOFF;
    // Events per transaction id in the last full page: sizes the ranges of transaction ids.
    let mut density = None;
    let mut full_pages = 0u32;
    while !tx.is_closed() {
        // A long read, past two full pages, takes the rest up to the horizon as ranges of
        // transaction ids, each several pages streamed as one binary `COPY` (which saves a
        // round trip and a plan per page, and which the client decodes in half the time), two
        // ranges read at once. Only with table statistics: without them PostgreSQL may answer
        // a keyset read with a bitmap scan and a sort of everything after the checkpoint,
        // instead of the ordered index scan.
        let long = full_pages >= 2 && *stats.get_or_init(|| have_stats(&pool)).await;
        if let (true, Some(density)) = (long, density.take()) {
            let rows = batch_rows(page_size);
            match ranges::read(&pool, after, density, rows, page_size, &tx).await {
                Sent::Stopped => return,
                Sent::Done { last, .. } => {
                    if let Some(last) = last {
                        after = last;
                        backoff = MIN_BACKOFF;
                    }
                }
            }
            // At the horizon the ranges read: on to the end-of-log checks below.
            full_pages = 0;
        } else {
            let before = after;
            let Some(mut conn) = pages::connection(&pool, &tx).await else {
                return;
            };
            let rows = log_query(after, page_size).fetch(&mut *conn);
            let sent = send_rows(rows, page_size, log_key, &tx).await;
            // Back to the pool before any wait.
            drop(conn);
            match sent {
                Sent::Stopped => return,
                Sent::Done { rows, last } => {
                    if let Some(last) = last {
                        after = last;
                        backoff = MIN_BACKOFF;
                    }
                    if rows >= page_size {
                        density = Some(ranges::density(rows, before, after));
                        full_pages = full_pages.saturating_add(1);
                        continue;
                    }
                }
            }
            full_pages = 0;
        }
        // Caught up with the horizon: are committed events still hidden behind it?
        let found = match &at_end {
            AtEnd::Stop { goal, .. } => pending(&pool, after, *goal).await,
            AtEnd::Follow { .. } => pending(&pool, after, None).await,
        };
        let found = match found {
            Ok(found) => found,
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        };
        if let AtEnd::Stop { goal, .. } = &mut at_end {
            // Fixed at the first check: the read waits only for what committed before it.
            *goal = Some(found.goal);
        }
        if found.visible {
            continue;
        }
        match &mut at_end {
            AtEnd::Stop { waited, limit, .. } => {
                if !found.waiting {
                    return;
                }
                if *waited >= *limit {
                    tracing::warn!(
                        waited = ?*waited,
                        "committed events stay hidden behind an older open transaction; \
                         ending the read at the safe horizon"
                    );
                    return;
                }
                tokio::time::sleep(backoff).await;
                *waited += backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            AtEnd::Follow {
                listener,
                poll_interval,
            } => {
                if found.waiting {
                    // Committed, but behind an older open transaction: look again soon.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                } else {
                    backoff = MIN_BACKOFF;
                    tokio::select! {
                        () = wait(listener, *poll_interval) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        }
    }
}

/// Whether the events table has planner statistics, checked once per store.
pub(crate) type Stats = std::sync::Arc<OnceCell<bool>>;

/// Analyzes the events table if it never was (a fresh table, loaded in bulk), so long reads
/// get ordered index scans; false if that fails.
async fn have_stats(pool: &PgPool) -> bool {
    let never: Result<bool, sqlx::Error> =
        sqlx::query_scalar("SELECT reltuples < 0 FROM pg_class WHERE oid = 'events'::regclass")
            .fetch_one(pool)
            .await;
    match never {
        Ok(false) => true,
        Ok(true) => match sqlx::query("ANALYZE events").execute(pool).await {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%error, "cannot analyze the events table");
                false
            }
        },
        Err(error) => {
            tracing::debug!(%error, "cannot read the events table's statistics");
            false
        }
    }
}

async fn listen(pool: &PgPool, channel: &str) -> Option<PgListener> {
    let result = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(channel).await?;
        Ok::<_, sqlx::Error>(listener)
    }
    .await;
    match result {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for notifications; polling only");
            None
        }
    }
}

/// Waits for a notification or the poll interval, whichever comes first.
async fn wait(listener: &mut Option<PgListener>, poll_interval: Duration) {
    let Some(l) = listener else {
        tokio::time::sleep(poll_interval).await;
        return;
    };
    match tokio::time::timeout(poll_interval, l.try_recv()).await {
        // Woken: drop the other wake-ups already queued, one read covers them all.
        Ok(Ok(Some(_))) => while l.next_buffered().is_some() {},
        Ok(Ok(None)) | Err(_) => {}
        Ok(Err(error)) => {
            // Lost notifications are covered by polling; the listener reconnects next time.
            tracing::debug!(%error, "notification listener failed");
            tokio::time::sleep(poll_interval).await;
        }
    }
}
