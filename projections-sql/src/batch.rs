//! The batch a handler fills: statements with placeholders expanded, dead letters, lookups.

use std::{collections::HashMap, fmt};

use annals_projections::{DeadLetter, Lookups, WriteBatch};
use uuid::Uuid;

use crate::{
    SqlRow, SqlValue,
    error::{SqlError, SqlResult},
    row::{self, Kind, Op, RowOp, Shape, Step},
    schema::Names,
};

/// One statement of a batch, its placeholders expanded for the generation written.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) values: Vec<SqlValue>,
}

/// The writes a handler adds to a SQL read model: statements and row writes on the
/// generation's tables, run in order in the one transaction that also stores the
/// checkpoint, the fence, the lookups and the dead letters.
///
/// Two ways to write:
///
/// - [`SqlBatch::upsert`] and [`SqlBatch::delete_row`]: rows by key. A batch keeps one
///   row per table and key (the effect of all its writes to that key), and writes each
///   table's rows in one statement per set of columns: PostgreSQL one
///   `INSERT … SELECT … FROM unnest(…) ON CONFLICT … DO UPDATE` with one array per column,
///   SQLite multi-row `INSERT … VALUES … ON CONFLICT … DO UPDATE` statements. This is the
///   fast path: a batch of thousands of events costs a few round trips.
/// - [`SqlBatch::execute`]: any statement, one round trip each.
///
/// **Order.** Everything applies as if run one by one in the order added. A run of row
/// writes with no `execute` between them is coalesced (per table: the run's deletes, then
/// its upserts; tables in order of first use); each `execute` runs after the row writes
/// added before it and before those added after it. Where two writes of one key cannot be
/// folded into one exactly (an `add` to a column the earlier write did not name, sums that
/// overflow, different key columns for one table), the run is split there. Row order
/// within a run is not defined otherwise: keep constraints between rows of one run (a
/// unique column other than the key, a foreign key to a row deleted in the same run)
/// `DEFERRABLE INITIALLY DEFERRED`, or put an `execute` between them.
///
/// Statements name tables by placeholder (`{accounts}`) and take values only as bound
/// parameters (`$1`, `$2`, …):
///
/// ```
/// # use annals_projections_sql::{SqlBatch, SqlError, SqlValue};
/// fn deposit(batch: &mut SqlBatch, account: &str, amount: i64) -> Result<(), SqlError> {
///     batch.execute(
///         "INSERT INTO {accounts} (id, balance) VALUES ($1, $2)
///          ON CONFLICT (id) DO UPDATE SET balance = {accounts}.balance + excluded.balance",
///         [SqlValue::from(account), amount.into()],
///     )
/// }
/// ```
pub struct SqlBatch {
    names: Names,
    ops: Vec<Op<Statement>>,
    /// The values of the row writes, in order (each op's from its `start`).
    values: Vec<SqlValue>,
    /// The tables and column lists of the row writes so far.
    shapes: Vec<Shape>,
    letters: Vec<Letter>,
    lookups: Lookups,
}

#[derive(Debug)]
enum Letter {
    Park(DeadLetter),
    Unpark(Uuid),
}

impl fmt::Debug for SqlBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlBatch")
            .field("ops", &self.ops.len())
            .field("letters", &self.letters.len())
            .finish_non_exhaustive()
    }
}

impl SqlBatch {
    #[cfg(test)]
    pub(crate) fn new(names: Names) -> Self {
        Self::reusing(names, Spare::default())
    }

    /// A batch that fills the (empty) lists of an earlier one.
    pub(crate) fn reusing(names: Names, spare: Spare) -> Self {
        let Spare {
            mut ops,
            mut values,
        } = spare;
        ops.clear();
        values.clear();
        Self {
            names,
            ops,
            values,
            shapes: Vec::new(),
            letters: Vec::new(),
            lookups: Lookups::new(),
        }
    }

