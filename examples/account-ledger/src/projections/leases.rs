//! Who may write a read model: the projection leases of each mode.
//!
//! Server mode takes them from PostgreSQL (`PgLeases`, a table in the ledger's schema), so
//! any number of `ledger` processes on any number of machines agree on one owner and on
//! ever-growing fencing numbers.
//!
//! Embedded mode runs one process per command. `InMemoryLeases` would start every process's
//! fences at 1 again, while the search index remembers the highest fence it has seen, so a
//! later process would be refused as fenced. `SqliteLeases` keeps the leases in the store's
//! own SQLite file instead, so fences keep growing across processes. Read models that live
//! in the process (the embedded balances) take in-process leases: no other process can
//! write them.

use std::{collections::BTreeSet, path::Path, sync::Arc, time::Duration};

use annals::EventStore;
use annals_brokers::{Broker, Publisher};
use annals_projections::{
    EventFilter, Fence, InMemoryLeases, LeaseStore, ProjectionConfig, ProjectionRunner, Reactor,
    Result,
};
use annals_projections_sql::{PgLeases, PgTables, SqlSchema, SqliteLeases, SqliteTables};
use futures::future::BoxFuture;
use sqlx::{
    PgPool, SqlitePool,
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
};

/// The leases of the two modes.
#[derive(Debug, Clone)]
pub enum LedgerLeases {
    /// A table in the SQLite file (embedded mode); `local` projections stay in process.
    Sqlite {
        /// The store's file.
        pool: SqlitePool,
        /// The shared leases.
        leases: SqliteLeases,
        /// Projections whose read model lives in this process.
        local: Arc<BTreeSet<String>>,
        /// Their leases.
        memory: InMemoryLeases,
    },
    /// A table in the PostgreSQL schema (server mode).
    Postgres {
        /// The leases.
        leases: PgLeases,
        /// The store's pool.
        pool: PgPool,
        /// The ledger's schema.
        schema: String,
    },
}

impl LedgerLeases {
    /// Leases in the SQLite file at `path` (the store's own file); the projections in
    /// `local` take in-process leases.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub async fn sqlite<I: IntoIterator<Item = T>, T: Into<String>>(
        path: &Path,
        local: I,
    ) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(annals_projections_sql::SqlError::from)?;
        Ok(Self::Sqlite {
            leases: SqliteLeases::new(pool.clone()),
            pool,
            local: Arc::new(local.into_iter().map(Into::into).collect()),
            memory: InMemoryLeases::new(),
        })
    }

    /// Creates what the leases need (their table).
    ///
    /// # Errors
    /// Database failures.
    pub async fn prepare(&self) -> Result<()> {
        match self {
            Self::Sqlite { leases, .. } => leases.migrate().await,
            Self::Postgres { leases, .. } => leases.migrate().await,
        }
    }

    /// Starts `reactor` in `runner`, its checkpoint kept beside the leases (a table in the
    /// SQLite file, or in the PostgreSQL schema), so a new process resumes where the last
    /// one committed.
    ///
    /// # Errors
    /// The checkpoint table cannot be created; as `ProjectionRunner::add_reactor`.
    pub async fn add_reactor<S, R>(
        &self,
        runner: &ProjectionRunner<S>,
        reactor: R,
        config: ProjectionConfig,
    ) -> Result<()>
    where
        S: EventStore + Clone + 'static,
        R: Reactor<S>,
    {
        let name = reactor.name().to_owned();
        match self {
            Self::Sqlite { pool, .. } => {
                let checkpoints = SqliteTables::new(pool.clone(), &name, SqlSchema::new())?;
                checkpoints.migrate().await?;
                runner.add_reactor(reactor, checkpoints, config)
            }
            Self::Postgres { pool, schema, .. } => {
                let checkpoints = PgTables::new(pool.clone(), schema, &name, SqlSchema::new())?;
                checkpoints.migrate().await?;
                runner.add_reactor(reactor, checkpoints, config)
            }
        }
    }

    /// Starts a publisher of the events `filter` accepts to `broker` in `runner`, named
    /// `name`, its checkpoint kept beside the leases (as [`LedgerLeases::add_reactor`]), so a
    /// new process publishes on from the last batch the broker confirmed.
    ///
    /// # Errors
    /// The checkpoint table cannot be created; as `ProjectionRunner::add`.
    pub async fn add_publisher<S, B>(
        &self,
        runner: &ProjectionRunner<S>,
        name: &str,
        filter: EventFilter,
        broker: B,
        config: ProjectionConfig,
    ) -> Result<()>
    where
        S: EventStore + Clone + 'static,
        B: Broker,
    {
        match self {
            Self::Sqlite { pool, .. } => {
                let checkpoints = SqliteTables::new(pool.clone(), name, SqlSchema::new())?;
                checkpoints.migrate().await?;
                Publisher::new(name, filter, broker).add_to(runner, checkpoints, config)
            }
            Self::Postgres { pool, schema, .. } => {
                let checkpoints = PgTables::new(pool.clone(), schema, name, SqlSchema::new())?;
                checkpoints.migrate().await?;
                Publisher::new(name, filter, broker).add_to(runner, checkpoints, config)
            }
        }
    }

    fn pick(&self, projection: &str) -> &dyn LeaseStore {
        match self {
            Self::Sqlite { local, memory, .. } if local.contains(projection) => memory,
            Self::Sqlite { leases, .. } => leases,
            Self::Postgres { leases, .. } => leases,
        }
    }
}

impl LeaseStore for LedgerLeases {
    fn try_acquire<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Fence>>> {
        self.pick(projection).try_acquire(projection, owner, ttl)
    }

    fn renew<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        self.pick(projection).renew(projection, owner, fence, ttl)
    }

    fn release<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
    ) -> BoxFuture<'a, Result<()>> {
        self.pick(projection).release(projection, owner, fence)
    }
}
