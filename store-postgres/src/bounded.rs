//! Every wait on the server has a bound ([`PgConfig::with_io_timeout`]): a database behind a
//! network that drops packets without a reset would otherwise be noticed only by the kernel's
//! TCP timeout, about 15 minutes later.
//!
//! A statement that got no answer in time leaves its connection in an unknown state (the
//! answer may still come, or half of it): that connection is closed, never pooled again. The
//! error is [`Error::TimedOut`](crate::Error::TimedOut), transient.
//!
//! [`PgConfig::with_io_timeout`]: crate::PgConfig::with_io_timeout

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{PgPool, Postgres, pool::PoolConnection, postgres::PgConnection};

use crate::{
    error::{Error, Failure, answered_live},
    seen::Seen,
    single::Privileges,
};

/// The store's pool with the bound of its waits.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub(crate) pool: PgPool,
    pub(crate) timeout: Duration,
    /// Pooled connections kept checked out between statements (see [`Lanes`]).
    pub(crate) lanes: Arc<Lanes>,
    /// Whether appends go as plain statements or through the append functions.
    pub(crate) privileges: Arc<Privileges>,
    /// The streams' versions this store has seen in `events` (see [`Seen`]).
    pub(crate) seen: Arc<Seen>,
}

/// A few pooled connections kept checked out between the store's short statements (appends,
/// loads, look-ups), so that a statement takes one without the pool's checkout and gives it
/// back without the round trip with which the pool tests every connection returned to it
/// (sqlx pings each one, on a task of its own). They stay counted in the pool's size, so the
/// store never holds more connections than the pool allows; at most a quarter of them (at
/// least one) wait here, so the pool keeps connections for every other use.
///
/// A connection goes back to a lane only after its statement answered on a live connection;
/// a statement dropped mid-way, or one that failed on a dead connection, returns its
/// connection to the pool instead (which tests it), or closes it when it got no answer in
/// time.
#[derive(Debug)]
pub(crate) struct Lanes {
    idle: Mutex<Vec<PoolConnection<Postgres>>>,
    max_connections: u32,
    cap: usize,
    /// Dropped with the lanes: ends the task that gives them back when the pool closes.
    _dropped: tokio::sync::oneshot::Sender<()>,
}

impl Lanes {
    /// Lanes for `pool` of `max_connections`: a quarter of them (none below four). When the
    /// pool is closed ([`PgPool::close`] waits for every checked-out connection), the idle
    /// lane connections go back to it at once.
    pub(crate) fn new(pool: &PgPool, max_connections: u32) -> Arc<Self> {
        let (dropped, gone) = tokio::sync::oneshot::channel();
        let lanes = Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            max_connections,
            cap: usize::try_from(max_connections / 4).unwrap_or(0),
            _dropped: dropped,
        });
        let weak = Arc::downgrade(&lanes);
        let closing = pool.close_event();
        tokio::spawn(async move {
            tokio::select! {
                () = closing => {
                    if let Some(lanes) = weak.upgrade() {
                        lanes.release();
                    }
                }
                _ = gone => {}
            }
        });
        lanes
    }

    /// An idle lane connection, if any.
    pub(crate) fn take(&self) -> Option<PoolConnection<Postgres>> {
        self.idle.lock().ok()?.pop()
    }

    /// Keeps `conn` for the next statement, or gives it back to the pool when the lanes are
    /// full, when the pool has no connection left to give (someone may wait for one), or
    /// when the pool is closing.
    fn keep(&self, conn: PoolConnection<Postgres>, pool: &PgPool) {
        if pool.is_closed() || (pool.size() >= self.max_connections && pool.num_idle() == 0) {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() < self.cap {
            idle.push(conn);
        }
    }

    /// Gives every idle lane connection back to the pool, which tests each (after the server
    /// may have closed them all: a restart, `pg_terminate_backend`).
    pub(crate) fn release(&self) {
        let idle = self
            .idle
            .lock()
            .map(|mut idle| std::mem::take(&mut *idle))
            .unwrap_or_default();
        drop(idle);
    }
}

impl Db {
    /// The error for `operation` after the bound ran out.
    pub(crate) fn timed_out(&self, operation: &'static str) -> Error {
        timed_out(operation, self.timeout, false)
    }

