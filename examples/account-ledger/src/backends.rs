//! Where the events and read models live.
//!
//! - Server mode (`DATABASE_URL` and `REDIS_URL` both set, or `--backend server`): the
//!   PostgreSQL store in schema `--pg-schema`, Redis read models under `--redis-prefix`.
//! - Embedded mode (neither set, or `--backend embedded`): the data directory holds the
//!   SQLite store (`events.sqlite`); the Redis-shaped read models are kept in process and
//!   rebuilt by replay at the first query of each run.
//!
//! Either way the tantivy index lives in the data directory (`search/`, or
//! `search-<schema>/` in server mode so two schemas never share an index).

use std::error::Error as StdError;

use annals_postgres::{PgConfig, PgEventStore};
use annals_sqlite::{SqliteConfig, SqliteEventStore};

use crate::{
    app::App,
    cli::{BackendChoice, Cli, Command},
    projections::Kv,
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
    /// Redis is unreachable.
    #[error("cannot use Redis")]
    Redis(#[from] crate::projections::KvError),
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
                let app = embedded_app(&cli.data_dir).await?;
                app.run(cli.command).await?;
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
                let kv = Kv::redis(&redis_url).await.map_err(BackendError::from)?;
                let search_root = cli.data_dir.join(format!("search-{}", cli.pg_schema));
                let app = App::new(store, kv, &cli.redis_prefix, search_root, false);
                app.run(cli.command).await?;
            }
        }
        Ok(())
    }
}

/// The app over the data directory `dir`: SQLite store, in-process read models, search
/// index in `dir/search`.
///
/// # Errors
/// [`BackendError::Sqlite`] when the store cannot be opened.
pub async fn embedded_app(dir: &std::path::Path) -> Result<App<SqliteEventStore>, BackendError> {
    let store = SqliteEventStore::open(SqliteConfig::new(dir.join("events.sqlite"))).await?;
    Ok(App::new(
        store,
        Kv::memory(),
        "ledger",
        dir.join("search"),
        true,
    ))
}
