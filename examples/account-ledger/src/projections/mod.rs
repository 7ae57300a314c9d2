//! The read models, as `annals-projections` projections: balances (in process or in Redis)
//! and a tantivy search index. The runner (`ProjectionRunner`) follows the log, commits each
//! batch with its checkpoint, owns each projection through a fenced lease and rebuilds
//! blue/green; this module holds only what the ledger projects and how it reads it.

mod balances;
mod entry;
mod leases;
mod search;

pub use balances::{
    AccountDoc, AccountView, BALANCES, Balances, CurrencyTop, MemoryBalances, RECENT, RedisBalances,
};
pub use entry::{AccountInfo, Change, Entry, Transaction, info_key};
pub use leases::LedgerLeases;
pub use search::{Fields, Filter, Hit, SEARCH, SearchProjection, open_index, search};

/// Why a read model could not be read or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Redis did not accept a connection: queries of the balances fail at once, while
    /// commands (which never need a read model) still work.
    #[error("the balances read model is unavailable: cannot reach Redis at {url}")]
    Unavailable {
        /// Redis's URL, without a password.
        url: String,
        /// What the connection said.
        #[source]
        source: redis::RedisError,
    },
    /// The projection runner or a read model failed (a timeout names what the projection
    /// was doing).
    #[error("the read models failed")]
    Projection(#[from] annals_projections::Error),
    /// Reading the event store failed.
    #[error("reading the event store failed")]
    Store(#[from] annals::Error),
    /// A projection failed and serves nothing (its status says why).
    #[error(
        "the {name} read model cannot serve ({status}); `ledger rebuild {name}` builds it again from the events"
    )]
    NotServing {
        /// The projection.
        name: &'static str,
        /// Its status.
        status: String,
    },
    /// The search index's files cannot be read (damaged).
    #[error(
        "the search index cannot be read; `ledger rebuild search` builds it again from the events"
    )]
    Index(#[source] annals_projections::Error),
    /// A search query did not parse.
    #[error("bad search query")]
    Query(#[source] tantivy::query::QueryParserError),
    /// A read-model value did not parse.
    #[error("a read-model value is corrupt")]
    Corrupt(#[source] serde_json::Error),
    /// A read model had no generation after catching up (a bug).
    #[error("the {0} read model has not been built")]
    NotBuilt(&'static str),
}
