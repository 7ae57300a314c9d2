//! Derive macros for [Annals](https://docs.rs/annals): `#[derive(DomainEvent)]` on an enum of
//! events and `#[derive(Aggregate)]` on an aggregate's state. Use them through `annals` with
//! its `derive` feature, so an application depends on one crate:
//!
//! ```toml
//! annals = { version = "0.1", features = ["derive"] }
//! ```
//!
//! # A complete aggregate with a versioned event
//!
//! `Deposited` is at schema version 2: version 1 stored `{"amount": 5}`, version 2 added a
//! memo. Events stored as version 1 are read back through the upcaster; the stored bytes never
//! change.
//!
//! ```
//! use annals::{
//!     Aggregate, BoxError, CommandContext, DomainEvent, EventStore, EventType, ExpectedVersion,
//!     InMemoryEventStore, NewEvent, Payload, Repository,
//! };
//! use serde::{Deserialize, Serialize};
//! use serde_json::{Value, json};
//!
//! #[derive(Debug, Clone, PartialEq, DomainEvent)]
//! enum AccountEvent {
//!     Opened { owner: String },
//!     #[event(version = 2, upcasters(1 => deposited_v1_to_v2))]
//!     Deposited { amount: i64, memo: String },
//!     #[event(name = "account.closed")]
//!     Closed,
//! }
//!
//! /// Version 1 had no memo.
//! fn deposited_v1_to_v2(mut v: Value) -> Result<Value, BoxError> {
//!     v["memo"] = json!("");
//!     Ok(v)
//! }
//!
//! #[derive(Debug, Clone)]
//! enum AccountCommand {
//!     Open { owner: String },
//!     Deposit { amount: i64, memo: String },
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! enum AccountError {
//!     #[error("the account is not open")]
//!     NotOpen,
//! }
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
//! #[aggregate(
//!     name = "account",
//!     event = AccountEvent,
//!     command = AccountCommand,
//!     error = AccountError,
//!     snapshot_every = 100,
//!     snapshot_version = "fingerprint",
//! )]
//! struct Account {
//!     open: bool,
//!     balance: i64,
//! }
//!
//! impl Account {
//!     fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
//!         match command {
//!             AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened { owner }]),
//!             AccountCommand::Deposit { .. } if !self.open => Err(AccountError::NotOpen),
//!             AccountCommand::Deposit { amount, memo } => {
//!                 Ok(vec![AccountEvent::Deposited { amount, memo }])
//!             }
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Opened { .. } => self.open = true,
//!             AccountEvent::Deposited { amount, .. } => self.balance += amount,
//!             AccountEvent::Closed => self.open = false,
//!         }
//!     }
//! }
//!
//! # futures::executor::block_on(async {
//! let accounts = Repository::<Account, _>::new(InMemoryEventStore::new());
//! let ctx = CommandContext::new();
//! accounts.execute("a1", AccountCommand::Open { owner: "ada".into() }, &ctx).await?;
//! let done = accounts
//!     .execute("a1", AccountCommand::Deposit { amount: 5, memo: "rent".into() }, &ctx)
//!     .await?;
//! assert_eq!((done.state.balance, done.version), (5, 2));
//!
//! // What is stored: the type name, its version, and the variant's fields only.
//! let stored = done.events[0].to_new_event()?;
//! assert_eq!(stored.event_type.as_str(), "Deposited");
//! assert_eq!(stored.schema_version, 2);
//! assert_eq!(stored.payload.as_str(), r#"{"amount":5,"memo":"rent"}"#);
//!
//! // Events stored by older code at version 1 still load, through the upcaster.
//! let stream = accounts.stream_id("a2")?;
//! let old = |ty: &str, json: &str| Ok::<_, annals::Error>(NewEvent::new(EventType::new(ty)?, 1, Payload::from_json(json)?));
//! let v1 = vec![old("Opened", r#"{"owner":"bob"}"#)?, old("Deposited", r#"{"amount":7}"#)?];
//! accounts.store().append(&stream, ExpectedVersion::NoStream, v1).await?;
//! assert_eq!(accounts.load("a2").await?.state.balance, 7);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # How the pieces fit
//!
//! - Each variant of the event enum is one stored event type. Its stored name is the variant's
//!   name unless `name = "..."` says otherwise, so a Rust rename never breaks stored events.
//! - The stored payload is the variant's fields only; serde does the encoding through helper
//!   structs generated beside the impl (the enum itself needs no serde derive).
//! - Each variant has a schema version (default 1). `upcasters(n => path, ...)` lists the
//!   functions that bring version `n` to `n + 1`; they are registered in the enum's
//!   `UpcasterChain`, which `DomainEvent::decode` runs on read.
//! - The aggregate derive writes the `Aggregate` impl from the attribute; the application
//!   writes `handle` and `apply` as inherent methods of the state type.
//!
//! Every rule the runtime chain builder checks (duplicate names, version 0, a step at or above
//! the current version, two steps from one version, a gap) is a compile error pointing at the
//! attribute, and one build reports every mistake at once.

mod aggregate;
mod errors;
mod event;
mod fingerprint;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `annals::DomainEvent` for an enum whose variants are the stored event types.
///
/// # Variant attributes
///
/// ```text
/// #[event(name = "account.deposited")]   stored type name (default: the variant's name)
/// #[event(version = 3)]                  latest schema version (default: 1)
/// #[event(upcasters(1 => v1_to_v2, 2 => v2_to_v3))]
///                                        upcaster from version n to n + 1, by path
/// ```
///
/// Keys may share one attribute or be spread over several. Each upcaster is a function
/// `fn(serde_json::Value) -> Result<serde_json::Value, annals::BoxError>` (a path: a local
/// function, `module::function`, `crate::...`). Steps may start above 1 when the older
/// versions were never stored, but from the lowest step on they must reach `version` without
/// a gap; a type with no steps can only read its latest version.
///
/// # What is stored
///
/// | variant | payload |
/// |---|---|
/// | `Deposited { amount: i64, memo: String }` | `{"amount":5,"memo":"rent"}` |
/// | `Renamed(Owner)` (one unnamed field) | the field's own JSON, e.g. `{"name":"eve"}` |
/// | `Closed` (unit) | `{}` |
///
/// Tuple variants with two or more fields are refused: positional arrays are hard to upcast,
/// name the fields instead. Fields are encoded by borrowing (no clones) and the latest version
/// decodes straight from the payload text into the variant. Unknown fields in a payload are
/// ignored; a missing `Option` field decodes as `None`. Field types need `Serialize` and
/// `DeserializeOwned`.
///
/// On named fields, `#[serde(rename = "...")]`, `#[serde(alias = "...")]` and
/// `#[serde(default)]` (or `default = "path"`) apply to the stored form, so a field added
/// with a default needs no upcaster. Other serde attributes are refused at compile time; put
/// such fields in a struct of their own and use a one-field variant. Serde attributes on the
/// enum or its variants concern the enum's own serde representation, if it has one, and do
/// not change what is stored.
///
/// # Restrictions
///
/// The enum cannot be generic, and field types cannot mention `Self`.
#[proc_macro_derive(DomainEvent, attributes(event, serde))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::expand(&input)
        .unwrap_or_else(|error| event::fallback(&input, &error))
        .into()
}