    /// Adds a statement: `sql` with table placeholders (`{accounts}`), and the values of its
    /// parameters (`$1`, `$2`, … in both PostgreSQL and SQLite), in order. It runs when the
    /// batch is written, after the statements added before it.
    ///
    /// # Errors
    /// [`SqlError::UnknownTable`] for a placeholder the schema does not declare,
    /// [`SqlError::Placeholder`] for a stray brace. Nothing is added then. (The database
    /// checks the SQL itself when the batch is written.)
    pub fn execute(
        &mut self,
        sql: &str,
        values: impl IntoIterator<Item = SqlValue>,
    ) -> Result<(), SqlError> {
        let sql = self.names.expand(sql)?;
        self.ops.push(Op::Statement(Statement {
            sql,
            values: values.into_iter().collect(),
        }));
        Ok(())
    }

    /// Upserts a row of declared table `table`: inserts it, or, when a row with the same
    /// key exists, replaces its [`set`](SqlRow::set) columns and adds to its
    /// [`add`](SqlRow::add) columns. Columns the row does not name keep their value (or get
    /// their default on insert). The key columns must be the table's primary key or a
    /// unique constraint on exactly those columns.
    ///
    /// ```
    /// # use annals_projections_sql::{SqlBatch, SqlError, SqlRow};
    /// fn deposit(batch: &mut SqlBatch, account: &str, amount: i64) -> Result<(), SqlError> {
    ///     batch.upsert(
    ///         "accounts",
    ///         SqlRow::new().key("id", account).add("balance", amount),
    ///     )
    /// }
    /// ```
    ///
    /// Writes of one key coalesce in the batch (see [`SqlBatch`] for the order). Values are
    /// cast to the column's type in PostgreSQL (a text into a `uuid` or `timestamptz`
    /// column, an integer into an `integer` column); give a column values of one type
    /// (NULLs aside) and a key the same types every time.
    ///
    /// # Errors
    /// [`SqlError::UnknownTable`]; [`SqlError::Row`] for a bad or repeated column name, a
    /// row without a key column, a NULL key value, an `add` of something other than an
    /// integer, a float or NULL. Nothing is added then. (A column the table does not have
    /// fails the write of the batch, before anything is sent.)
    pub fn upsert(&mut self, table: &str, row: SqlRow<'_>) -> Result<(), SqlError> {
        let shape = self.shape(table, &row.columns, false)?;
        for (column, kind, value) in &row.columns {
            match (kind, value) {
                (Kind::Key, SqlValue::Null) => {
                    return Err(row_error(table, format!("key column {column:?} is NULL")));
                }
                (Kind::Add, SqlValue::Int(_) | SqlValue::Float(_) | SqlValue::Null)
                | (Kind::Key | Kind::Set, _) => {}
                (Kind::Add, _) => {
                    return Err(row_error(
                        table,
                        format!("column {column:?} adds a value that is not a number: {value:?}"),
                    ));
                }
            }
        }
        let start = self.values.len();
        self.values
            .extend(row.columns.into_iter().map(|(_, _, value)| value));
        self.ops.push(Op::Row(RowOp {
            shape,
            upsert: true,
            start,
        }));
        Ok(())
    }

    /// Deletes the row of declared table `table` whose key columns hold `key` (nothing
    /// when there is none), in order with the batch's other writes (see [`SqlBatch`]).
    ///
    /// ```
    /// # use annals_projections_sql::{SqlBatch, SqlError, SqlValue};
    /// fn close(batch: &mut SqlBatch, account: &str) -> Result<(), SqlError> {
    ///     batch.delete_row("accounts", [("id", SqlValue::from(account))])
    /// }
    /// ```
    ///
    /// # Errors
    /// As [`SqlBatch::upsert`].
    pub fn delete_row<'a>(
        &mut self,
        table: &str,
        key: impl IntoIterator<Item = (&'a str, SqlValue)>,
    ) -> Result<(), SqlError> {
        let columns: Vec<(&str, Kind, SqlValue)> =
            key.into_iter().map(|(c, v)| (c, Kind::Key, v)).collect();
        let shape = self.shape(table, &columns, true)?;
        if let Some((column, _, _)) = columns.iter().find(|(_, _, v)| *v == SqlValue::Null) {
            return Err(row_error(table, format!("key column {column:?} is NULL")));
        }
        let start = self.values.len();
        self.values
            .extend(columns.into_iter().map(|(_, _, value)| value));
        self.ops.push(Op::Row(RowOp {
            shape,
            upsert: false,
            start,
        }));
        Ok(())
    }

