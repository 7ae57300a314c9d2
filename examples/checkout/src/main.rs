//! `checkout`: the checkout example's command line. See `checkout --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    checkout::cli::main()
}