    /// Runs `statement` on a pooled connection within the bound; the connection is closed if
    /// the bound runs out. Taking the connection is bounded by the pool's acquire timeout.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Failure> {
        self.run_as(operation, false, statement).await
    }

    /// [`Db::run`] for an append: its error says that it may have been stored.
    pub(crate) async fn append<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Failure> {
        self.run_as("an append", true, statement).await
    }

    async fn run_as<T>(
        &self,
        operation: &'static str,
        maybe_committed: bool,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Failure> {
        let conn = self.acquire().await?;
        self.run_on(conn, operation, maybe_committed, statement)
            .await
    }

    async fn run_on<T>(
        &self,
        mut conn: PoolConnection<Postgres>,
        operation: &'static str,
        maybe_committed: bool,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, statement(&mut conn)).await {
            Ok(result) => {
                // Answered on a live connection: keep it in a lane for the next statement.
                // Otherwise it goes back to the pool, which tests it.
                if answered_live(&result) {
                    self.keep(conn);
                }
                Ok(result?)
            }
            Err(_) => {
                close(conn);
                Err(Failure::TimedOut(timed_out(
                    operation,
                    self.timeout,
                    maybe_committed,
                )))
            }
        }
    }

    /// A connection for a statement the caller runs itself (a long read): an idle lane's, or
    /// a pooled one.
    ///
    /// The pool's wait is boxed: sqlx's `acquire` future is about 8.6 kB, and unboxed it made
    /// every future awaiting this one as large, the command path's included (a load or an
    /// append on a direct connection never acquires, yet its future held the space and was
    /// copied whole at each box and first poll: 4 copies of about 9 kB a command, about a
    /// third of the uncached command path's client instructions; store-postgres/PERFORMANCE.md,
    /// "Futures a tenth the size").
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        match self.lanes.take() {
            Some(conn) => Ok(conn),
            None => Box::pin(self.pool.acquire()).await,
        }
    }

    /// Gives back a connection whose statement ran to its end and answered: kept in a lane
    /// for the next statement ([`Lanes`]), not handed to the pool, which would test it with a
    /// round trip on a task of its own (and open another connection for a statement that
    /// came meanwhile).
    pub(crate) fn keep(&self, conn: PoolConnection<Postgres>) {
        self.lanes.keep(conn, &self.pool);
    }

    /// [`Db::run`] as the store contract's error.
    pub(crate) async fn read<T>(
        &self,
        operation: &'static str,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> annals::Result<T> {
        Ok(self.run(operation, statement).await?)
    }

    /// Waits for `future`, a step of a statement running on a connection the caller holds,
    /// within the bound: `Err` when it ran out (the caller must then close the connection).
    pub(crate) async fn within<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = T>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, future)
            .await
            .map_err(|_| self.timed_out(operation))
    }
}

/// [`Error::TimedOut`].
pub(crate) fn timed_out(operation: &'static str, after: Duration, maybe_committed: bool) -> Error {
    Error::TimedOut {
        operation,
        after,
        maybe_committed,
    }
}

/// Closes a pooled connection at once, without a word to the server (which may not answer),
/// and frees its place in the pool.
pub(crate) fn close(conn: PoolConnection<sqlx::Postgres>) {
    drop(conn.detach());
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    use super::*;

    /// sqlx's pool wait is a future of several kilobytes; awaited unboxed, it made every
    /// future around it as large, and each was copied whole at its box and first poll.
    #[tokio::test]
    async fn a_wait_for_the_pool_does_not_make_its_callers_large() {
        // Lazy: nothing connects, and no future here is polled.
        let pool = PgPoolOptions::new().connect_lazy_with(PgConnectOptions::new());
        let db = Db {
            pool: pool.clone(),
            timeout: Duration::from_secs(1),
            lanes: Lanes::new(&pool, 4),
            privileges: Arc::default(),
            seen: Arc::default(),
        };
        let unboxed = std::mem::size_of_val(&pool.acquire());
        let acquire = std::mem::size_of_val(&db.acquire());
        let append = db.append(async |c| sqlx::query("SELECT 1").execute(c).await);
        let append = std::mem::size_of_val(&append);
        // About 8.6 kB in a release build, 2.5 kB in a debug one.
        assert!(
            unboxed > 2048,
            "sqlx's acquire is {unboxed} bytes: is this test still needed?"
        );
        assert!(acquire <= 256, "Db::acquire is {acquire} bytes");
        assert!(
            append < unboxed / 2,
            "Db::append is {append} bytes, sqlx's acquire {unboxed}"
        );
    }
}
