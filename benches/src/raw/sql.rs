//! Raw PostgreSQL baseline of the SQL read model: the ledger balances written with sqlx
//! alone, one `INSERT … SELECT … FROM unnest(…) ON CONFLICT … DO UPDATE` per batch.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, PgPool};

use crate::{BenchResult, ledger::Deposited, raw::redis::first_key};

/// The balances table, for the projection (with `{accounts}`) and the baseline alike.
pub(crate) const ACCOUNTS_DDL: &str = "CREATE TABLE {accounts} (
    id text PRIMARY KEY,
    balance bigint NOT NULL,
    deposits bigint NOT NULL,
    first_counterparty text NOT NULL,
    last_counterparty text NOT NULL
)";

/// Creates the baseline's tables (`accounts`, `lookups`) in the pool's schema, dropping
/// earlier ones.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn create_tables(pool: &PgPool) -> BenchResult<()> {
    let accounts = ACCOUNTS_DDL.replace("{accounts}", "accounts");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS accounts, lookups;
         {accounts};
         CREATE TABLE lookups (key text PRIMARY KEY, value text NOT NULL);"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// One account's row, folded over a batch.
struct Row<'a> {
    balance: i64,
    deposits: i64,
    first: String,
    last: &'a str,
}

/// Writes the balances of `deposits` in batches of `batch` events: per batch, one `SELECT`
/// of the accounts' first counterparties from `lookups`, the batch folded into one row per
/// account, then one transaction with one upsert of the new lookups and one of the rows
/// (arrays bound per column), as the projection writes them.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn write_batched(
    pool: &PgPool,
    deposits: &[Deposited],
    batch: usize,
) -> BenchResult<()> {
    for chunk in deposits.chunks(batch.max(1)) {
        let mut keys: Vec<String> = chunk.iter().map(first_key).collect();
        keys.sort_unstable();
        keys.dedup();
        let stored: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM lookups WHERE key = ANY($1::text[])")
                .bind(&keys)
                .fetch_all(pool)
                .await?;
        let mut first: HashMap<String, String> = HashMap::with_capacity(keys.len());
        for (key, value) in stored {
            first.insert(key, serde_json::from_str(&value)?);
        }
        let (mut new_keys, mut new_values) = (Vec::new(), Vec::new());
        let mut rows: HashMap<&str, Row<'_>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for d in chunk {
            let key = first_key(d);
            let counterparty = match first.get(&key) {
                Some(f) => f.clone(),
                None => {
                    new_keys.push(key.clone());
                    new_values.push(serde_json::to_string(&d.counterparty)?);
                    first.insert(key, d.counterparty.clone());
                    d.counterparty.clone()
                }
            };
            match rows.get_mut(d.account.as_str()) {
                Some(row) => {
                    row.balance += d.amount;
                    row.deposits += 1;
                    row.first = counterparty;
                    row.last = &d.counterparty;
                }
                None => {
                    order.push(&d.account);
                    rows.insert(
                        &d.account,
                        Row {
                            balance: d.amount,
                            deposits: 1,
                            first: counterparty,
                            last: &d.counterparty,
                        },
                    );
                }
            }
        }
        let mut ids = Vec::with_capacity(order.len());
        let mut balances = Vec::with_capacity(order.len());
        let mut counts = Vec::with_capacity(order.len());
        let mut firsts = Vec::with_capacity(order.len());
        let mut lasts = Vec::with_capacity(order.len());
        for id in order {
            let row = rows.remove(id).ok_or("a folded row is missing")?;
            ids.push(id);
            balances.push(row.balance);
            counts.push(row.deposits);
            firsts.push(row.first);
            lasts.push(row.last);
        }
        let mut tx = pool.begin().await?;
        if !new_keys.is_empty() {
            sqlx::query(
                "INSERT INTO lookups (key, value) SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(&new_keys)
            .bind(&new_values)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO accounts AS t (id, balance, deposits, first_counterparty, last_counterparty)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[])
             ON CONFLICT (id) DO UPDATE SET balance = t.balance + excluded.balance,
                 deposits = t.deposits + excluded.deposits,
                 first_counterparty = excluded.first_counterparty,
                 last_counterparty = excluded.last_counterparty",
        )
        .bind(&ids)
        .bind(&balances)
        .bind(&counts)
        .bind(&firsts)
        .bind(&lasts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The deposits the baseline's table holds, summed.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn deposits_stored(pool: &PgPool) -> BenchResult<u64> {
    let (sum,): (Option<i64>,) = sqlx::query_as("SELECT sum(deposits)::bigint FROM accounts")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(sum.unwrap_or(0))?)
}
