#![doc = include_str!("../README.md")]
//!
//! # Performance
#![doc = include_str!("../PERFORMANCE.md")]

mod aggregate;
mod batch;
mod bounded;
mod config;
mod copy;
mod direct;
mod error;
mod group;
mod idempotency;
mod info;
mod loads;
mod log;
mod pages;
mod probe;
mod read;
mod seen;
mod single;
mod store;
mod stream;
mod writer;

#[doc(hidden)]
pub use config::{HookFn, TestHooks};
pub use config::{MAX_SCHEMA_NAME_BYTES, PgConfig, validate_schema_name};
pub use error::{ConnectFailure, Error, Result};
pub use store::PgEventStore;
