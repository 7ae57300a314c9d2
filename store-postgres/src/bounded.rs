//! Every wait on the server has a bound ([`PgConfig::with_io_timeout`]): a database behind a
//! network that drops packets without a reset would otherwise be noticed only by the kernel's
//! TCP timeout, about 15 minutes later.
//!
//! A statement that got no answer in time leaves its connection in an unknown state (the
//! answer may still come, or half of it): that connection is closed, never pooled again. The
//! error is [`Error::TimedOut`](crate::Error::TimedOut), transient.
//!
//! [`PgConfig::with_io_timeout`]: crate::PgConfig::with_io_timeout

use std::{future::Future, time::Duration};

use sqlx::{PgPool, pool::PoolConnection, postgres::PgConnection};

use crate::error::{Error, Failure};

/// The store's pool with the bound of its waits.
#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub(crate) pool: PgPool,
    pub(crate) timeout: Duration,
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
        let mut conn = self.pool.acquire().await?;
        let answer = tokio::time::timeout(self.timeout, statement(&mut conn)).await;
        finish(conn, answer, || {
            timed_out(operation, self.timeout, maybe_committed)
        })
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

/// The answer of a bounded statement; its connection closed when there was none in time.
fn finish<T>(
    conn: PoolConnection<sqlx::Postgres>,
    answer: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
    error: impl FnOnce() -> Error,
) -> Result<T, Failure> {
    match answer {
        Ok(result) => Ok(result?),
        Err(_) => {
            close(conn);
            Err(Failure::TimedOut(error()))
        }
    }
}

/// Closes a pooled connection at once, without a word to the server (which may not answer),
/// and frees its place in the pool.
pub(crate) fn close(conn: PoolConnection<sqlx::Postgres>) {
    drop(conn.detach());
}
