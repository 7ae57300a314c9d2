//! What the read models see of an event: the account, the kind of movement, the signed
//! amount, the counterparty and the memo, with the time and the log position; and what an
//! account's later events need to know of it (its owner and currency, kept as a lookup).

use annals::{BoxError, DomainEvent, LogPosition, RecordedEvent};
use annals_projections::{LookupKeys, Lookups};
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

/// What the read models keep of an account for its later events: learnt from `Opened`,
/// stored as the lookup [`info_key`] beside each read model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountInfo {
    /// Who holds it.
    pub owner: String,
    /// Its currency.
    pub currency: String,
}

/// The lookup key of an account's [`AccountInfo`].
pub fn info_key(account: &str) -> String {
    format!("account:{account}")
}

/// Declares the lookup an account event's handling reads: its account's [`AccountInfo`].
pub(crate) fn declare(event: &RecordedEvent, keys: &mut LookupKeys) {
    keys.add(info_key(&account_of(&event.stream_id)));
}

/// What one account event changes in the read models.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The account was opened (its [`AccountInfo`] is now set as a lookup).
    Opened(AccountInfo),
    /// Its status changed: `frozen` or `closed`.
    Status(&'static str),
    /// Money moved, in the account's currency.
    Moved {
        /// The movement.
        tx: Transaction,
        /// The account, as opened.
        info: AccountInfo,
    },
}

impl Change {
    /// Decodes an account event and says what it changes, reading the account's
    /// [`AccountInfo`] from `lookups` (and setting it on `Opened`). Returns the account with
    /// the change; `None` for events that change nothing the read models show.
    ///
    /// # Errors
    /// A stored event that does not decode, a movement on an account with no `Opened` before
    /// it, a lookup that was not declared (`declare`).
    pub fn of(
        event: &RecordedEvent,
        lookups: &mut Lookups,
    ) -> Result<Option<(String, Self)>, BoxError> {
        let Some(entry) = Entry::decode(event)? else {
            return Ok(None);
        };
        let key = info_key(&entry.account);
        let change = match &entry.event {
            AccountEvent::Opened { owner, currency } => {
                let info = AccountInfo {
                    owner: owner.clone(),
                    currency: currency.as_str().to_owned(),
                };
                lookups.set(key, &info)?;
                Self::Opened(info)
            }
            AccountEvent::Frozen { .. } => Self::Status("frozen"),
            AccountEvent::Closed => Self::Status("closed"),
            _ => {
                let Some(tx) = entry.transaction() else {
                    return Ok(None);
                };
                let info: AccountInfo = lookups.get(&key)?.ok_or_else(|| {
                    format!(
                        "account {} has a movement but was never opened",
                        entry.account
                    )
                })?;
                Self::Moved { tx, info }
            }
        };
        Ok(Some((entry.account, change)))
    }
}
