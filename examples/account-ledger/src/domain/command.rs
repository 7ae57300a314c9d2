//! What can be asked of an account, and why it may refuse.

use uuid::Uuid;

use crate::money::{Currency, Money};

/// What a person or a process asks of an account. Amounts are minor units; a currency, when
/// given, must be the account's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Open the account.
    Open {
        /// Who holds it.
        owner: String,
        /// Its currency.
        currency: Currency,
    },
    /// Money comes in from outside.
    Deposit {
        /// Minor units.
        amount: i64,
        /// The currency the amount is in, if the caller said.
        currency: Option<Currency>,
        /// Free text.
        memo: String,
        /// Who pays.
        counterparty: String,
    },
    /// Money goes out.
    Withdraw {
        /// Minor units.
        amount: i64,
        /// The currency, if said.
        currency: Option<Currency>,
        /// Free text.
        memo: String,
    },
    /// Pay another account of the ledger (the debit side of a transfer).
    SendTransfer {
        /// The transfer's id.
        transfer_id: Uuid,
        /// The credited account.
        to: String,
        /// Minor units.
        amount: i64,
        /// The currency, if said.
        currency: Option<Currency>,
        /// Free text.
        memo: String,
    },
    /// Be paid by another account (the credit side of a transfer).
    ReceiveTransfer {
        /// The transfer's id.
        transfer_id: Uuid,
        /// The debited account.
        from: String,
        /// Minor units.
        amount: i64,
        /// The debited account's currency.
        currency: Currency,
        /// Free text.
        memo: String,
    },
    /// Start a payout to an outside bank (step 1 of the payout saga).
    StartPayout {
        /// The saga's id.
        payout_id: Uuid,
        /// Who receives it.
        beneficiary: String,
        /// Minor units.
        amount: i64,
        /// Free text.
        memo: String,
    },
    /// The bank confirmed a payout.
    SettlePayout {
        /// The saga's id.
        payout_id: Uuid,
    },
    /// The bank refused a payout: compensate.
    ReversePayout {
        /// The saga's id.
        payout_id: Uuid,
        /// What the bank said.
        reason: String,
    },
    /// Stop all movement.
    Freeze {
        /// Why.
        reason: String,
    },
    /// Close the account; its balance must be zero.
    Close,
}

/// Why an account refuses a command. Nothing is appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The account was never opened.
    #[error("the account does not exist")]
    NotOpen,
    /// Opening twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// An owner must be named.
    #[error("the owner's name must not be empty")]
    NoOwner,
    /// Amounts are positive minor units.
    #[error("bad amount: {0} minor units; amounts must be more than zero")]
    NotPositive(i64),
    /// More than the ledger holds in one amount or one account.
    #[error("bad amount: {0} minor units is more than one amount or one account may hold")]
    TooLarge(i64),
    /// Not enough money.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// What the account holds.
        balance: Money,
        /// What was asked for.
        requested: Money,
    },
    /// The amount is in another currency.
    #[error("currency mismatch: the account holds {account}, the amount is in {requested}")]
    CurrencyMismatch {
        /// The account's currency.
        account: Currency,
        /// The amount's currency.
        requested: Currency,
    },
    /// Frozen accounts move no money.
    #[error("the account is frozen: no money moves in or out")]
    Frozen,
    /// Closed accounts accept nothing.
    #[error("the account is closed")]
    Closed,
    /// Closing needs an empty account.
    #[error("the account still holds {0}: withdraw or transfer it before closing")]
    NotEmpty(Money),
    /// Closing needs every payout finished.
    #[error("the account has {0} payout(s) waiting for the bank")]
    PayoutsPending(usize),
    /// No such payout on this account.
    #[error("no pending payout {0} on this account")]
    UnknownPayout(Uuid),
    /// A transfer from an account to itself.
    #[error("an account cannot transfer to itself")]
    SelfTransfer,
}
