//! Row writes in PostgreSQL: one `INSERT … SELECT … FROM unnest(…) ON CONFLICT … DO UPDATE`
//! (or `DELETE … WHERE (key) IN (SELECT … FROM unnest(…))`) per table and column set, one
//! array parameter per column, each value cast to its column's type.

use std::{collections::HashMap, fmt::Write};

use sqlx::{AssertSqlSafe, PgPool, Postgres, postgres::PgArguments, query::Query};

use super::bind::check_text;
use crate::{
    SqlValue,
    error::{SqlError, SqlResult},
    row::{Kind, RowWrite, split_by_type, tag},
    schema::quote,
};

/// The column types of a generation's declared tables: table, column, SQL type.
#[derive(Debug, Default)]
pub(crate) struct ColumnTypes {
    tables: HashMap<String, HashMap<String, String>>,
}

impl ColumnTypes {
    /// Reads the column types of every table in schema `schema` (unquoted).
    pub(crate) async fn load(pool: &PgPool, schema: &str) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped
               AND c.relkind IN ('r', 'p', 'v', 'f', 'm')",
        )
        .bind(schema)
        .fetch_all(pool)
        .await?;
        let mut tables: HashMap<String, HashMap<String, String>> = HashMap::new();
        for (table, column, ty) in rows {
            tables.entry(table).or_default().insert(column, ty);
        }
        Ok(Self { tables })
    }

    fn of(&self, table: &str, column: &str) -> SqlResult<&str> {
        self.tables
            .get(table)
            .and_then(|t| t.get(column))
            .map(String::as_str)
            .ok_or_else(|| SqlError::Row {
                table: table.to_owned(),
                reason: format!("the table has no column {column:?}"),
            })
    }
}

/// The queries of one row write: one per run of rows whose columns have one type each.
pub(crate) fn queries(
    mut write: RowWrite,
    types: &ColumnTypes,
) -> SqlResult<Vec<Query<'static, Postgres, PgArguments>>> {
    let casts: Vec<&str> = write
        .columns
        .iter()
        .map(|(c, _)| types.of(&write.table, c))
        .collect::<SqlResult<_>>()?;
    let mut out = Vec::new();
    for rows in split_by_type(std::mem::take(&mut write.rows)) {
        let ncols = write.columns.len();
        // Each column's array type, from its first non-NULL value (text for all NULLs).
        let tags: Vec<u8> = (0..ncols)
            .map(|i| {
                rows.iter()
                    .map(|r| tag(&r[i]))
                    .find(|&t| t != 0)
                    .unwrap_or(4)
            })
            .collect();
        let sql = render(&write, &casts, &tags);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        let mut columns: Vec<Vec<SqlValue>> =
            (0..ncols).map(|_| Vec::with_capacity(rows.len())).collect();
        for row in rows {
            for (i, value) in row.into_iter().enumerate() {
                columns[i].push(value);
            }
        }
        for (values, tag) in columns.into_iter().zip(&tags) {
            query = bind_array(query, *tag, values)?;
        }
        out.push(query);
    }
    Ok(out)
}

fn array_type(tag: u8) -> &'static str {
    match tag {
        1 => "boolean[]",
        2 => "bigint[]",
        3 => "double precision[]",
        5 => "jsonb[]",
        6 => "bytea[]",
        _ => "text[]",
    }
}

/// The statement of a row write whose column `i` is bound as an array of type `tags[i]`
/// and cast to `casts[i]`.
fn render(write: &RowWrite, casts: &[&str], tags: &[u8]) -> String {
    let mut select = String::new();
    let mut unnest = String::new();
    let mut aliases = String::new();
    for (i, cast) in casts.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(select, "{sep}u.c{i}::{cast}");
        let _ = write!(unnest, "{sep}${}::{}", i + 1, array_type(tags[i]));
        let _ = write!(aliases, "{sep}c{i}");
    }
    let source = format!("SELECT {select} FROM unnest({unnest}) AS u({aliases})");
    let keys: Vec<String> = write
        .columns
        .iter()
        .filter(|(_, k)| *k == Kind::Key)
        .map(|(c, _)| quote(c))
        .collect();
    if !write.upsert {
        let target: Vec<String> = keys.iter().map(|k| format!("t.{k}")).collect();
        return format!(
            "DELETE FROM {} AS t WHERE ({}) IN ({source})",
            write.sql,
            target.join(", ")
        );
    }
    let columns: Vec<String> = write.columns.iter().map(|(c, _)| quote(c)).collect();
    let updates: Vec<String> = write
        .columns
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
        "INSERT INTO {} AS t ({}) {source} ON CONFLICT ({}) {action}",
        write.sql,
        columns.join(", "),
        keys.join(", ")
    )
}

/// Binds `values` (each of type `tag` or NULL) as one array.
fn bind_array(
    query: Query<'static, Postgres, PgArguments>,
    tag: u8,
    values: Vec<SqlValue>,
) -> SqlResult<Query<'static, Postgres, PgArguments>> {
    macro_rules! array {
        ($variant:ident, $map:expr) => {{
            let array: Vec<Option<_>> = values
                .into_iter()
                .map(|v| match v {
                    SqlValue::$variant(x) => Ok(Some($map(x))),
                    _ => Ok(None),
                })
                .collect::<SqlResult<_>>()?;
            query.bind(array)
        }};
    }
    Ok(match tag {
        1 => array!(Bool, |x| x),
        2 => array!(Int, |x| x),
        3 => array!(Float, |x| x),
        5 => array!(Json, sqlx::types::Json),
        6 => array!(Bytes, |x| x),
        _ => {
            let array: Vec<Option<String>> = values
                .into_iter()
                .map(|v| match v {
                    SqlValue::Text(t) => {
                        check_text(&t)?;
                        Ok(Some(t))
                    }
                    _ => Ok(None),
                })
                .collect::<SqlResult<_>>()?;
            query.bind(array)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_have_the_expected_shape() {
        let write = RowWrite {
            table: "accounts".into(),
            sql: "\"s\".\"accounts\"".into(),
            columns: vec![
                ("id".into(), Kind::Key),
                ("balance".into(), Kind::Add),
                ("name".into(), Kind::Set),
            ],
            upsert: true,
            rows: vec![],
        };
        assert_eq!(
            render(&write, &["uuid", "bigint", "text"], &[4, 2, 4]),
            "INSERT INTO \"s\".\"accounts\" AS t (\"id\", \"balance\", \"name\") \
             SELECT u.c0::uuid, u.c1::bigint, u.c2::text \
             FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(c0, c1, c2) \
             ON CONFLICT (\"id\") DO UPDATE SET \"balance\" = t.\"balance\" + excluded.\"balance\", \
             \"name\" = excluded.\"name\""
        );
        let delete = RowWrite {
            columns: vec![("id".into(), Kind::Key)],
            upsert: false,
            ..write
        };
        assert_eq!(
            render(&delete, &["uuid"], &[4]),
            "DELETE FROM \"s\".\"accounts\" AS t WHERE (t.\"id\") IN \
             (SELECT u.c0::uuid FROM unnest($1::text[]) AS u(c0))"
        );
    }
}
