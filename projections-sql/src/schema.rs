//! The user's tables: DDL with `{name}` placeholders, and the strict expansion of those
//! placeholders into one generation's real names.

use std::{collections::HashMap, sync::Arc};

use crate::error::{SqlError, SqlResult};

/// The tables (and indexes) of a SQL read model, as DDL run in order when a generation is
/// created. Every name is written as a placeholder, `{accounts}`; each generation gets its
/// own copy of every table.
///
/// ```
/// use annals_projections_sql::SqlSchema;
///
/// let schema = SqlSchema::new()
///     .table(
///         "accounts",
///         "CREATE TABLE {accounts} (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)",
///     )
///     .index("accounts_by_balance", "CREATE INDEX {accounts_by_balance} ON {accounts} (balance)");
/// assert_eq!(schema.tables().collect::<Vec<_>>(), ["accounts"]);
/// ```
///
/// Names are lower-case ASCII letters, digits and single `_`s, starting with a letter, at
/// most 48 bytes. Placeholders may name any declared table or index; anything else in
/// braces is an error ([`SqlError::UnknownTable`]), and a literal brace is written `{{` or
/// `}}`. The schema is checked when a read model is created with it.
#[derive(Debug, Clone, Default)]
pub struct SqlSchema {
    objects: Vec<Object>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A table (or view): qualified by the generation's schema or prefix.
    Table,
    /// An index: in PostgreSQL unqualified (an index lives in its table's schema), in SQLite
    /// prefixed like a table (index names are per database there).
    Index,
    /// DDL that declares no name of its own.
    Statement,
}

#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) ddl: String,
}

impl SqlSchema {
    /// No tables yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares table `name`, created by `ddl` (which names it `{name}`).
    pub fn table(mut self, name: &str, ddl: &str) -> Self {
        self.objects.push(Object {
            name: name.to_owned(),
            kind: Kind::Table,
            ddl: ddl.to_owned(),
        });
        self
    }

    /// Declares index `name`, created by `ddl` (`CREATE INDEX {name} ON {table} (…)`).
    pub fn index(mut self, name: &str, ddl: &str) -> Self {
        self.objects.push(Object {
            name: name.to_owned(),
            kind: Kind::Index,
            ddl: ddl.to_owned(),
        });
        self
    }

    /// Adds DDL that declares no name (a trigger, a comment, an `ALTER TABLE`), run in order
    /// with the rest.
    pub fn statement(mut self, ddl: &str) -> Self {
        self.objects.push(Object {
            name: String::new(),
            kind: Kind::Statement,
            ddl: ddl.to_owned(),
        });
        self
    }

    /// The declared table names, in order.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.objects
            .iter()
            .filter(|o| o.kind == Kind::Table)
            .map(|o| o.name.as_str())
    }

    pub(crate) fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// Checks names and every placeholder of every DDL statement.
    pub(crate) fn check(&self) -> SqlResult<()> {
        let mut seen = HashMap::new();
        for o in self.objects.iter().filter(|o| o.kind != Kind::Statement) {
            check_table_name(&o.name)?;
            if seen.insert(o.name.as_str(), ()).is_some() {
                return Err(SqlError::InvalidName {
                    name: o.name.clone(),
                    reason: "declared twice in the schema",
                });
            }
        }
        let probe = self.names(|o| o.name.clone());
        for o in &self.objects {
            probe.expand(&o.ddl)?;
        }
        Ok(())
    }

    /// The names of one generation: `render` gives each declared object's SQL name.
    pub(crate) fn names(&self, render: impl Fn(&Object) -> String) -> Names {
        Names {
            map: Arc::new(
                self.objects
                    .iter()
                    .filter(|o| o.kind != Kind::Statement)
                    .map(|o| (o.name.clone(), render(o)))
                    .collect(),
            ),
        }
    }
}