    /// The id of the shape of a row write (checked when new).
    fn shape(
        &mut self,
        table: &str,
        columns: &[(&str, Kind, SqlValue)],
        delete: bool,
    ) -> Result<u32, SqlError> {
        let same = |s: &Shape| {
            s.table == table
                && s.columns.len() == columns.len()
                && s.columns
                    .iter()
                    .zip(columns)
                    .all(|((c, k), (name, kind, _))| c == name && k == kind)
        };
        // The latest shape first: a handler usually writes the same one again.
        if let Some(i) = self.shapes.iter().rposition(same) {
            return Ok(i as u32);
        }
        let sql = self.names.get(table)?.to_owned();
        if !columns.iter().any(|(_, k, _)| *k == Kind::Key) {
            return Err(row_error(table, "a row write names no key column".into()));
        }
        for (i, (column, _, _)) in columns.iter().enumerate() {
            row::check_column(table, column)?;
            if columns[..i].iter().any(|(c, _, _)| c == column) {
                return Err(row_error(
                    table,
                    format!("column {column:?} is named twice"),
                ));
            }
        }
        debug_assert!(!delete || columns.iter().all(|(_, k, _)| *k == Kind::Key));
        self.shapes.push(Shape {
            table: table.to_owned(),
            sql,
            columns: columns
                .iter()
                .map(|(c, k, _)| ((*c).to_owned(), *k))
                .collect(),
        });
        Ok((self.shapes.len() - 1) as u32)
    }

    /// The SQL name of a declared table in the generation this batch writes.
    ///
    /// # Errors
    /// [`SqlError::UnknownTable`].
    pub fn table(&self, name: &str) -> Result<&str, SqlError> {
        self.names.get(name)
    }

    /// The number of statements and row writes added.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no statement, no row write and no dead-letter change was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.letters.is_empty()
    }

    /// Takes the batch apart for writing.
    pub(crate) fn into_parts(mut self) -> Parts {
        let mut net: HashMap<Uuid, Option<DeadLetter>> = HashMap::new();
        let mut order = Vec::new();
        for letter in self.letters {
            let (id, value) = match letter {
                Letter::Park(l) => (l.event_id, Some(l)),
                Letter::Unpark(id) => (id, None),
            };
            if net.insert(id, value).is_none() {
                order.push(id);
            }
        }
        let mut parks = Vec::new();
        let mut unparks = Vec::new();
        for id in order {
            match net.remove(&id).flatten() {
                Some(letter) => parks.push(letter),
                None => unparks.push(id),
            }
        }
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        for (key, value) in self.lookups.changes() {
            match value {
                Some(v) => sets.push((key.to_owned(), v.to_owned())),
                None => removes.push(key.to_owned()),
            }
        }
        Parts {
            steps: row::plan(&mut self.ops, &mut self.values, &self.shapes),
            spare: Spare {
                ops: self.ops,
                values: self.values,
            },
            parks,
            unparks,
            sets,
            removes,
        }
    }
}

/// The lists of a written batch, emptied: a writer hands them to its next batch, which
/// then does not grow them again.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    ops: Vec<Op<Statement>>,
    values: Vec<SqlValue>,
}

impl Spare {
    /// Values kept at most (8 MiB), so one huge batch does not pin its memory.
    const MAX_VALUES: usize = 1 << 18;

    /// Whether these lists are worth keeping.
    pub(crate) fn keep(&self) -> bool {
        self.values.capacity() <= Self::MAX_VALUES && self.ops.capacity() <= Self::MAX_VALUES
    }
}

