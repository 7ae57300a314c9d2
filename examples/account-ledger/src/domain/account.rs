//! The account aggregate: its state and the rules that decide its commands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    command::{AccountCommand, AccountError},
    events::AccountEvent,
};
use crate::money::{Currency, MAX_AMOUNT, MAX_BALANCE, Money};

/// Whether money may move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not opened yet (the stream has no events).
    #[default]
    Unopened,
    /// Open for business.
    Open,
    /// Frozen: nothing moves in or out.
    Frozen,
    /// Closed for good.
    Closed,
}

impl Status {
    /// The status as a lower-case word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unopened => "unopened",
            Self::Open => "open",
            Self::Frozen => "frozen",
            Self::Closed => "closed",
        }
    }
}

/// An account, rebuilt from its events. Snapshots every 100 events; the snapshot version is
/// a fingerprint of these fields, so a changed state ignores old snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, annals::Aggregate)]
#[aggregate(
    name = "account",
    event = AccountEvent,
    command = AccountCommand,
    error = AccountError,
    snapshot_every = 100,
    snapshot_version = "fingerprint"
)]
pub struct Account {
    /// Who holds it.
    pub owner: String,
    /// Its currency (`None` before it is opened).
    pub currency: Option<Currency>,
    /// Balance in minor units; never negative.
    pub balance: i64,
    /// Whether money may move.
    pub status: Status,
    /// Payouts that left the balance and wait for the bank, by id.
    pub pending_payouts: BTreeMap<Uuid, i64>,
}

impl Account {
    fn currency(&self) -> Result<&Currency, AccountError> {
        match self.status {
            Status::Unopened => Err(AccountError::NotOpen),
            Status::Closed => Err(AccountError::Closed),
            Status::Frozen => Err(AccountError::Frozen),
            Status::Open => self.currency.as_ref().ok_or(AccountError::NotOpen),
        }
    }

    /// Checks that money may move, the amount is positive and in the account's currency.
    fn check_movement(
        &self,
        amount: i64,
        currency: Option<&Currency>,
    ) -> Result<&Currency, AccountError> {
        let own = self.currency()?;
        if amount <= 0 {
            return Err(AccountError::NotPositive(amount));
        }
        if amount > MAX_AMOUNT {
            return Err(AccountError::TooLarge(amount));
        }
        match currency {
            Some(c) if c != own => Err(AccountError::CurrencyMismatch {
                account: own.clone(),
                requested: c.clone(),
            }),
            _ => Ok(own),
        }
    }

    fn check_credit(&self, amount: i64, currency: Option<&Currency>) -> Result<(), AccountError> {
        self.check_movement(amount, currency)?;
        if self.balance.saturating_add(amount) > MAX_BALANCE {
            return Err(AccountError::TooLarge(amount));
        }
        Ok(())
    }

    fn check_debit(&self, amount: i64, currency: Option<&Currency>) -> Result<(), AccountError> {
        let own = self.check_movement(amount, currency)?;
        if amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: Money::new(self.balance, own.clone()),
                requested: Money::new(amount, own.clone()),
            });
        }
        Ok(())
    }

    /// Decides which events a command causes; refuses it with the reason otherwise.
    ///
    /// # Errors
    /// The [`AccountError`] naming the broken rule; nothing is appended.
    pub fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        use AccountEvent as E;
        let event = match command {
            C::Open { .. } if self.status != Status::Unopened => {
                return Err(AccountError::AlreadyOpen);
            }
            C::Open { owner, .. } if owner.trim().is_empty() => return Err(AccountError::NoOwner),
            C::Open { owner, currency } => E::Opened {
                owner: owner.trim().to_owned(),
                currency,
            },
            C::Deposit {
                amount,
                currency,
                memo,
                counterparty,
            } => {
                self.check_credit(amount, currency.as_ref())?;
                E::Deposited {
                    amount,
                    memo,
                    counterparty,
                }
            }
            C::Withdraw {
                amount,
                currency,
                memo,
            } => {
                self.check_debit(amount, currency.as_ref())?;
                E::Withdrawn { amount, memo }
            }
            C::SendTransfer {
                transfer_id,
                to,
                amount,
                currency,
                memo,
            } => {
                self.check_debit(amount, currency.as_ref())?;
                E::TransferSent {
                    transfer_id,
                    to,
                    amount,
                    memo,
                }
            }
            C::ReceiveTransfer {
                transfer_id,
                from,
                amount,
                currency,
                memo,
            } => {
                self.check_credit(amount, Some(&currency))?;
                E::TransferReceived {
                    transfer_id,
                    from,
                    amount,
                    memo,
                }
            }
            C::StartPayout {
                payout_id,
                beneficiary,
                amount,
                memo,
            } => {
                self.check_debit(amount, None)?;
                E::PayoutStarted {
                    payout_id,
                    beneficiary,
                    amount,
                    memo,
                }
            }
            // Settling and compensating finish what already started: allowed even when frozen.
            C::SettlePayout { payout_id } => {
                self.pending(payout_id)?;
                E::PayoutSettled { payout_id }
            }
            C::ReversePayout { payout_id, reason } => E::PayoutReversed {
                payout_id,
                amount: self.pending(payout_id)?,
                reason,
            },
            C::Freeze { .. } if self.status == Status::Frozen => return Ok(Vec::new()),
            C::Freeze { reason } => {
                self.currency()?;
                E::Frozen { reason }
            }
            C::Close => {
                let own = match self.status {
                    Status::Unopened => return Err(AccountError::NotOpen),
                    Status::Closed => return Err(AccountError::Closed),
                    Status::Open | Status::Frozen => {
                        self.currency.clone().ok_or(AccountError::NotOpen)?
                    }
                };
                if self.balance != 0 {
                    return Err(AccountError::NotEmpty(Money::new(self.balance, own)));
                }
                if !self.pending_payouts.is_empty() {
                    return Err(AccountError::PayoutsPending(self.pending_payouts.len()));
                }
                E::Closed
            }
        };
        Ok(vec![event])
    }

    fn pending(&self, payout_id: Uuid) -> Result<i64, AccountError> {
        if self.status == Status::Unopened {
            return Err(AccountError::NotOpen);
        }
        self.pending_payouts
            .get(&payout_id)
            .copied()
            .ok_or(AccountError::UnknownPayout(payout_id))
    }
}

impl Account {
    /// Evolves the state by one event (pure, infallible).
    pub fn apply(&mut self, event: &AccountEvent) {
        self.balance += event.balance_delta();
        match event {
            AccountEvent::Opened { owner, currency } => {
                self.owner.clone_from(owner);
                self.currency = Some(currency.clone());
                self.status = Status::Open;
            }
            AccountEvent::PayoutStarted {
                payout_id, amount, ..
            } => {
                self.pending_payouts.insert(*payout_id, *amount);
            }
            AccountEvent::PayoutSettled { payout_id }
            | AccountEvent::PayoutReversed { payout_id, .. } => {
                self.pending_payouts.remove(payout_id);
            }
            AccountEvent::Frozen { .. } => self.status = Status::Frozen,
            AccountEvent::Closed => self.status = Status::Closed,
            _ => {}
        }
    }
}
