//! Telling "the server cannot be reached" from "the pool is busy": the pool retries refused
//! connections until its acquire timeout and then says only "pool timed out", so the store
//! opens one connection itself, bounded by the connect timeout, and names what failed.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, postgres::PgConnectOptions};

use crate::{Error, PgConfig};

/// One connection attempt, on demand.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    options: PgConnectOptions,
    timeout: Duration,
    address: String,
}

impl Probe {
    pub(crate) fn new(options: PgConnectOptions, timeout: Duration) -> Self {
        let address = PgConfig::address(&options);
        Self {
            options,
            timeout,
            address,
        }
    }

    /// Opens and closes one connection: [`Error::Unreachable`] when that fails or takes
    /// longer than the connect timeout; `Ok` when the server answers (authentication and
    /// database errors are not about reaching it: they come back as they are).
    pub(crate) async fn check(&self) -> Result<(), Error> {
        match tokio::time::timeout(self.timeout, self.options.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Ok(())
            }
            Ok(Err(error @ sqlx::Error::Database(_))) => Err(Error::Connect(error)),
            Ok(Err(error)) => Err(Error::unreachable(&self.address, Some(error))),
            Err(_) => Err(Error::unreachable(&self.address, None)),
        }
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
