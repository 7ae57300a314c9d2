//! Telling "the server cannot be reached" from "the pool is busy": the pool retries refused
//! connections until its acquire timeout and then says only "pool timed out", so the store
//! opens one connection itself, bounded by the connect timeout, and names what failed.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};

use crate::{Error, PgConfig};

/// One connection attempt, on demand.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    options: PgConnectOptions,
    timeout: Duration,
    address: String,
    /// The last check that found the server unreachable: when it began, and its verdict.
    /// A successful check clears it.
    last_unreachable: Arc<Mutex<Option<(Instant, Error)>>>,
}

impl Probe {
    pub(crate) fn new(options: PgConnectOptions, timeout: Duration) -> Self {
        let address = PgConfig::address(&options);
        Self {
            options,
            timeout,
            address,
            last_unreachable: Arc::default(),
        }
    }

    /// Opens and closes one connection: [`Error::Unreachable`] when that fails or takes
    /// longer than the connect timeout; `Ok` when the server answers (authentication and
    /// database errors are not about reaching it: they come back as they are).
    pub(crate) async fn check(&self) -> Result<(), Error> {
        let began = Instant::now();
        let verdict = match tokio::time::timeout(self.timeout, self.options.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Ok(())
            }
            Ok(Err(error @ sqlx::Error::Database(_))) => Err(Error::Connect(error)),
            Ok(Err(error)) => Err(Error::unreachable(&self.address, Some(error))),
            Err(_) => Err(Error::unreachable(&self.address, None)),
        };
        if let Ok(mut last) = self.last_unreachable.lock() {
            match &verdict {
                Err(error @ Error::Unreachable { .. }) => {
                    if last.as_ref().is_none_or(|(at, _)| *at < began) {
                        *last = error.copy().map(|e| (began, e));
                    }
                }
                _ => *last = None,
            }
        }
        verdict
    }

    /// The verdict of a check that found the server unreachable and began after `since`: a
    /// call queued at `since` has waited through that check, and another attempt would only
    /// wait as long again.
    pub(crate) fn unreachable_since(&self, since: Instant) -> Option<Error> {
        let last = self.last_unreachable.lock().ok()?;
        let (began, error) = last.as_ref()?;
        (*began > since).then(|| error.copy()).flatten()
    }

    /// After `error`: the unreachable server it hides (a pool timeout while the server is
    /// down), if that is what it is.
    pub(crate) async fn explain(&self, error: &sqlx::Error) -> Option<Error> {
        if !matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
            return None;
        }
        self.check()
            .await
            .err()
            .filter(|e| matches!(e, Error::Unreachable { .. }))
    }
}
