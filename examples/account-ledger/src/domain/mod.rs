//! The domain: the account aggregate and its events, transfers appended atomically to both
//! accounts, and the payout saga with its compensating event.

mod account;
mod command;
mod events;
mod ledger;
mod payout;

pub use account::{Account, Status};
pub use command::{AccountCommand, AccountError};
pub use events::AccountEvent;
pub use ledger::{Ledger, LedgerError, Outcome, account_of};
pub use payout::{
    BankAnswer, BankUnreachable, PAYOUTS, Payouts, PendingPayout, SIMULATE_REFUSAL, SimulatedBank,
    StartedPayout, bank_dependency, pending_payouts, start_payout,
};
