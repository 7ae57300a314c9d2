//! Annals: event sourcing and CQRS for Rust.
//!
//! This crate holds the model and the contract; it knows no database. Stores implement
//! [`EventStore`] (`annals-postgres`, `annals-sqlite`, and [`InMemoryEventStore`] here), and
//! `annals-projections` turns the global log into read models.
//!
//! - [`StreamId`], [`EventType`]: validated names, checked before any I/O.
//! - [`NewEvent`], [`RecordedEvent`]: an event going in and coming out, with [`Metadata`].
//! - [`ExpectedVersion`], [`LogPosition`]: optimistic concurrency and the global log order.
//! - [`DomainEvent`], [`UpcasterChain`]: typed events, their schema versions and upcasting.
//! - [`Aggregate`], [`Repository`]: commands in, events out, snapshots by policy.
//! - [`CommandContext::idempotent()`], [`derive_event_id`], [`derive_id`]: commands that a retry
//!   never appends twice.
//! - [`TraceContext`]: the W3C trace context a command's events carry, so that one trace runs
//!   from the command to every projection, reaction and consumer (see [`trace`]).
//!
//! # A complete aggregate
//!
//! ```
//! use std::sync::OnceLock;
//! use annals::{
//!     Aggregate, CommandContext, DomainEvent, InMemoryEventStore, Payload, Repository,
//!     UpcasterChain,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! enum TabEvent {
//!     Opened { table: u32 },
//!     DrinkOrdered { drink: String },
//! }
//!
//! impl DomainEvent for TabEvent {
//!     fn upcaster_chain() -> &'static UpcasterChain {
//!         static CHAIN: OnceLock<UpcasterChain> = OnceLock::new();
//!         CHAIN.get_or_init(|| {
//!             UpcasterChain::builder()
//!                 .event_type("Opened", 1)
//!                 .event_type("DrinkOrdered", 1)
//!                 .build()
//!                 .expect("a valid chain")
//!         })
//!     }
//!     fn event_type(&self) -> &'static str {
//!         match self {
//!             Self::Opened { .. } => "Opened",
//!             Self::DrinkOrdered { .. } => "DrinkOrdered",
//!         }
//!     }
//!     fn schema_version(&self) -> u32 {
//!         1
//!     }
//!     fn to_payload(&self) -> annals::Result<Payload> {
//!         match self {
//!             Self::Opened { table } => Payload::from_serialize(&serde_json::json!({ "table": table })),
//!             Self::DrinkOrdered { drink } => Payload::from_serialize(&serde_json::json!({ "drink": drink })),
//!         }
//!     }
//!     fn from_payload(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
//!         let v: serde_json::Value = serde_json::from_str(payload)?;
//!         match event_type {
//!             "Opened" => Ok(Self::Opened { table: serde_json::from_value(v["table"].clone())? }),
//!             _ => Ok(Self::DrinkOrdered { drink: serde_json::from_value(v["drink"].clone())? }),
//!         }
//!     }
//! }
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct Tab {
//!     open: bool,
//!     drinks: Vec<String>,
//! }
//!
//! #[derive(Debug, Clone)]
//! enum TabCommand {
//!     Open { table: u32 },
//!     Order { drink: String },
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! enum TabError {
//!     #[error("the tab is not open")]
//!     NotOpen,
//! }
//!
//! impl Aggregate for Tab {
//!     const TYPE: &'static str = "tab";
//!     type Event = TabEvent;
//!     type Command = TabCommand;
//!     type Error = TabError;
//!
//!     fn handle(&self, command: TabCommand) -> Result<Vec<TabEvent>, TabError> {
//!         match command {
//!             TabCommand::Open { table } => Ok(vec![TabEvent::Opened { table }]),
//!             TabCommand::Order { .. } if !self.open => Err(TabError::NotOpen),
//!             TabCommand::Order { drink } => Ok(vec![TabEvent::DrinkOrdered { drink }]),
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &TabEvent) {
//!         match event {
//!             TabEvent::Opened { .. } => self.open = true,
//!             TabEvent::DrinkOrdered { drink } => self.drinks.push(drink.clone()),
//!         }
//!     }
//! }
//!
//! # futures::executor::block_on(async {
//! let tabs = Repository::<Tab, _>::new(InMemoryEventStore::new());
//! let ctx = CommandContext::new();
//! assert!(tabs.execute("t1", TabCommand::Order { drink: "tea".into() }, &ctx).await.is_err());
//! tabs.execute("t1", TabCommand::Open { table: 4 }, &ctx).await?;
//! let done = tabs.execute("t1", TabCommand::Order { drink: "tea".into() }, &ctx).await?;
//! assert_eq!(done.version, 2);
//! assert_eq!(tabs.load("t1").await?.state.drinks, ["tea"]);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! With the `derive` feature, `#[derive(DomainEvent)]` and `#[derive(Aggregate)]` write the
//! event glue and the aggregate's constants.
//!
#![cfg_attr(
    feature = "derive",
    doc = r##"
The same tab with the derives: no match on type names, no serde glue, no chain to fill by
hand. `DrinkOrdered` is at schema version 2 (version 1 had no `size`), and events stored at
version 1 are read back through the upcaster.

```
use annals::{Aggregate, BoxError, CommandContext, DomainEvent, InMemoryEventStore, Repository};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum TabEvent {
    Opened { table: u32 },
    #[event(version = 2, upcasters(1 => drink_ordered_v1_to_v2))]
    DrinkOrdered { drink: String, size: String },
}

fn drink_ordered_v1_to_v2(mut v: Value) -> Result<Value, BoxError> {
    v["size"] = json!("regular");
    Ok(v)
}

#[derive(Debug, Clone)]
enum TabCommand {
    Open { table: u32 },
    Order { drink: String, size: String },
}

#[derive(Debug, thiserror::Error)]
enum TabError {
    #[error("the tab is not open")]
    NotOpen,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(
    name = "tab",
    event = TabEvent,
    command = TabCommand,
    error = TabError,
    snapshot_every = 50,
    snapshot_version = "fingerprint",
)]
struct Tab {
    open: bool,
    drinks: Vec<String>,
}

impl Tab {
    fn handle(&self, command: TabCommand) -> Result<Vec<TabEvent>, TabError> {
        match command {
            TabCommand::Open { table } => Ok(vec![TabEvent::Opened { table }]),
            TabCommand::Order { .. } if !self.open => Err(TabError::NotOpen),
            TabCommand::Order { drink, size } => Ok(vec![TabEvent::DrinkOrdered { drink, size }]),
        }
    }

    fn apply(&mut self, event: &TabEvent) {
        match event {
            TabEvent::Opened { .. } => self.open = true,
            TabEvent::DrinkOrdered { drink, size } => self.drinks.push(format!("{size} {drink}")),
        }
    }
}

# futures::executor::block_on(async {
let tabs = Repository::<Tab, _>::new(InMemoryEventStore::new());
let ctx = CommandContext::new();
tabs.execute("t1", TabCommand::Open { table: 4 }, &ctx).await?;
let order = TabCommand::Order { drink: "tea".into(), size: "large".into() };
let done = tabs.execute("t1", order, &ctx).await?;
assert_eq!(done.state.drinks, ["large tea"]);
let stored = done.events[0].to_new_event()?;
assert_eq!((stored.event_type.as_str(), stored.schema_version), ("DrinkOrdered", 2));
assert_eq!(stored.payload.as_str(), r#"{"drink":"tea","size":"large"}"#);
assert_eq!(TabEvent::upcaster_chain().latest_version("DrinkOrdered"), Some(2));
assert_eq!(Tab::TYPE, "tab");
# Ok::<_, Box<dyn std::error::Error>>(())
# }).unwrap();
```

See the `annals-macros` documentation for every attribute.
"##
)]
//!
//! # Errors
//!
//! Every fallible function returns [`Error`]. A command run through the [`Repository`]
//! returns [`CommandError`], which keeps the three failures apart: the domain's rejection,
//! a concurrency conflict, and the store.

