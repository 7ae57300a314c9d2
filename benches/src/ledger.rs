//! The benchmark's domain: ledger accounts and their ~200-byte `Deposited` events.
//!
//! `Deposited` is at schema version 3 (v1 had no currency, v2 no counterparty), so the same
//! type also exercises the upcaster chain.

use std::sync::OnceLock;

use annals::{
    Aggregate, BoxError, DomainEvent, EventType, NewEvent, Payload, Result, UpcasterChain,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A deposit into a ledger account: the event every scenario writes and reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposited {
    /// The account credited.
    pub account: String,
    /// Amount in minor units (cents).
    pub amount: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Free text from the payer.
    pub memo: String,
    /// Who paid.
    pub counterparty: String,
}

impl Deposited {
    /// The `n`-th sample deposit into account `account` (about 200 bytes of JSON).
    pub fn sample(account: u64, n: u64) -> Self {
        Self {
            account: account_id(account),
            amount: 1_000 + (n % 97) as i64 * 13,
            currency: if n.is_multiple_of(3) { "USD" } else { "EUR" }.to_owned(),
            memo: format!("invoice 2026-{n:07} settlement for consulting services rendered"),
            counterparty: format!("DE89 3704 0044 {:010} Example Trading GmbH", n % 10_000_000),
        }
    }
}

/// The account id of account number `n`.
pub fn account_id(n: u64) -> String {
    format!("acct-{n:07}")
}

/// The ledger's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEvent {
    /// Money came in.
    Deposited(Deposited),
}

fn deposited_v1_to_v2(mut v: Value) -> Result<Value, BoxError> {
    v.as_object_mut()
        .ok_or("a Deposited v1 payload is an object")?
        .insert("currency".into(), json!("EUR"));
    Ok(v)
}

fn deposited_v2_to_v3(mut v: Value) -> Result<Value, BoxError> {
    v.as_object_mut()
        .ok_or("a Deposited v2 payload is an object")?
        .insert("counterparty".into(), json!("unknown"));
    Ok(v)
}

/// The JSON a version-1 `Deposited` was stored as (no currency, no counterparty).
pub fn deposited_v1_payload(d: &Deposited) -> Payload {
    Payload::from_stored(
        json!({ "account": d.account, "amount": d.amount, "memo": d.memo }).to_string(),
    )
}

impl DomainEvent for LedgerEvent {
    fn upcaster_chain() -> &'static UpcasterChain {
        static CHAIN: OnceLock<UpcasterChain> = OnceLock::new();
        CHAIN.get_or_init(|| {
            UpcasterChain::builder()
                .event_type("Deposited", 3)
                .step("Deposited", 1, deposited_v1_to_v2)
                .step("Deposited", 2, deposited_v2_to_v3)
                .build()
                .unwrap_or_default()
        })
    }

    fn event_type(&self) -> &'static str {
        "Deposited"
    }

    fn schema_version(&self) -> u32 {
        3
    }

    fn to_payload(&self) -> Result<Payload> {
        match self {
            Self::Deposited(d) => Payload::from_serialize(d),
        }
    }

    fn from_payload(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        match event_type {
            "Deposited" => serde_json::from_str(payload).map(Self::Deposited),
            other => Err(serde::de::Error::custom(format!(
                "{other} is not a ledger event"
            ))),
        }
    }
}

impl LedgerEvent {
    /// The event ready to append, with a fresh id and empty metadata.
    ///
    /// # Panics
    /// Never for the events this module builds (the type name is valid and serializes).
    pub fn new_event(&self) -> NewEvent {
        let event_type = EventType::new(self.event_type()).expect("a valid event type");
        let payload = self.to_payload().expect("a serializable event");
        NewEvent::new(event_type, self.schema_version(), payload)
    }
}

/// A ledger account: its balance and how many deposits built it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Sum of the deposits, in minor units.
    pub balance: i64,
    /// Number of deposits.
    pub deposits: u64,
    /// The last counterparty seen.
    pub last_counterparty: String,
}

/// The account's one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit(pub Deposited);

/// Why an account refuses a deposit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Deposits must be positive.
    #[error("a deposit must be positive, got {0}")]
    NotPositive(i64),
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Event = LedgerEvent;
    type Command = Deposit;
    type Error = AccountError;

    fn handle(&self, Deposit(d): Deposit) -> Result<Vec<LedgerEvent>, AccountError> {
        if d.amount <= 0 {
            return Err(AccountError::NotPositive(d.amount));
        }
        Ok(vec![LedgerEvent::Deposited(d)])
    }

    fn apply(&mut self, event: &LedgerEvent) {
        let LedgerEvent::Deposited(d) = event;
        self.balance += d.amount;
        self.deposits += 1;
        if self.last_counterparty != d.counterparty {
            self.last_counterparty.clone_from(&d.counterparty);
        }
    }
}

/// An [`Account`] that keeps a snapshot every 100 events: the aggregate of
/// `pg.load.snapshot` (an aggregate with the default policy never looks for a snapshot).
/// Its snapshots are an account's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshottedAccount(pub Account);

impl Aggregate for SnapshottedAccount {
    const TYPE: &'static str = Account::TYPE;
    const SNAPSHOT_POLICY: annals::SnapshotPolicy = annals::SnapshotPolicy::EveryNEvents(100);
    type Event = LedgerEvent;
    type Command = Deposit;
    type Error = AccountError;

    fn handle(&self, command: Deposit) -> Result<Vec<LedgerEvent>, AccountError> {
        self.0.handle(command)
    }

    fn apply(&mut self, event: &LedgerEvent) {
        self.0.apply(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_event_is_about_200_bytes() {
        let payload = LedgerEvent::Deposited(Deposited::sample(42, 1_234_567)).new_event();
        let len = payload.payload.len();
        assert!((180..=230).contains(&len), "payload is {len} bytes");
    }

    #[test]
    fn v1_payloads_upcast_to_the_latest_shape() {
        let d = Deposited::sample(1, 2);
        let chain = LedgerEvent::upcaster_chain();
        assert_eq!(chain.latest_version("Deposited"), Some(3));
        let v1: Value = serde_json::from_str(deposited_v1_payload(&d).as_str()).unwrap();
        let v3 = deposited_v2_to_v3(deposited_v1_to_v2(v1).unwrap()).unwrap();
        let back: Deposited = serde_json::from_value(v3).unwrap();
        assert_eq!(back.currency, "EUR");
        assert_eq!(back.counterparty, "unknown");
    }
}
