//! Row writes in SQLite: multi-row `INSERT … VALUES … ON CONFLICT … DO UPDATE` (or
//! `DELETE … WHERE (key) IN (VALUES …)`) statements, as many rows each as SQLite's limit
//! of bound parameters allows.

use std::fmt::Write;

use sqlx::{AssertSqlSafe, Sqlite, query::Query, sqlite::SqliteArguments};

use super::bind;
use crate::{
    row::{Kind, RowWrite},
    schema::quote,
};

/// SQLite's limit of bound parameters in one statement (`SQLITE_MAX_VARIABLE_NUMBER` of
/// the bundled SQLite).
const MAX_PARAMETERS: usize = 32_766;

/// Rows per statement at most, to keep statements of a reasonable size.
const MAX_ROWS: usize = 1_000;

/// The queries of one row write, in chunks of rows that fit SQLite's parameter limit.
pub(crate) fn queries(write: RowWrite) -> Vec<Query<'static, Sqlite, SqliteArguments>> {
    let ncols = write.columns.len().max(1);
    let per = (MAX_PARAMETERS / ncols).clamp(1, MAX_ROWS);
    let mut out = Vec::new();
    let mut rows = write.rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(per).collect();
        let sql = render(&write.sql, &write.columns, write.upsert, chunk.len());
        // Statements of varying row counts are not worth keeping prepared.
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(chunk.len() <= 4);
        for row in chunk {
            for value in row {
                query = bind(query, value);
            }
        }
        out.push(query);
    }
    out
}

/// The statement of `rows` rows of `columns`.
fn render(table: &str, columns: &[(String, Kind)], upsert: bool, rows: usize) -> String {
    let ncols = columns.len();
    let mut values = String::with_capacity(rows * (ncols * 7 + 4));
    for r in 0..rows {
        values.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..ncols {
            let _ = write!(
                values,
                "{}?{}",
                if c == 0 { "" } else { ", " },
                r * ncols + c + 1
            );
        }
        values.push(')');
    }
    let keys: Vec<String> = columns
        .iter()
        .filter(|(_, k)| *k == Kind::Key)
        .map(|(c, _)| quote(c))
        .collect();
    if !upsert {
        return format!(
            "DELETE FROM {table} WHERE ({}) IN (VALUES {values})",
            keys.join(", ")
        );
    }
    let names: Vec<String> = columns.iter().map(|(c, _)| quote(c)).collect();
    let updates: Vec<String> = columns
        .iter()
        .filter_map(|(c, kind)| {
            let c = quote(c);
            match kind {
                Kind::Key => None,
                Kind::Set => Some(format!("{c} = excluded.{c}")),
                Kind::Add => Some(format!("{c} = t.{c} + excluded.{c}")),
            }
        })
        .collect();
    let action = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {table} AS t ({}) VALUES {values} ON CONFLICT ({}) {action}",
        names.join(", "),
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_have_the_expected_shape() {
        let columns = [("id".to_owned(), Kind::Key), ("n".to_owned(), Kind::Add)];
        assert_eq!(
            render("\"t1\"", &columns, true, 2),
            "INSERT INTO \"t1\" AS t (\"id\", \"n\") VALUES (?1, ?2), (?3, ?4) \
             ON CONFLICT (\"id\") DO UPDATE SET \"n\" = t.\"n\" + excluded.\"n\""
        );
        assert_eq!(
            render("\"t1\"", &columns[..1], false, 2),
            "DELETE FROM \"t1\" WHERE (\"id\") IN (VALUES (?1), (?2))"
        );
    }
}
