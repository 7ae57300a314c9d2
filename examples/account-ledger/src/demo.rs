//! `ledger demo`: a short scripted session in a fresh embedded data directory, printing
//! each command as if typed, then what it did. Expected refusals are part of the script.

use std::{error::Error as StdError, io::Write as _, path::Path};

use annals_sqlite::SqliteEventStore;
use clap::Parser;

use crate::{
    app::{App, AppError, is_broken_pipe, report},
    backends::embedded_app,
    cli::Cli,
};

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
    &["status"],
    &["work", "--once"],
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
    say(format_args!(
        "# a fresh embedded ledger in {} (SQLite store, tantivy index, in-process read models)",
        dir.display()
    ))?;
    let app = embedded_app(&dir).await?;
    let outcome = script(&app).await;
    app.shutdown().await;
    outcome?;
    let data_dir = shell_quote(&dir.display().to_string());
    say(format_args!(
        "\n# the demo's ledger stays in {data_dir}; query it with --data-dir, for example:\n#   ledger --data-dir {data_dir} balance alice"
    ))?;
    Ok(())
}

/// Prints one line; a closed pipe is [`AppError::Output`] (the caller ends quietly).
fn say(line: std::fmt::Arguments<'_>) -> Result<(), AppError> {
    writeln!(std::io::stdout().lock(), "{line}").map_err(AppError::Output)
}

async fn script(app: &App<SqliteEventStore>) -> Result<(), Box<dyn StdError + Send + Sync>> {
    for args in SCRIPT {
        let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        say(format_args!("\n$ ledger {}", line.join(" ")))?;
        let cli = Cli::try_parse_from(std::iter::once("ledger").chain(args.iter().copied()))?;
        match app.run(cli.command).await {
            Ok(()) => {}
            Err(e) if is_broken_pipe(&e) => return Err(e.into()),
            Err(e) => say(format_args!("error: {}", report(&e)))?,
        }
    }
    Ok(())
}
