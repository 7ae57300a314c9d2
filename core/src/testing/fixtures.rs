//! A small aggregate with a versioned event, used by the conformance suite and by examples.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    Aggregate, BoxError, DomainEvent, EventType, NewEvent, Payload, Result, SnapshotPolicy,
    UpcasterChain,
};

/// A counter: the sum and number of amounts added since the last reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    /// Sum of the amounts added.
    pub total: i64,
    /// How many events built this state.
    pub events: u64,
}

/// The counter's events. `Added` is at schema version 2: version 1 stored `{"n": 5}`.
#[derive(Debug, Clone, PartialEq)]
pub enum CounterEvent {
    /// An amount was added.
    Added {
        /// The amount.
        amount: i64,
    },
    /// The counter went back to zero.
    Reset,
}

/// The counter's commands.
#[derive(Debug, Clone, PartialEq)]
pub enum CounterCommand {
    /// Add a positive amount.
    Add(i64),
    /// Reset to zero (no event when already zero).
    Reset,
    /// Take an amount away; refused when the total is smaller.
    Take(i64),
}

/// Why the counter refuses a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CounterError {
    /// Amounts must be positive.
    #[error("amount must be positive, got {0}")]
    NotPositive(i64),
    /// The total is smaller than the amount taken.
    #[error("cannot take {requested}, the total is {total}")]
    NotEnough {
        /// The current total.
        total: i64,
        /// The amount asked for.
        requested: i64,
    },
}

fn added_v1_to_v2(v: Value) -> Result<Value, BoxError> {
    let n = v
        .get("n")
        .and_then(Value::as_i64)
        .ok_or("an Added v1 payload needs an integer \"n\"")?;
    Ok(json!({ "amount": n }))
}

impl DomainEvent for CounterEvent {
    fn upcaster_chain() -> &'static UpcasterChain {
        static CHAIN: OnceLock<UpcasterChain> = OnceLock::new();
        CHAIN.get_or_init(|| {
            UpcasterChain::builder()
                .event_type("Added", 2)
                .event_type("Reset", 1)
                .step("Added", 1, added_v1_to_v2)
                .build()
                .unwrap_or_default()
        })
    }

    fn event_type(&self) -> &'static str {
        match self {
            Self::Added { .. } => "Added",
            Self::Reset => "Reset",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            Self::Added { .. } => 2,
            Self::Reset => 1,
        }
    }

    fn to_payload(&self) -> Result<Payload> {
        match self {
            Self::Added { amount } => Payload::from_serialize(&json!({ "amount": amount })),
            Self::Reset => Payload::from_serialize(&json!({})),
        }
    }

    fn from_payload(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Added {
            amount: i64,
        }
        match event_type {
            "Added" => {
                let Added { amount } = serde_json::from_str(payload)?;
                Ok(Self::Added { amount })
            }
            "Reset" => Ok(Self::Reset),
            other => Err(serde::de::Error::custom(format!(
                "{other} is not a counter event"
            ))),
        }
    }
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    const SNAPSHOT_VERSION: u32 = 1;
    const SNAPSHOT_POLICY: SnapshotPolicy = SnapshotPolicy::EveryNEvents(5);
    type Event = CounterEvent;
    type Command = CounterCommand;
    type Error = CounterError;

    fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Add(amount) if amount <= 0 => Err(CounterError::NotPositive(amount)),
            CounterCommand::Add(amount) => Ok(vec![CounterEvent::Added { amount }]),
            CounterCommand::Reset if self.total == 0 => Ok(vec![]),
            CounterCommand::Reset => Ok(vec![CounterEvent::Reset]),
            CounterCommand::Take(amount) if amount <= 0 => Err(CounterError::NotPositive(amount)),
            CounterCommand::Take(amount) if amount > self.total => Err(CounterError::NotEnough {
                total: self.total,
                requested: amount,
            }),
            CounterCommand::Take(amount) => Ok(vec![CounterEvent::Added { amount: -amount }]),
        }
    }

    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Added { amount } => self.total += amount,
            CounterEvent::Reset => self.total = 0,
        }
        self.events += 1;
    }
}

/// A new event of type `event_type` (schema version 1) with `payload` as its JSON.
///
/// # Panics
/// When `event_type` or `payload` is invalid: this is a test helper.
pub fn new_event(event_type: &str, payload: Value) -> NewEvent {
    NewEvent::new(
        EventType::new(event_type).expect("a valid event type"),
        1,
        Payload::from_serialize(&payload).expect("serializable JSON"),
    )
}
