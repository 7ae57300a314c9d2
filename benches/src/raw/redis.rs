//! Raw Redis baseline: the read-model commands of the ledger projection, pipelined directly.

use redis::{Pipeline, aio::ConnectionManager};

use crate::{BenchResult, ledger::Deposited};

/// The key (relative to the generation) of an account's counters hash.
pub(crate) fn account_key(d: &Deposited) -> String {
    format!("account:{}", d.account)
}

/// The key of an account's text fields (kept apart from its counters).
pub(crate) fn info_key(d: &Deposited) -> String {
    format!("account-info:{}", d.account)
}

/// The key of the balance ranking.
pub(crate) const RANKING_KEY: &str = "ranking";

/// The commands the ledger projection issues for one deposit, with keys under `prefix`:
/// two counters of the account's hash, its last counterparty, and the balance ranking.
pub(crate) fn add_commands(pipe: &mut Pipeline, prefix: &str, d: &Deposited) {
    let account = format!("{prefix}{}", account_key(d));
    pipe.cmd("HINCRBY")
        .arg(&account)
        .arg("balance")
        .arg(d.amount)
        .ignore();
    pipe.cmd("HINCRBY")
        .arg(&account)
        .arg("deposits")
        .arg(1)
        .ignore();
    pipe.cmd("HSET")
        .arg(format!("{prefix}{}", info_key(d)))
        .arg("last_counterparty")
        .arg(&d.counterparty)
        .ignore();
    pipe.cmd("ZINCRBY")
        .arg(format!("{prefix}{RANKING_KEY}"))
        .arg(d.amount)
        .arg(&d.account)
        .ignore();
}

/// Sends the commands of `deposits` in pipelines of `batch` events (no MULTI, no
/// checkpoint): the raw rate of the same writes.
///
/// # Errors
/// Redis failures.
pub(crate) async fn write_pipelined(
    conn: &mut ConnectionManager,
    prefix: &str,
    deposits: &[Deposited],
    batch: usize,
) -> BenchResult<()> {
    for chunk in deposits.chunks(batch.max(1)) {
        let mut pipe = redis::pipe();
        for d in chunk {
            add_commands(&mut pipe, prefix, d);
        }
        let () = pipe.query_async(conn).await?;
    }
    Ok(())
}
