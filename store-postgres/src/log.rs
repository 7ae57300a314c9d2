//! The global log as streams: `read_all` (up to the end visible now) and `subscribe`
//! (catch-up, then live). Both read keyset pages of `(tx, sequence)` through the reading
//! pipeline ([`pages`](crate::pages)).

use std::time::Duration;

use annals::{LogPosition, LogRead, RecordedEvent};
use futures::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::{sync::OnceCell, time::Instant};

mod ranges;

use crate::{
    bounded::Db,
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
        listener: Box<Listener>,
        poll_interval: Duration,
    },
}

/// How subscriptions listen for notifications: on a connection of their own, outside the
/// store's pool, checked when quiet.
#[derive(Debug, Clone)]
pub(crate) struct Listen {
    /// The store's connect options.
    pub(crate) options: PgConnectOptions,
    /// How long a listener may stay quiet before a round trip checks it.
    pub(crate) check: Duration,
}

/// A subscription's listener, if it has one, and when it last showed it was alive.
struct Listener {
    channel: String,
    listen: Listen,
    live: Option<PgListener>,
    since: Instant,
}

/// `read_all`: pages up to the end visible when the read started, then ends.
pub(crate) fn read_all(
    db: Db,
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
        tokio::spawn(produce(db, read.after, page_size, at_end, stats, tx));
    })
}

/// `subscribe`: everything after `after`, then each event as it becomes visible.
pub(crate) fn subscribe(
    db: Db,
    after: LogPosition,
    channel: Option<(String, Listen)>,
    poll_interval: Duration,
    stats: Stats,
) -> BoxStream<'static, annals::Result<RecordedEvent>> {
    pages::events(u64::MAX, Names::default(), move |tx| {
        tokio::spawn(async move {
            // Listening starts before the first read, so no commit after it goes unnoticed.
            let listener = match channel {
                Some((channel, listen)) => {
                    // Boxed, as the listener's wait below.
                    let live = Box::pin(listen.start(&channel, db.timeout)).await;
                    Some(Listener {
                        channel,
                        listen,
                        live,
                        since: Instant::now(),
                    })
                }
                None => None,
            };
            let at_end = AtEnd::Follow {
                listener: Box::new(listener.unwrap_or_else(Listener::none)),
                poll_interval,
            };
            produce(db, after, annals::DEFAULT_PAGE_SIZE, at_end, stats, tx).await;
        });
    })
}

async fn produce(
    db: Db,
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
        let long = full_pages >= 2 && *stats.get_or_init(|| have_stats(&db)).await;
        if let (true, Some(density)) = (long, density.take()) {
            let rows = batch_rows(page_size);
            match ranges::read(&db, after, density, rows, page_size, &tx).await {
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
            let Some(conn) = pages::connection(&db, &tx).await else {
                return;
            };
            // The connection is given back (kept in a lane, pooled or closed) before any wait.
            let sent = send_rows(
                &db,
                conn,
                log_query(after, page_size),
                page_size,
                log_key,
                &tx,
            )
            .await;
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
            AtEnd::Stop { goal, .. } => pending(&db, after, *goal).await,
            AtEnd::Follow { .. } => pending(&db, after, None).await,
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
                let pause = annals::Backoff::jittered(backoff);
                tokio::time::sleep(pause).await;
                *waited += pause;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            AtEnd::Follow {
                listener,
                poll_interval,
            } => {
                if found.waiting {
                    // Committed, but behind an older open transaction: look again soon.
                    tokio::time::sleep(annals::Backoff::jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                } else {
                    backoff = MIN_BACKOFF;
                    // Boxed: the listener's wait holds sqlx's `PgListener` futures (about
                    // 9 kB), which would make every log read's task as large.
                    tokio::select! {
                        () = Box::pin(listener.wait(*poll_interval, db.timeout)) => {}
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
async fn have_stats(db: &Db) -> bool {
    let never = db
        .run("a look at the table's statistics", async |c| {
            sqlx::query_scalar("SELECT reltuples < 0 FROM pg_class WHERE oid = 'events'::regclass")
                .fetch_one(c)
                .await
        })
        .await;
    match never {
        Ok(false) => true,
        Ok(true) => {
            let analyzed = db
                .run("ANALYZE", async |c| {
                    sqlx::query("ANALYZE events").execute(c).await
                })
                .await;
            match analyzed {
                Ok(_) => true,
                Err(error) => {
                    tracing::debug!(?error, "cannot analyze the events table");
                    false
                }
            }
        }
        Err(error) => {
            tracing::debug!(?error, "cannot read the events table's statistics");
            false
        }
    }
}

impl Listen {
    /// A listener on `channel`, on a connection of its own (a pool of one, apart from the
    /// store's: a dead listener's connection, which sqlx unlistens in the background when it is
    /// dropped, may hang there until the kernel gives up on it, and must not hold a place in
    /// the store's pool meanwhile); `None` when that fails within `timeout` (polling only).
    async fn start(&self, channel: &str, timeout: Duration) -> Option<PgListener> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(timeout)
            .connect_lazy_with(self.options.clone());
        let result = tokio::time::timeout(timeout, async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        })
        .await;
        match result {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot listen for notifications; polling only");
                None
            }
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "no answer to LISTEN within the I/O timeout; polling only"
                );
                None
            }
        }
    }
}

impl Listener {
    /// No notifications: polling only (never checked, never started).
    fn none() -> Self {
        Self {
            channel: String::new(),
            listen: Listen {
                options: PgConnectOptions::new(),
                check: Duration::MAX,
            },
            live: None,
            since: Instant::now(),
        }
    }

    /// Waits for a notification or the poll interval, whichever comes first. A listener quiet
    /// for longer than its check interval is checked by a round trip within `timeout`, and
    /// replaced when it does not answer (a connection a silent network cut off would otherwise
    /// wait for notifications that never come, the subscription left to its polls); a
    /// subscription without a listener tries to listen again at that interval.
    async fn wait(&mut self, poll_interval: Duration, timeout: Duration) {
        if self.since.elapsed() >= self.listen.check {
            self.since = Instant::now();
            if let Some(live) = &mut self.live {
                let check = sqlx::query("SELECT 1").execute(&mut *live);
                if !matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(_))) {
                    tracing::warn!("the notification listener does not answer; replacing it");
                    // Dropped, it is unlistened and closed in the background, in its own pool.
                    self.live = None;
                }
            }
            if self.live.is_none() {
                self.live = self.listen.start(&self.channel, timeout).await;
                self.since = Instant::now();
                // What was notified meanwhile: the caller's poll reads it.
                return;
            }
        }
        // Never past the next check: a long poll interval must not postpone it.
        let until_check = self.listen.check.saturating_sub(self.since.elapsed());
        let wait = poll_interval.min(until_check.max(Duration::from_millis(1)));
        let Some(l) = &mut self.live else {
            tokio::time::sleep(wait).await;
            return;
        };
        match tokio::time::timeout(wait, l.try_recv()).await {
            // Woken: drop the other wake-ups already queued, one read covers them all.
            Ok(Ok(Some(_))) => {
                self.since = Instant::now();
                while l.next_buffered().is_some() {}
            }
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(error)) => {
                // Lost notifications are covered by polling; the listener reconnects next time.
                tracing::debug!(%error, "notification listener failed");
                tokio::time::sleep(poll_interval).await;
            }
        }
    }
}
