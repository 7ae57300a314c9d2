#![doc = include_str!("../README.md")]

mod config;
mod error;
mod handler;
mod lease;
#[cfg(feature = "postgres")]
mod lease_pg;
mod model;
mod policy;
mod progress;
mod projection;
#[cfg(feature = "redis")]
mod redis;
mod runner;
mod status;
mod supervisor;
#[cfg(feature = "tantivy")]
mod tantivy;
mod worker;

pub use config::{ProjectionConfig, RebuildReport, RunnerConfig};
pub use error::{Error, Result};
pub use lease::{InMemoryLeases, LeaseStore};
#[cfg(feature = "postgres")]
pub use lease_pg::PgLeases;
pub use model::{
    DeadLetter, Durability, Fence, Generation, GenerationWriter, Generations, ReadModel, WriteBatch,
};
pub use policy::{Backoff, FailurePolicy};
pub use progress::ProgressDisplay;
pub use projection::{EventFilter, Projection, check_name};
#[cfg(feature = "redis")]
pub use redis::{
    DEAD_LETTER_KEY, RedisBatch, RedisConnection, RedisReadModel, RedisView, RedisWriter,
};
pub use runner::ProjectionRunner;
pub use status::{ProjectionState, ProjectionStatus, RebuildProgress, StopReason};
#[cfg(feature = "tantivy")]
pub use tantivy::{
    TantivyBatch, TantivyConfig, TantivyHit, TantivyReadModel, TantivyView, TantivyWriter,
};