/// A batch taken apart: each key and event id once, with its final state.
pub(crate) struct Parts {
    /// Statements and coalesced row writes, in the order they run.
    pub(crate) steps: Vec<Step<Statement>>,
    /// The batch's emptied lists, for the next batch to fill.
    pub(crate) spare: Spare,
    pub(crate) parks: Vec<DeadLetter>,
    pub(crate) unparks: Vec<Uuid>,
    pub(crate) sets: Vec<(String, String)>,
    pub(crate) removes: Vec<String>,
}

impl Parts {
    /// Each parked letter as JSON.
    pub(crate) fn letters_json(&self) -> SqlResult<Vec<String>> {
        self.parks
            .iter()
            .map(|l| {
                serde_json::to_string(l).map_err(|e| SqlError::Corrupt {
                    what: format!("dead letter of {} does not serialize: {e}", l.event_id),
                })
            })
            .collect()
    }
}

fn row_error(table: &str, reason: String) -> SqlError {
    SqlError::Row {
        table: table.to_owned(),
        reason,
    }
}

impl WriteBatch for SqlBatch {
    fn savepoint(&self) -> usize {
        // Two counters in one mark: operations in the low 48 bits, letters above.
        self.ops.len() | (self.letters.len() << 48)
    }

    fn rollback_to(&mut self, savepoint: usize) {
        let ops = savepoint & ((1 << 48) - 1);
        if ops < self.ops.len() {
            // The values of the first row write undone, and of all after it.
            let first = self.ops[ops..].iter().find_map(|op| match op {
                Op::Row(row) => Some(row.start),
                Op::Statement(_) => None,
            });
            if let Some(start) = first {
                self.values.truncate(start);
            }
            self.ops.truncate(ops);
        }
        self.letters.truncate(savepoint >> 48);
    }

    fn park(&mut self, letter: DeadLetter) {
        self.letters.push(Letter::Park(letter));
    }

    fn unpark(&mut self, event_id: Uuid) {
        self.letters.push(Letter::Unpark(event_id));
    }

    fn is_empty(&self) -> bool {
        SqlBatch::is_empty(self) && self.lookups.is_unchanged()
    }

    fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    fn lookups_mut(&mut self) -> &mut Lookups {
        &mut self.lookups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqlSchema;

    #[test]
    fn statements_roll_back_and_letters_net_out() {
        let names = SqlSchema::new()
            .table("t", "CREATE TABLE {t} (x int)")
            .names(|o| format!("g_{}", o.name));
        let mut b = SqlBatch::new(names);
        b.execute("INSERT INTO {t} VALUES ($1)", [1.into()])
            .unwrap();
        assert!(
            b.execute("INSERT INTO {u} VALUES ($1)", [1.into()])
                .is_err()
        );
        assert_eq!(b.len(), 1);
        let sp = b.savepoint();
        b.execute("DELETE FROM {t}", []).unwrap();
        b.unpark(Uuid::nil());
        b.rollback_to(sp);
        assert_eq!(b.len(), 1);
        assert!(b.letters.is_empty());
        let id = Uuid::new_v4();
        b.unpark(id);
        b.unpark(Uuid::nil());
        let parts = b.into_parts();
        let [Step::Statement(first)] = &parts.steps[..] else {
            panic!("{:?}", parts.steps)
        };
        assert_eq!(first.sql, "INSERT INTO g_t VALUES ($1)");
        assert_eq!(parts.unparks, [id, Uuid::nil()]);
        assert!(parts.parks.is_empty());
    }

    fn batch() -> SqlBatch {
        SqlBatch::new(
            SqlSchema::new()
                .table(
                    "a",
                    "CREATE TABLE {a} (id text PRIMARY KEY, n bigint, s text)",
                )
                .table("b", "CREATE TABLE {b} (k1 text, k2 bigint, v text)")
                .names(|o| format!("g_{}", o.name)),
        )
    }

    /// The row writes of a batch, as `(table, upsert, columns, rows)`.
    fn writes(b: SqlBatch) -> Vec<String> {
        b.into_parts()
            .steps
            .into_iter()
            .map(|step| match step {
                Step::Statement(s) => format!("sql {}", s.sql),
                Step::Rows(w) => format!(
                    "{} {} {:?} {:?}",
                    if w.upsert { "upsert" } else { "delete" },
                    w.sql,
                    w.columns,
                    w.rows
                ),
            })
            .collect()
    }

    fn i(v: i64) -> SqlValue {
        SqlValue::Int(v)
    }

    fn t(v: &str) -> SqlValue {
        SqlValue::from(v)
    }

    #[test]
    fn upserts_of_one_key_coalesce() {
        let mut b = batch();
        b.upsert(
            "a",
            SqlRow::new().key("id", "x").add("n", 1).set("s", "one"),
        )
        .unwrap();
        b.upsert("a", SqlRow::new().key("id", "y").add("n", 10).set("s", "y"))
            .unwrap();
        b.upsert(
            "a",
            SqlRow::new().key("id", "x").add("n", 2).set("s", "two"),
        )
        .unwrap();
        // A Set followed by an Add stays a Set of the sum.
        b.upsert("a", SqlRow::new().key("id", "y").set("n", 5))
            .unwrap();
        b.upsert("a", SqlRow::new().key("id", "y").add("n", 1))
            .unwrap();
        assert_eq!(b.len(), 5);
        let w = writes(b);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert_eq!(
            w[0],
            format!(
                "upsert g_a {:?} {:?}",
                [("id", Kind::Key), ("n", Kind::Add), ("s", Kind::Set)]
                    .map(|(c, k)| (c.to_owned(), k)),
                [vec![t("x"), i(3), t("two")]]
            )
        );
        assert_eq!(
            w[1],
            format!(
                "upsert g_a {:?} {:?}",
                [("id", Kind::Key), ("n", Kind::Set), ("s", Kind::Set)]
                    .map(|(c, k)| (c.to_owned(), k)),
                [vec![t("y"), i(6), t("y")]]
            )
        );
    }

    #[test]
    fn statements_and_inexact_merges_split_runs() {
        let mut b = batch();
        b.upsert("a", SqlRow::new().key("id", "x").set("s", "a"))
            .unwrap();
        // Adding to a column the earlier write did not name: its value is unknown here.
        b.upsert("a", SqlRow::new().key("id", "x").add("n", 1))
            .unwrap();
        b.execute("DELETE FROM {b}", []).unwrap();
        b.upsert("a", SqlRow::new().key("id", "x").add("n", i64::MAX))
            .unwrap();
        b.upsert("a", SqlRow::new().key("id", "x").add("n", 1))
            .unwrap();
        let w = writes(b);
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(w[0].contains("[[Text(\"x\"), Text(\"a\")]]"), "{}", w[0]);
        assert!(w[1].contains("[[Text(\"x\"), Int(1)]]"), "{}", w[1]);
        assert_eq!(w[2], "sql DELETE FROM g_b");
        assert!(w[3].contains(&format!("Int({})", i64::MAX)), "{}", w[3]);
        assert!(w[4].contains("Int(1)"), "{}", w[4]);
    }

    #[test]
    fn deletes_and_upserts_of_one_key() {
        let mut b = batch();
        // Upsert then delete: only the delete.
        b.upsert("a", SqlRow::new().key("id", "x").set("s", "a"))
            .unwrap();
        b.delete_row("a", [("id", t("x"))]).unwrap();
        // Delete then upsert: delete, then insert afresh (an add starts from nothing).
        b.delete_row("a", [("id", t("y"))]).unwrap();
        b.upsert("a", SqlRow::new().key("id", "y").add("n", 4))
            .unwrap();
        // Composite keys, in any order, NULL values.
        b.upsert(
            "b",
            SqlRow::new()
                .key("k1", "p")
                .key("k2", 1)
                .set("v", SqlValue::Null),
        )
        .unwrap();
        b.upsert("b", SqlRow::new().key("k2", 1).key("k1", "p").set("v", "z"))
            .unwrap();
        let w = writes(b);
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].starts_with("delete g_a") && w[0].ends_with("[[Text(\"x\")], [Text(\"y\")]]"),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with("upsert g_a") && w[1].ends_with("[[Text(\"y\"), Int(4)]]"),
            "{}",
            w[1]
        );
        assert!(
            w[2].starts_with("upsert g_b")
                && w[2].ends_with("[[Text(\"p\"), Int(1), Text(\"z\")]]"),
            "{}",
            w[2]
        );
    }

    #[test]
    fn row_writes_are_checked_and_roll_back() {
        let mut b = batch();
        assert!(matches!(
            b.upsert("c", SqlRow::new().key("id", "x")),
            Err(SqlError::UnknownTable { .. })
        ));
        for bad in [
            SqlRow::new().set("s", "x"),
            SqlRow::new().key("id", SqlValue::Null),
            SqlRow::new().key("id", "x").add("n", "text"),
            SqlRow::new().key("id", "x").set("S", 1),
            SqlRow::new().key("id", "x").set("a\"b", 1),
            SqlRow::new().key("id", "x").set("n", 1).add("n", 1),
        ] {
            let err = b.upsert("a", bad.clone()).unwrap_err();
            assert!(matches!(err, SqlError::Row { .. }), "{bad:?}: {err:?}");
        }
        assert!(b.delete_row("a", [("id", SqlValue::Null)]).is_err());
        assert!(b.is_empty());
        b.upsert("a", SqlRow::new().key("id", "x").add("n", 1))
            .unwrap();
        let sp = b.savepoint();
        b.upsert("a", SqlRow::new().key("id", "x").add("n", 100))
            .unwrap();
        b.delete_row("a", [("id", t("z"))]).unwrap();
        b.rollback_to(sp);
        let w = writes(b);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].ends_with("[[Text(\"x\"), Int(1)]]"), "{}", w[0]);
    }

    #[test]
    fn rollbacks_drop_the_values_of_undone_row_writes() {
        let mut b = batch();
        b.upsert("a", SqlRow::new().key("id", "x").add("n", 1))
            .unwrap();
        let sp = b.savepoint();
        b.execute("DELETE FROM {b}", []).unwrap();
        b.upsert("a", SqlRow::new().key("id", "y").set("s", "gone"))
            .unwrap();
        b.delete_row("a", [("id", t("x"))]).unwrap();
        b.rollback_to(sp);
        // Rolling back past statements alone keeps every row write's values.
        let sp = b.savepoint();
        b.execute("DELETE FROM {b}", []).unwrap();
        b.rollback_to(sp);
        b.upsert(
            "a",
            SqlRow::new().key("id", "x").add("n", 2).set("s", "kept"),
        )
        .unwrap();
        b.upsert("a", SqlRow::new().key("id", "z").add("n", 5))
            .unwrap();
        let w = writes(b);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].ends_with("[[Text(\"x\"), Int(3), Text(\"kept\")]]"),
            "{}",
            w[0]
        );
        assert!(w[1].ends_with("[[Text(\"z\"), Int(5)]]"), "{}", w[1]);
    }

    #[test]
    fn runs_of_one_key_and_keys_that_return() {
        let mut b = batch();
        for (key, n) in [
            ("x", 1),
            ("x", 2),
            ("y", 10),
            ("x", 4),
            ("y", 20),
            ("y", 40),
        ] {
            b.upsert("a", SqlRow::new().key("id", key).add("n", n))
                .unwrap();
        }
        // Float and JSON keys go through the encoded key: -0.0 and 0.0 are one key.
        for k in [0.0, -0.0, 0.0] {
            b.upsert("b", SqlRow::new().key("k1", k).key("k2", 1).set("v", "f"))
                .unwrap();
        }
        let w = writes(b);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].ends_with("[[Text(\"x\"), Int(7)], [Text(\"y\"), Int(70)]]"),
            "{}",
            w[0]
        );
        assert!(
            w[1].ends_with("[[Float(0.0), Int(1), Text(\"f\")]]"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn columns_split_by_type() {
        let rows = vec![
            vec![t("a"), i(1)],
            vec![t("b"), SqlValue::Null],
            vec![t("c"), t("one")],
            vec![t("d"), SqlValue::Null],
        ];
        let runs = row::split_by_type(rows);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].len(), 3);
        assert_eq!(runs[1], [vec![t("c"), t("one")]]);
    }
}
