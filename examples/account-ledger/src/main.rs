//! `ledger`: the account-ledger example's command line. See `ledger --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    account_ledger::main()
}
