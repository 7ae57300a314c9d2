#![doc = include_str!("../README.md")]

mod error;
mod lease;
mod memory;
mod model;
mod projection;
mod reactor;
#[cfg(feature = "redis")]
mod redis;
pub mod resilience;
mod runner;
#[cfg(feature = "tantivy")]
mod tantivy;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use lease::{InMemoryLeases, LeaseStore};
pub use memory::{MemoryBatch, MemoryReadModel, MemoryView, MemoryWriter};
pub use model::{
    DeadLetter, Durability, Fence, Generation, GenerationWriter, Generations, ReadModel,
    WriteBatch,
    lookups::{LookupError, LookupKeys, Lookups},
};
pub use projection::{EventFilter, Projection, check_name};
pub use reactor::{
    Reaction, Reactor,
    clock::{Clock, ManualClock, SystemClock},
    deadline::{
        DEADLINE_CATEGORY, DEADLINE_TIMER, Deadline, DeadlineCommand, DeadlineEvent, DeadlineInfo,
        DeadlineRefused, DeadlineState, Deadlines,
    },
    saga::{Observed, Saga},
};
#[cfg(feature = "redis")]
pub use redis::{
    DEAD_LETTER_KEY, LOOKUP_KEY, RedisBatch, RedisConnection, RedisReadModel, RedisView,
    RedisWriter,
};
pub use resilience::{
    BreakerState, CallError, Dependency, DependencyConfig, DependencyStatus, Retryable,
};
pub use runner::ProjectionRunner;
pub use runner::config::{ProjectionConfig, RebuildReport, RunnerConfig, StoreChange};
pub use runner::inspect::{ReadModelStatus, inspect};
pub use runner::policy::{Backoff, FailurePolicy};
pub use runner::progress::ProgressDisplay;
pub use runner::status::{
    Degraded, ProjectionState, ProjectionStatus, RebuildProgress, StopReason,
};
#[cfg(feature = "tantivy")]
pub use tantivy::{
    TantivyBatch, TantivyConfig, TantivyHit, TantivyReadModel, TantivyView, TantivyWriter,
};
