#![doc = include_str!("../README.md")]

mod append;
mod config;
mod error;
mod idempotency;
mod open;
mod read;
mod row;
mod snapshot;
mod store;

pub use config::{Durability, SqliteConfig};
pub use error::{Error, Result};
pub use store::SqliteEventStore;