mod aggregate;
mod command_id;
mod envelope;
mod error;
mod event;
mod ids;
mod limits;
mod memory;
mod repository;
mod retry;
mod store;
pub mod trace;
mod upcast;
mod version;

#[cfg(feature = "testing")]
pub mod testing;

pub use aggregate::{Aggregate, SnapshotPolicy};
pub use command_id::{derive_event_id, derive_id};
pub use envelope::{
    AppendResult, Metadata, NewEvent, Payload, RecordedEvent, Snapshot, StreamAppend,
};
pub use error::{BoxError, Error, Result};
pub use event::DomainEvent;
pub use ids::{EventType, MAX_NAME_BYTES, NameError, StreamId};
pub use limits::Limits;
pub use memory::InMemoryEventStore;
pub use repository::{CommandContext, CommandError, Decision, Executed, Loaded, Repository};
pub use retry::{Backoff, Retries, Sleep};
pub use store::{
    AggregateRead, DEFAULT_PAGE_SIZE, Direction, EventStore, LogHold, LogRead, StreamRead,
};
pub use trace::{SpanId, TraceContext, TraceContextError, TraceId};
pub use upcast::{Upcaster, UpcasterChain, UpcasterChainBuilder};
pub use version::{ExpectedVersion, LogPosition};

#[cfg(feature = "derive")]
pub use annals_macros::{Aggregate, DomainEvent};

/// What the code generated by the derives refers to, so that it compiles in a crate that does
/// not depend on serde itself. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}

/// The README's examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
