//! The account's events, as stored. `Deposited` is at schema version 2: version 1 (written by
//! an earlier version of this example) had only the amount; version 2 adds the memo and the
//! counterparty, and the upcaster fills them for old events.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::money::Currency;

/// Everything that can happen to an account. Amounts are positive minor units in the
/// account's currency.
#[derive(Debug, Clone, PartialEq, Eq, annals::DomainEvent)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Who holds it.
        owner: String,
        /// The only currency it holds.
        currency: Currency,
    },
    /// Money came in from outside the ledger.
    #[event(version = 2, upcasters(1 => deposited_v1_to_v2))]
    Deposited {
        /// Minor units.
        amount: i64,
        /// Free text (v2).
        memo: String,
        /// Who paid (v2).
        counterparty: String,
    },
    /// Money went out of the ledger.
    Withdrawn {
        /// Minor units.
        amount: i64,
        /// Free text.
        memo: String,
    },
    /// This account paid another one (the other stream records `TransferReceived` in the same
    /// atomic append).
    TransferSent {
        /// The transfer, shared by both sides.
        transfer_id: Uuid,
        /// The credited account.
        to: String,
        /// Minor units.
        amount: i64,
        /// Free text.
        memo: String,
    },
    /// Another account paid this one.
    TransferReceived {
        /// The transfer, shared by both sides.
        transfer_id: Uuid,
        /// The debited account.
        from: String,
        /// Minor units.
        amount: i64,
        /// Free text.
        memo: String,
    },
    /// A payout to an outside bank began: the money left the balance and waits for the bank.
    PayoutStarted {
        /// The payout saga's id.
        payout_id: Uuid,
        /// Who receives it outside the ledger.
        beneficiary: String,
        /// Minor units.
        amount: i64,
        /// Free text.
        memo: String,
    },
    /// The bank confirmed the payout.
    PayoutSettled {
        /// The payout saga's id.
        payout_id: Uuid,
    },
    /// The bank refused the payout: the compensating event puts the money back.
    PayoutReversed {
        /// The payout saga's id.
        payout_id: Uuid,
        /// Minor units returned to the balance.
        amount: i64,
        /// What the bank said.
        reason: String,
    },
    /// No money may move in or out any more.
    Frozen {
        /// Why.
        reason: String,
    },
    /// The account is closed for good.
    Closed,
}

/// `Deposited` v1 (`{"amount": 500}`) to v2: no memo, counterparty unknown.
fn deposited_v1_to_v2(mut v: Value) -> Result<Value, annals::BoxError> {
    let obj = v
        .as_object_mut()
        .ok_or("a Deposited v1 payload must be an object")?;
    if !obj.get("amount").is_some_and(Value::is_i64) {
        return Err("a Deposited v1 payload needs an integer \"amount\"".into());
    }
    obj.insert("memo".into(), json!(""));
    obj.insert("counterparty".into(), json!(""));
    Ok(v)
}

impl AccountEvent {
    /// The signed change this event makes to the balance.
    pub fn balance_delta(&self) -> i64 {
        match self {
            Self::Deposited { amount, .. }
            | Self::TransferReceived { amount, .. }
            | Self::PayoutReversed { amount, .. } => *amount,
            Self::Withdrawn { amount, .. }
            | Self::TransferSent { amount, .. }
            | Self::PayoutStarted { amount, .. } => -*amount,
            Self::Opened { .. } | Self::PayoutSettled { .. } | Self::Frozen { .. } => 0,
            Self::Closed => 0,
        }
    }
}