/// Implements `annals::Aggregate` for the state type (a struct or an enum) from its
/// `#[aggregate(...)]` attribute; the type's inherent `handle` and `apply` do the work.
///
/// ```text
/// #[aggregate(
///     name = "account",                  stream ids are "account-{id}" (required)
///     event = AccountEvent,              a DomainEvent type (required)
///     command = AccountCommand,          (required)
///     error = AccountError,              the domain's rejection, a std::error::Error (required)
///     snapshot_every = 100,              snapshot when an append crosses a multiple of 100
///                                        (default: never)
///     snapshot_version = 2,              or "fingerprint" (default: 1)
/// )]
/// ```
///
/// The type itself must write, as inherent methods:
///
/// ```text
/// fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError>
/// fn apply(&mut self, event: &AccountEvent)
/// ```
///
/// A missing one is a compile error at the type's name: "multiple `handle` found", whose
/// candidate trait is called `write_an_inherent_fn_handle_for_the_aggregate`.
///
/// # Fingerprinted snapshot versions
///
/// `snapshot_version = "fingerprint"` sets the version to a hash (32-bit FNV-1a, kept to 31
/// bits and never 0) of the state's fields as written: their names, their types as tokens,
/// their `#[serde(...)]` attributes and those of the type. Adding, removing or renaming a
/// field or changing its type gives a new version, so old snapshots are ignored and the
/// aggregate is rebuilt from its events; reordering fields, reformatting or renaming the type
/// does not. The hash sees types by name only: when a field's *type* changes its own shape
/// (a struct used in a field gains a field), the fingerprint stays the same; use a number
/// for such states, or change the field's declaration.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    aggregate::expand(&input)
        .unwrap_or_else(|error| aggregate::fallback(&input, &error))
        .into()
}
