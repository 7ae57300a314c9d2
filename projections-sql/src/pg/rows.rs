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
    tables: HashMap<String, TableTypes>,
}

/// One table's column types, and whether a row write to it may run as a data-modifying
/// `WITH` (a plain or partitioned table without rules).
#[derive(Debug, Default)]
struct TableTypes {
    columns: HashMap<String, String>,
    plain: bool,
}

impl ColumnTypes {
    /// Reads the column types of every table in schema `schema` (unquoted).
    pub(crate) async fn load(pool: &PgPool, schema: &str) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String, String, bool)> = sqlx::query_as(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                 c.relkind IN ('r', 'p') AND NOT c.relhasrules
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped
               AND c.relkind IN ('r', 'p', 'v', 'f', 'm')",
        )
        .bind(schema)
        .fetch_all(pool)
        .await?;
        let mut tables: HashMap<String, TableTypes> = HashMap::new();
        for (table, column, ty, plain) in rows {
            let t = tables.entry(table).or_default();
            t.plain = plain;
            t.columns.insert(column, ty);
        }
        Ok(Self { tables })
    }

    fn of(&self, table: &str, column: &str) -> SqlResult<&str> {
        self.tables
            .get(table)
            .and_then(|t| t.columns.get(column))
            .map(String::as_str)
            .ok_or_else(|| SqlError::Row {
                table: table.to_owned(),
                reason: format!("the table has no column {column:?}"),
            })
    }

    fn plain(&self, table: &str) -> bool {
        self.tables.get(table).is_some_and(|t| t.plain)
    }
}

/// One statement of a row write: its columns, each bound as one typed array.
pub(crate) struct RowQuery {
    write: RowWrite,
    casts: Vec<String>,
    tags: Vec<u8>,
    arrays: Vec<Array>,
    /// The table may be written from a data-modifying `WITH`.
    pub(crate) plain: bool,
}

impl RowQuery {
    /// The statement, its parameters numbered from `$first`; `gate` (a `WITH` query's
    /// name) makes it write nothing when that query returns no row.
    pub(crate) fn sql(&self, first: usize, gate: Option<&str>) -> String {
        let casts: Vec<&str> = self.casts.iter().map(String::as_str).collect();
        render(&self.write, &casts, &self.tags, first, gate)
    }

    /// Binds the column arrays, in order.
    pub(crate) fn bind(
        self,
        mut query: Query<'static, Postgres, PgArguments>,
    ) -> Query<'static, Postgres, PgArguments> {
        for array in self.arrays {
            query = array.bind(query);
        }
        query
    }

    /// The statement on its own, parameters from `$1`.
    pub(crate) fn query(self) -> Query<'static, Postgres, PgArguments> {
        let sql = self.sql(1, None);
        self.bind(sqlx::query(AssertSqlSafe(sql)))
    }
}

