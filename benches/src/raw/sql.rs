//! Raw PostgreSQL baseline of the SQL read model: the ledger balances written with sqlx
//! alone, one `INSERT … SELECT … FROM unnest(…) ON CONFLICT … DO UPDATE` per batch.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use crate::{BenchResult, ledger::Deposited, raw::redis::first_key};

/// The balances table, for the projection (with `{accounts}`) and the baseline alike.
pub(crate) const ACCOUNTS_DDL: &str = "CREATE TABLE {accounts} (
    id text PRIMARY KEY,
    balance bigint NOT NULL,
    deposits bigint NOT NULL,
    first_counterparty text NOT NULL,
    last_counterparty text NOT NULL
)";

/// The ledger entries table, one row per deposit (keyed by its event id), for the
/// projection (with `{entries}`) and the baseline alike.
pub(crate) const ENTRIES_DDL: &str = "CREATE TABLE {entries} (
    id uuid PRIMARY KEY,
    account text NOT NULL,
    amount bigint NOT NULL,
    counterparty text NOT NULL,
    first_counterparty text NOT NULL
)";

/// Creates the baseline's tables (`accounts`, `entries`, `lookups`) in the pool's schema,
/// dropping earlier ones.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn create_tables(pool: &PgPool) -> BenchResult<()> {
    let accounts = ACCOUNTS_DDL.replace("{accounts}", "accounts");
    let entries = ENTRIES_DDL.replace("{entries}", "entries");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS accounts, entries, lookups;
         {accounts};
         {entries};
         CREATE TABLE lookups (key text PRIMARY KEY, value text NOT NULL);"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// The first counterparties a chunk of deposits needs, read with one `SELECT` from `lookups`;
/// those it sets first are returned apart, to be written with the chunk.
struct Firsts {
    known: HashMap<String, String>,
    new_keys: Vec<String>,
    new_values: Vec<String>,
}

impl Firsts {
    async fn load<'a>(
        pool: &PgPool,
        chunk: impl Iterator<Item = &'a Deposited>,
    ) -> BenchResult<Self> {
        let mut keys: Vec<String> = chunk.map(first_key).collect();
        keys.sort_unstable();
        keys.dedup();
        let stored: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM lookups WHERE key = ANY($1::text[])")
                .bind(&keys)
                .fetch_all(pool)
                .await?;
        let mut known = HashMap::with_capacity(keys.len());
        for (key, value) in stored {
            known.insert(key, serde_json::from_str(&value)?);
        }
        Ok(Self {
            known,
            new_keys: Vec::new(),
            new_values: Vec::new(),
        })
    }

    /// The account's first counterparty: stored, or this deposit's (then kept as new).
    fn of(&mut self, d: &Deposited) -> BenchResult<String> {
        let key = first_key(d);
        if let Some(first) = self.known.get(&key) {
            return Ok(first.clone());
        }
        self.new_keys.push(key.clone());
        self.new_values
            .push(serde_json::to_string(&d.counterparty)?);
        self.known.insert(key, d.counterparty.clone());
        Ok(d.counterparty.clone())
    }

    /// Writes the new lookups and the chunk's `rows` (one statement) in one transaction.
    async fn commit_with(
        &self,
        pool: &PgPool,
        rows: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> BenchResult<()> {
        let mut tx = pool.begin().await?;
        if !self.new_keys.is_empty() {
            sqlx::query(
                "INSERT INTO lookups (key, value) SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(&self.new_keys)
            .bind(&self.new_values)
            .execute(&mut *tx)
            .await?;
        }
        rows.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// One account's row, folded over a batch.
struct Row<'a> {
    balance: i64,
    deposits: i64,
    first: String,
    last: &'a str,
}

/// Writes the balances of `deposits` (their event ids unused) in batches of `batch` events: per batch, one `SELECT`
/// of the accounts' first counterparties from `lookups`, the batch folded into one row per
/// account, then one transaction with one upsert of the new lookups and one of the rows
/// (arrays bound per column), as the projection writes them.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn write_batched(
    pool: &PgPool,
    deposits: &[(Uuid, Deposited)],
    batch: usize,
) -> BenchResult<()> {
    for chunk in deposits.chunks(batch.max(1)) {
        let mut firsts = Firsts::load(pool, chunk.iter().map(|(_, d)| d)).await?;
        let mut rows: HashMap<&str, Row<'_>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for (_, d) in chunk {
            let counterparty = firsts.of(d)?;
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
        let mut first_values = Vec::with_capacity(order.len());
        let mut lasts = Vec::with_capacity(order.len());
        for id in order {
            let row = rows.remove(id).ok_or("a folded row is missing")?;
            ids.push(id);
            balances.push(row.balance);
            counts.push(row.deposits);
            first_values.push(row.first);
            lasts.push(row.last);
        }
        let rows = sqlx::query(
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
        .bind(&first_values)
        .bind(&lasts);
        firsts.commit_with(pool, rows).await?;
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

/// Writes one ledger entry per deposit (`deposits`: each with its event id) in batches of
/// `batch` events: per batch, one `SELECT` of the accounts' first counterparties from
/// `lookups`, then one transaction with one upsert of the new lookups and one `INSERT …
/// SELECT … FROM unnest(…) ON CONFLICT (id) DO UPDATE` of the batch's rows (arrays bound per
/// column), as the projection writes them.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn write_entries_batched(
    pool: &PgPool,
    deposits: &[(Uuid, Deposited)],
    batch: usize,
) -> BenchResult<()> {
    for chunk in deposits.chunks(batch.max(1)) {
        let mut firsts = Firsts::load(pool, chunk.iter().map(|(_, d)| d)).await?;
        let mut ids = Vec::with_capacity(chunk.len());
        let mut accounts = Vec::with_capacity(chunk.len());
        let mut amounts = Vec::with_capacity(chunk.len());
        let mut counterparties = Vec::with_capacity(chunk.len());
        let mut first = Vec::with_capacity(chunk.len());
        for (id, d) in chunk {
            first.push(firsts.of(d)?);
            ids.push(*id);
            accounts.push(d.account.as_str());
            amounts.push(d.amount);
            counterparties.push(d.counterparty.as_str());
        }
        let rows = sqlx::query(
            "INSERT INTO entries AS t (id, account, amount, counterparty, first_counterparty)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[])
             ON CONFLICT (id) DO UPDATE SET account = excluded.account,
                 amount = excluded.amount, counterparty = excluded.counterparty,
                 first_counterparty = excluded.first_counterparty",
        )
        .bind(&ids)
        .bind(&accounts)
        .bind(&amounts)
        .bind(&counterparties)
        .bind(&first);
        firsts.commit_with(pool, rows).await?;
    }
    Ok(())
}

/// The entries the baseline's table holds.
///
/// # Errors
/// PostgreSQL failures.
pub(crate) async fn entries_stored(pool: &PgPool) -> BenchResult<u64> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM entries")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(n)?)
}
