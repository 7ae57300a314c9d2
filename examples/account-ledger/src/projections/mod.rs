//! The read models: a Redis-shaped one (balances, recent transactions, rankings, totals) and
//! a tantivy search index, each kept by folding the global log with its checkpoint written
//! atomically beside its data.

mod balances;
mod entry;
mod kv;
mod runner;
mod search;

pub use balances::{AccountView, Balances, RECENT};
pub use entry::{Entry, Transaction};
pub use kv::{Kv, KvError, MemoryKv, Op};
pub use runner::{Lag, ProjectionError};
pub use search::{Filter, Hit, SearchIndex};

pub(crate) use runner::{ReadModel, catch_up, lag};