/// The statements of one row write: one per run of rows whose columns have one type each.
pub(crate) fn queries(mut write: RowWrite, types: &ColumnTypes) -> SqlResult<Vec<RowQuery>> {
    let casts: Vec<String> = write
        .columns
        .iter()
        .map(|(c, _)| types.of(&write.table, c).map(str::to_owned))
        .collect::<SqlResult<_>>()?;
    let plain = types.plain(&write.table);
    let ncols = write.columns.len();
    let runs = split_by_type(std::mem::take(&mut write.rows));
    let mut out = Vec::with_capacity(runs.len());
    for rows in runs {
        // Each column's array type, from its first non-NULL value (text for all NULLs).
        let tags: Vec<u8> = (0..ncols)
            .map(|i| {
                rows.iter()
                    .map(|r| tag(&r[i]))
                    .find(|&t| t != 0)
                    .unwrap_or(4)
            })
            .collect();
        let mut arrays: Vec<Array> = tags
            .iter()
            .map(|&t| Array::with_capacity(t, rows.len()))
            .collect();
        for row in rows {
            for (array, value) in arrays.iter_mut().zip(row) {
                array.push(value)?;
            }
        }
        out.push(RowQuery {
            write: RowWrite {
                table: write.table.clone(),
                sql: write.sql.clone(),
                columns: write.columns.clone(),
                upsert: write.upsert,
                rows: Vec::new(),
            },
            casts: casts.clone(),
            tags,
            arrays,
            plain,
        });
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
/// (parameter `$first + i`) and cast to `casts[i]`; with `gate`, its source is empty
/// unless the `WITH` query of that name returns a row.
fn render(
    write: &RowWrite,
    casts: &[&str],
    tags: &[u8],
    first: usize,
    gate: Option<&str>,
) -> String {
    let mut select = String::new();
    let mut unnest = String::new();
    let mut aliases = String::new();
    for (i, cast) in casts.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(select, "{sep}u.c{i}::{cast}");
        let _ = write!(unnest, "{sep}${}::{}", first + i, array_type(tags[i]));
        let _ = write!(aliases, "{sep}c{i}");
    }
    let mut source = format!("SELECT {select} FROM unnest({unnest}) AS u({aliases})");
    if let Some(gate) = gate {
        let _ = write!(source, " WHERE EXISTS (SELECT FROM {gate})");
    }
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

/// One column's values, as the typed array bound for it (NULLs as `None`).
enum Array {
    Bool(Vec<Option<bool>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
    Json(Vec<Option<sqlx::types::Json<serde_json::Value>>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Array {
    fn with_capacity(tag: u8, n: usize) -> Self {
        match tag {
            1 => Self::Bool(Vec::with_capacity(n)),
            2 => Self::Int(Vec::with_capacity(n)),
            3 => Self::Float(Vec::with_capacity(n)),
            5 => Self::Json(Vec::with_capacity(n)),
            6 => Self::Bytes(Vec::with_capacity(n)),
            _ => Self::Text(Vec::with_capacity(n)),
        }
    }

    /// Adds `value` (of the array's type, or NULL).
    fn push(&mut self, value: SqlValue) -> SqlResult<()> {
        match (self, value) {
            (Self::Bool(a), SqlValue::Bool(v)) => a.push(Some(v)),
            (Self::Int(a), SqlValue::Int(v)) => a.push(Some(v)),
            (Self::Float(a), SqlValue::Float(v)) => a.push(Some(v)),
            (Self::Text(a), SqlValue::Text(v)) => {
                check_text(&v)?;
                a.push(Some(v));
            }
            (Self::Json(a), SqlValue::Json(v)) => a.push(Some(sqlx::types::Json(v))),
            (Self::Bytes(a), SqlValue::Bytes(v)) => a.push(Some(v)),
            (Self::Bool(a), _) => a.push(None),
            (Self::Int(a), _) => a.push(None),
            (Self::Float(a), _) => a.push(None),
            (Self::Text(a), _) => a.push(None),
            (Self::Json(a), _) => a.push(None),
            (Self::Bytes(a), _) => a.push(None),
        }
        Ok(())
    }

    fn bind(
        self,
        query: Query<'static, Postgres, PgArguments>,
    ) -> Query<'static, Postgres, PgArguments> {
        match self {
            Self::Bool(a) => query.bind(a),
            Self::Int(a) => query.bind(a),
            Self::Float(a) => query.bind(a),
            Self::Text(a) => query.bind(a),
            Self::Json(a) => query.bind(a),
            Self::Bytes(a) => query.bind(a),
        }
    }
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
            render(&write, &["uuid", "bigint", "text"], &[4, 2, 4], 1, None),
            "INSERT INTO \"s\".\"accounts\" AS t (\"id\", \"balance\", \"name\") \
             SELECT u.c0::uuid, u.c1::bigint, u.c2::text \
             FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(c0, c1, c2) \
             ON CONFLICT (\"id\") DO UPDATE SET \"balance\" = t.\"balance\" + excluded.\"balance\", \
             \"name\" = excluded.\"name\""
        );
        assert_eq!(
            render(
                &write,
                &["uuid", "bigint", "text"],
                &[4, 2, 4],
                15,
                Some("m")
            ),
            "INSERT INTO \"s\".\"accounts\" AS t (\"id\", \"balance\", \"name\") \
             SELECT u.c0::uuid, u.c1::bigint, u.c2::text \
             FROM unnest($15::text[], $16::bigint[], $17::text[]) AS u(c0, c1, c2) \
             WHERE EXISTS (SELECT FROM m) \
             ON CONFLICT (\"id\") DO UPDATE SET \"balance\" = t.\"balance\" + excluded.\"balance\", \
             \"name\" = excluded.\"name\""
        );
        let delete = RowWrite {
            columns: vec![("id".into(), Kind::Key)],
            upsert: false,
            ..write
        };
        assert_eq!(
            render(&delete, &["uuid"], &[4], 1, None),
            "DELETE FROM \"s\".\"accounts\" AS t WHERE (t.\"id\") IN \
             (SELECT u.c0::uuid FROM unnest($1::text[]) AS u(c0))"
        );
    }
}
