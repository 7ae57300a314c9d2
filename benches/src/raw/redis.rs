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

/// The lookup key of an account's first counterparty (the framework's lookup; the raw
/// baseline keeps the same values in a hash of the same name).
pub(crate) fn first_key(d: &Deposited) -> String {
    first_key_of(&d.account)
}

/// [`first_key`] from the account id alone (the stream id of the account's events).
pub(crate) fn first_key_of(account: &str) -> String {
    format!("first:{account}")
}

/// The commands the ledger projection issues for one deposit, with keys under `prefix`:
/// its first counterparty (from the lookup), two counters of the account's hash, its last
/// counterparty, and the balance ranking.
pub(crate) fn add_commands(pipe: &mut Pipeline, prefix: &str, d: &Deposited, first: &str) {
    pipe.cmd("HSET")
        .arg(format!("{prefix}{}", info_key(d)))
        .arg("first_counterparty")
        .arg(first)
        .ignore();
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
/// checkpoint), each batch after one `HMGET` of its lookups from a hash and with the new
/// lookups written back in its pipeline: the raw rate of the same reads and writes.
///
/// # Errors
/// Redis failures.
pub(crate) async fn write_pipelined(
    conn: &mut ConnectionManager,
    prefix: &str,
    deposits: &[Deposited],
    batch: usize,
) -> BenchResult<()> {
    let lookups = format!("{prefix}__lookups");
    for chunk in deposits.chunks(batch.max(1)) {
        let mut keys: Vec<String> = chunk.iter().map(first_key).collect();
        keys.sort();
        keys.dedup();
        let stored: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&lookups)
            .arg(&keys)
            .query_async(conn)
            .await?;
        let mut known: std::collections::HashMap<String, String> = keys
            .into_iter()
            .zip(stored)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let mut pipe = redis::pipe();
        for d in chunk {
            let key = first_key(d);
            let first = match known.get(&key) {
                Some(first) => first.clone(),
                None => {
                    let value = serde_json::to_string(&d.counterparty)?;
                    pipe.cmd("HSET").arg(&lookups).arg(&key).arg(value).ignore();
                    known.insert(key, serde_json::to_string(&d.counterparty)?);
                    d.counterparty.clone()
                }
            };
            add_commands(&mut pipe, prefix, d, &first);
        }
        let () = pipe.query_async(conn).await?;
    }
    Ok(())
}
