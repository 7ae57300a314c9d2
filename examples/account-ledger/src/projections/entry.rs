//! What the read models see of an event: the account, the kind of movement, the signed
//! amount, the counterparty and the memo, with the time and the log position.

use annals::{DomainEvent, LogPosition, RecordedEvent};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{AccountEvent, account_of};

/// One event of an account stream, decoded (and upcast) for the read models.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it sits in the global log.
    pub position: LogPosition,
    /// The account.
    pub account: String,
    /// When the store committed it.
    pub time: OffsetDateTime,
    /// The event.
    pub event: AccountEvent,
}

impl Entry {
    /// Decodes an event of an account stream; `None` for events of other streams.
    ///
    /// # Errors
    /// The decode or upcast error of an account event that does not read back.
    pub fn decode(recorded: &RecordedEvent) -> annals::Result<Option<Self>> {
        if !recorded.stream_id.as_str().starts_with("account-")
            || !AccountEvent::handles(recorded.event_type.as_str())
        {
            return Ok(None);
        }
        Ok(Some(Self {
            position: recorded.position,
            account: account_of(&recorded.stream_id),
            time: recorded.recorded_at,
            event: AccountEvent::decode(recorded)?,
        }))
    }

    /// The movement of money this event records, if any.
    pub fn transaction(&self) -> Option<Transaction> {
        use AccountEvent as E;
        let (kind, counterparty, memo) = match &self.event {
            E::Deposited {
                memo, counterparty, ..
            } => ("deposit", counterparty.clone(), memo.clone()),
            E::Withdrawn { memo, .. } => ("withdrawal", String::new(), memo.clone()),
            E::TransferSent { to, memo, .. } => ("transfer out", to.clone(), memo.clone()),
            E::TransferReceived { from, memo, .. } => ("transfer in", from.clone(), memo.clone()),
            E::PayoutStarted {
                beneficiary, memo, ..
            } => ("payout", beneficiary.clone(), memo.clone()),
            E::PayoutReversed { reason, .. } => ("payout reversed", String::new(), reason.clone()),
            E::Opened { .. } | E::PayoutSettled { .. } | E::Frozen { .. } | E::Closed => {
                return None;
            }
        };
        Some(Transaction {
            position: self.position.sequence,
            account: self.account.clone(),
            kind: kind.to_owned(),
            amount: self.event.balance_delta(),
            counterparty,
            memo,
            time: self.time.unix_timestamp(),
        })
    }
}

/// A movement of money on one account, as the read models keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The event's sequence in the global log.
    pub position: u64,
    /// The account.
    pub account: String,
    /// `deposit`, `withdrawal`, `transfer in`, `transfer out`, `payout`, `payout reversed`.
    pub kind: String,
    /// Signed minor units: positive in, negative out.
    pub amount: i64,
    /// The other side: an account, a payer or a beneficiary (may be empty).
    pub counterparty: String,
    /// Free text.
    pub memo: String,
    /// Unix seconds.
    pub time: i64,
}
