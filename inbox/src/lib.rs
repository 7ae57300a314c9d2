//! Idempotent consumers: an inbox for the receiving service.
//!
//! Brokers (NATS JetStream, RabbitMQ) deliver at least once: a message whose
//! acknowledgement was lost comes again, perhaps to another instance, perhaps while the
//! first delivery is still running. The inbox makes a redelivery change nothing: it
//! records the ids of the messages a consumer has processed (the event id, a UUID) in the
//! same transaction, or the same Redis script, as the consumer's own effect. Both commit or
//! neither does, so there is no window in which the effect is done and the id unknown, or
//! the id recorded and the effect lost.
//!
//! | backend | type | the effect runs in |
//! |---|---|---|
//! | PostgreSQL (feature `postgres`) | [`PgInbox`] | the transaction that inserts the id, before the commit |
//! | SQLite (feature `sqlite`) | [`SqliteInbox`] | the `BEGIN IMMEDIATE` transaction that inserts the id |
//! | Redis (feature `redis`) | [`RedisInbox`] | the Lua script that checks and sets the id key |
//!
//! Every `process` call answers [`Processed::Done`] with the effect's value, or
//! [`Processed::Duplicate`] without running the effect, or an [`InboxError`] after which
//! nothing is recorded (the message can come again). Acknowledge the message after `Done`
//! and `Duplicate`; after an error, ask [`InboxError::is_transient`] whether to have it
//! redelivered later or to park it.
//!
//! ```no_run
//! use annals_inbox::{InboxError, PgInbox, Processed};
//! # async fn run(pool: sqlx::PgPool, event_id: uuid::Uuid) -> Result<(), InboxError> {
//! let inbox = PgInbox::new(pool, "billing", "invoice-on-order-placed")?;
//! inbox.migrate().await?;
//!
//! // For each delivered message; the message id is the event id.
//! let outcome = inbox
//!     .process(event_id, |tx| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO billing.invoices (order_event) VALUES ($1)")
//!                 .bind(event_id)
//!                 .execute(&mut **tx)
//!                 .await?;
//!             Ok(())
//!         })
//!     })
//!     .await;
//! match outcome {
//!     Ok(Processed::Done(())) | Ok(Processed::Duplicate) => { /* ack */ }
//!     Err(e) if e.is_transient() => { /* nak with a delay */ }
//!     Err(e) => { /* park: dead letter, log, alert */ return Err(e) }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! In Redis the effect is Lua, run by the inbox's script ([`EffectScript`]), or a list of
//! commands ([`RedisCommands`]):
//!
//! ```no_run
//! use annals_inbox::{InboxError, RedisCommands, RedisInbox, Retention};
//! use std::time::Duration;
//! # async fn run(event_id: uuid::Uuid) -> Result<(), InboxError> {
//! let inbox = RedisInbox::connect("redis://127.0.0.1:6379", "shop", "loyalty-points")
//!     .await?
//!     .with_retention(Retention::For(Duration::from_secs(14 * 24 * 3600)));
//! let effect = RedisCommands::new()
//!     .cmd("HINCRBY").key(inbox.key("points")).arg("alice").arg(10);
//! let outcome = inbox.process(event_id, effect).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Concurrent deliveries
//!
//! Two deliveries of one id at the same time give one effect. In PostgreSQL the second
//! insert of the id waits for the first transaction's row, then finds it committed (a
//! duplicate) or rolled back (and processes the message itself). SQLite runs one write
//! transaction at a time. Redis runs one script at a time.
//!
//! # Retention
//!
//! An id is what tells a redelivery from a new message, so it must be kept for as long
//! as the broker may redeliver: a message that comes back after its id was forgotten is
//! processed again. Keeping ids forever is exact and costs a row (or a key) per message
//! for ever; forgetting them after a time bounds the space and is safe when that time is
//! longer than any redelivery (JetStream: the stream's `max_age`, or `max_deliver` times
//! `ack_wait` plus backoff; RabbitMQ: the longest a message can wait in a queue or a
//! dead-letter loop), with margin for an outage. The SQL inboxes keep every id until
//! `prune(older_than)` forgets the old ones (run it periodically); the Redis inbox gives
//! its keys a time to live ([`Retention`]).
//!
//! # Names
//!
//! Consumer names and Redis key prefixes are 1 to 128 ASCII letters, digits, `_`, `-` and
//! `.`; PostgreSQL schemas are plain identifiers. Anything else is an
//! [`InboxError::InvalidName`] before any I/O: no caller-given name reaches SQL text.

mod error;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "redis"))]
mod names;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis_inbox;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use error::{BoxError, InboxError};
#[cfg(feature = "postgres")]
pub use postgres::PgInbox;
#[cfg(feature = "redis")]
pub use redis_inbox::{EffectScript, RedisCommands, RedisEffect, RedisInbox, Retention};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteInbox;

/// What processing a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Processed<T> {
    /// The message was new: the effect ran and its value is here, committed with the id.
    Done(T),
    /// The id was already recorded: nothing ran. Acknowledge the message.
    Duplicate,
}

impl<T> Processed<T> {
    /// Whether the message had been processed before.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Duplicate)
    }

    /// The effect's value, when it ran.
    pub fn done(self) -> Option<T> {
        match self {
            Self::Done(value) => Some(value),
            Self::Duplicate => None,
        }
    }

    /// Maps the effect's value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Processed<U> {
        match self {
            Self::Done(value) => Processed::Done(f(value)),
            Self::Duplicate => Processed::Duplicate,
        }
    }
}
