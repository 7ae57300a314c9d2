//! Where the events and read models live.
//!
//! - Server mode (`DATABASE_URL` and `REDIS_URL` both set, or `--backend server`): the
//!   PostgreSQL store in schema `--pg-schema`, the balances in Redis under `--redis-prefix`,
//!   projection leases in a table of the same schema.
//! - Embedded mode (neither set, or `--backend embedded`): the data directory holds the
//!   SQLite store (`events.sqlite`) and the leases (`leases/`); the balances are kept in
//!   process and built by replay at the first query of each run.
//!
//! The notification feed of `ledger notify` is the consumer's own store: the schema
//! `<pg-schema>_notify` in server mode, `DATA_DIR/notifications.sqlite` in embedded mode.
//!
//! Either way the tantivy index lives in the data directory (`search/`, or
//! `search-<schema>/search/` in server mode so two schemas never share an index). Only
//! queries touch a read model: a write works with Redis down.

use std::{error::Error as StdError, path::Path};

use annals::EventStore;
use annals_postgres::{PgConfig, PgEventStore};
use annals_projections_sql::PgLeases;
use annals_sqlite::{SqliteConfig, SqliteEventStore};

use crate::{
    app::{App, BalancesTarget, ReadConfig},
    cli::{BackendChoice, Cli, Command},
    notify::{NatsSettings, NotifyTarget},
    projections::{BALANCES, LedgerLeases},
};

/// Why the backends could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Only one of the two URLs is set.
    #[error(
        "set both DATABASE_URL and REDIS_URL for the server mode, or neither for the embedded mode (or pass --backend embedded)"
    )]
    HalfConfigured,
    /// The SQLite store did not open.
    #[error("cannot open the embedded store")]
    Sqlite(#[from] annals_sqlite::Error),
    /// PostgreSQL is unreachable or its schema cannot be set up.
    #[error("cannot use PostgreSQL")]
    Postgres(#[from] annals_postgres::Error),
    /// The projection leases cannot be set up (a schema name PostgreSQL leases refuse).
    #[error("cannot set up the projection leases")]
    Leases(#[from] annals_projections::Error),
}

/// The chosen backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL + Redis.
    Server {
        /// PostgreSQL URL.
        database_url: String,
        /// Redis URL.
        redis_url: String,
    },
    /// The data directory.
    Embedded,
}

impl Backend {
    /// Picks the backend from the flags and environment.
    ///
    /// # Errors
    /// [`BackendError::HalfConfigured`] when only one URL is set (or server mode lacks one).
    pub fn choose(cli: &Cli) -> Result<Self, BackendError> {
        let urls = (cli.database_url.clone(), cli.redis_url.clone());
        match (cli.backend, urls) {
            (BackendChoice::Embedded, _) => Ok(Self::Embedded),
            (_, (Some(database_url), Some(redis_url))) => Ok(Self::Server {
                database_url,
                redis_url,
            }),
            (BackendChoice::Auto, (None, None)) => Ok(Self::Embedded),
            _ => Err(BackendError::HalfConfigured),
        }
    }

    /// Runs the command line's command on the chosen backend.
    ///
    /// # Errors
    /// Setup failures and the command's own error, boxed for printing.
    pub async fn run(cli: Cli) -> Result<(), Box<dyn StdError + Send + Sync>> {
        if matches!(cli.command, Command::Demo) {
            return crate::demo::run(&cli.data_dir).await;
        }
        match Self::choose(&cli)? {
            Self::Embedded => {
                let app = embedded_app(&cli.data_dir)
                    .await?
                    .with_lease_ttl(cli.lease_ttl)
                    .with_nats(nats(&cli));
                run(app, cli.command).await
            }
            Self::Server {
                database_url,
                redis_url,
            } => {
                let store = PgEventStore::connect(
                    PgConfig::new(database_url).with_schema(cli.pg_schema.clone()),
                )
                .await
                .map_err(BackendError::from)?;
                store.migrate().await.map_err(BackendError::from)?;
                let leases = PgLeases::new(store.pool().clone(), &cli.pg_schema)
                    .map_err(BackendError::from)?;
                let read = ReadConfig {
                    balances: BalancesTarget::Redis {
                        url: redis_url,
                        namespace: cli.redis_prefix.clone(),
                    },
                    search_root: cli.data_dir.join(format!("search-{}", cli.pg_schema)),
                    leases: LedgerLeases::Postgres {
                        leases,
                        pool: store.pool().clone(),
                        schema: cli.pg_schema.clone(),
                    },
                };
                let notify = NotifyTarget::Postgres {
                    pool: store.pool().clone(),
                    schema: format!("{}_notify", cli.pg_schema),
                };
                let app = App::new(store, read)
                    .with_lease_ttl(cli.lease_ttl)
                    .with_nats(nats(&cli))
                    .with_notify_store(notify);
                run(app, cli.command).await
            }
        }
    }
}

/// Runs one command, then stops the read side cleanly whatever the outcome.
async fn run<S: EventStore + Clone + 'static>(
    app: App<S>,
    command: Command,
) -> Result<(), Box<dyn StdError + Send + Sync>> {
    let outcome = app.run(command).await;
    app.shutdown().await;
    Ok(outcome?)
}

/// The app over the data directory `dir`: SQLite store, in-process balances, search index in
/// `dir/search`, leases in the store's file.
///
/// # Errors
/// [`BackendError::Sqlite`] when the store cannot be opened.
pub async fn embedded_app(dir: &Path) -> Result<App<SqliteEventStore>, BackendError> {
    let file = dir.join("events.sqlite");
    let store = SqliteEventStore::open(SqliteConfig::new(&file)).await?;
    let leases = LedgerLeases::sqlite(&file, [BALANCES]).await?;
    let read = ReadConfig {
        balances: BalancesTarget::Memory,
        search_root: dir.to_owned(),
        leases,
    };
    Ok(App::new(store, read)
        .with_notify_store(NotifyTarget::Sqlite(dir.join("notifications.sqlite"))))
}

/// Where the ledger's events go on NATS, when `--nats-url` is given.
fn nats(cli: &Cli) -> Option<NatsSettings> {
    cli.nats_url.as_ref().map(|url| NatsSettings {
        url: url.clone(),
        stream: cli.nats_stream.clone(),
        prefix: cli.nats_prefix.clone(),
    })
}