/// A table or index name the user declares.
fn check_table_name(name: &str) -> SqlResult<()> {
    let bad = |reason| {
        Err(SqlError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 48 {
        return bad("a table name has 1 to 48 bytes");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return bad("a table name starts with a lower-case letter");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return bad("a table name holds only lower-case letters, digits and '_'");
    }
    if name.contains("__") {
        return bad("a table name holds no '__' (it separates the parts of generated names)");
    }
    Ok(())
}

/// Quotes an identifier that holds no `"` (every name here is checked first).
pub(crate) fn quote(identifier: &str) -> String {
    debug_assert!(!identifier.contains('"'));
    format!("\"{identifier}\"")
}

/// One generation's SQL names of the declared tables, by placeholder name.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    map: Arc<HashMap<String, String>>,
}

impl Names {
    /// The SQL name of `table`.
    pub(crate) fn get(&self, table: &str) -> SqlResult<&str> {
        self.map
            .get(table)
            .map(String::as_str)
            .ok_or_else(|| SqlError::UnknownTable {
                name: table.to_owned(),
            })
    }

    /// `sql` with every `{name}` replaced by its SQL name and `{{`, `}}` by braces.
    pub(crate) fn expand(&self, sql: &str) -> SqlResult<String> {
        let malformed = |at, reason| SqlError::Placeholder {
            sql: sql.to_owned(),
            at,
            reason,
        };
        let bytes = sql.as_bytes();
        let mut out = String::with_capacity(sql.len() + 32);
        let mut i = 0;
        let mut copied = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    out.push_str(&sql[copied..=i]);
                    i += 2;
                    copied = i;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    out.push_str(&sql[copied..=i]);
                    i += 2;
                    copied = i;
                }
                b'}' => return Err(malformed(i, "a '}' closes no placeholder (write '}}')")),
                b'{' => {
                    let start = i + 1;
                    let Some(len) = sql[start..].find('}') else {
                        return Err(malformed(i, "a '{' is never closed (write '{{')"));
                    };
                    let name = &sql[start..start + len];
                    if name.is_empty()
                        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(malformed(
                            i,
                            "a placeholder is '{' table name '}' (write '{{' for a brace)",
                        ));
                    }
                    out.push_str(&sql[copied..i]);
                    out.push_str(self.get(name)?);
                    i = start + len + 1;
                    copied = i;
                }
                _ => i += 1,
            }
        }
        out.push_str(&sql[copied..]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        SqlSchema::new()
            .table("accounts", "CREATE TABLE {accounts} (id TEXT)")
            .names(|o| format!("\"g1\".\"{}\"", o.name))
    }

    #[test]
    fn placeholders_expand_strictly() {
        let n = names();
        assert_eq!(
            n.expand("INSERT INTO {accounts} VALUES ($1) -- {{x}}")
                .unwrap(),
            "INSERT INTO \"g1\".\"accounts\" VALUES ($1) -- {x}"
        );
        assert!(matches!(
            n.expand("SELECT * FROM {users}"),
            Err(SqlError::UnknownTable { name }) if name == "users"
        ));
        for bad in [
            "SELECT '{\"a\": 1}'",
            "SELECT '{1,2}'",
            "{accounts",
            "x}",
            "{}",
            "{accounts; drop table x}",
        ] {
            assert!(
                matches!(n.expand(bad), Err(SqlError::Placeholder { .. })),
                "{bad}"
            );
        }
        assert_eq!(n.expand("").unwrap(), "");
        assert_eq!(n.expand("é{accounts}é").unwrap(), "é\"g1\".\"accounts\"é");
    }

    #[test]
    fn schemas_are_checked() {
        assert!(
            SqlSchema::new()
                .table("a", "CREATE TABLE {a} (x int)")
                .check()
                .is_ok()
        );
        for bad in ["", "A", "1a", "a__b", "a-b", &"a".repeat(49)] {
            let s = SqlSchema::new().table(bad, "CREATE TABLE x (y int)");
            assert!(
                matches!(s.check(), Err(SqlError::InvalidName { .. })),
                "{bad}"
            );
        }
        let twice = SqlSchema::new()
            .table("a", "CREATE TABLE {a} (x int)")
            .index("a", "CREATE INDEX {a} ON {a} (x)");
        assert!(twice.check().is_err());
        let unknown = SqlSchema::new().table("a", "CREATE TABLE {b} (x int)");
        assert!(matches!(
            unknown.check(),
            Err(SqlError::UnknownTable { .. })
        ));
    }
}
