//! SQLite: read models in tables ([`SqliteTables`]) and leases ([`SqliteLeases`]), in the
//! event store's file or any other.

mod leases;
mod rows;
mod tables;
mod writer;

pub use leases::SqliteLeases;
pub use tables::SqliteTables;
pub use writer::SqliteWriter;

use sqlx::{Sqlite, SqlitePool, Transaction, query::Query, sqlite::SqliteArguments};

use crate::SqlValue;

/// Starts a write transaction that holds SQLite's write lock from its first statement on
/// (`BEGIN IMMEDIATE`), waiting up to the connection's busy timeout for it.
pub(crate) async fn immediate(
    pool: &SqlitePool,
) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// Binds `value` as the next parameter.
pub(crate) fn bind(
    query: Query<'static, Sqlite, SqliteArguments>,
    value: SqlValue,
) -> Query<'static, Sqlite, SqliteArguments> {
    match value {
        SqlValue::Null => query.bind(None::<i64>),
        SqlValue::Bool(v) => query.bind(v),
        SqlValue::Int(v) => query.bind(v),
        SqlValue::Float(v) => query.bind(v),
        SqlValue::Text(v) => query.bind(v),
        SqlValue::Json(v) => query.bind(v.to_string()),
        SqlValue::Bytes(v) => query.bind(v),
    }
}

/// The current time in milliseconds since 1970 by SQLite's clock, as an SQL expression.
pub(crate) const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
