//! `ledger demo`: a short scripted session in a fresh embedded data directory, printing
//! each command as if typed, then what it did. Expected refusals are part of the script.

use std::{error::Error as StdError, path::Path};

use clap::Parser;

use crate::{app::report, backends::embedded_app, cli::Cli};

/// The session: each line is one `ledger` invocation's arguments.
const SCRIPT: &[&[&str]] = &[
    &["open", "alice", "Alice Martin", "EUR"],
    &["open", "bob", "Bob Chen", "EUR"],
    &["open", "carol", "Carol Diaz", "USD"],
    &[
        "deposit",
        "alice",
        "1200.00",
        "--from",
        "ACME GmbH payroll",
        "--memo",
        "salary November",
    ],
    &[
        "deposit",
        "bob",
        "120",
        "--from",
        "Stadtwerke Berlin",
        "--memo",
        "deposit refund",
    ],
    &["withdraw", "bob", "500.00", "--memo", "new bike"],
    &[
        "transfer",
        "alice",
        "bob",
        "450.00",
        "--memo",
        "rent share December",
    ],
    &["transfer", "alice", "carol", "10.00"],
    &["deposit", "dave", "5.00"],
    &["deposit", "alice", "12.505"],
    &[
        "payout",
        "alice",
        "99.90",
        "--to",
        "DE89 3704 0044 0532 0130 00",
        "--memo",
        "electricity bill",
    ],
    &[
        "payout",
        "alice",
        "50.00",
        "--to",
        "DE02 1203 0000 0000 2020 51",
        "--memo",
        "gym membership",
        "--bank-fails",
    ],
    &["freeze", "bob", "--reason", "card reported stolen"],
    &["deposit", "bob", "5.00"],
    &["seed", "--accounts", "20", "--events", "300"],
    &["status"],
    &["balance", "alice"],
    &["history", "alice"],
    &["top", "3"],
    &["search", "rent", "--limit", "4"],
    &[
        "search",
        "refund OR salary",
        "--min",
        "1000",
        "--limit",
        "5",
    ],
    &["rebuild", "balances"],
    &["rebuild", "search"],
    &["status"],
    &["balance", "bob"],
];

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/=".contains(c))
    {
        arg.to_owned()
    } else {
        format!("\"{}\"", arg.replace('"', "\\\""))
    }
}

/// Runs the demo in `data_dir/demo`, which it empties first.
///
/// # Errors
/// When the directory cannot be reset or the store cannot be opened; a refused command is
/// printed and the demo goes on.
pub async fn run(data_dir: &Path) -> Result<(), Box<dyn StdError + Send + Sync>> {
    let dir = data_dir.join("demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    println!(
        "# a fresh embedded ledger in {} (SQLite store, tantivy index, in-process read models)",
        dir.display()
    );
    let app = embedded_app(&dir).await?;
    for args in SCRIPT {
        let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        println!("\n$ ledger {}", line.join(" "));
        let cli = Cli::try_parse_from(std::iter::once("ledger").chain(args.iter().copied()))?;
        if let Err(e) = app.run(cli.command).await {
            println!("error: {}", report(&e));
        }
    }
    Ok(())
}
