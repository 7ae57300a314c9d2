//! Row writes: the rows a handler upserts or deletes by key, and how a batch's row writes
//! are coalesced into one statement per table and column set.

use std::collections::HashMap;

use crate::{SqlValue, error::SqlError};

/// How a column of an upserted row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A column of the key (the table's primary key or a unique constraint).
    Key,
    /// Inserted, or replaced when the row exists.
    Set,
    /// Inserted, or added to the stored value when the row exists.
    Add,
}

/// A row to upsert with [`SqlBatch::upsert`](crate::SqlBatch::upsert): its key columns, the
/// columns it sets and the columns it adds to.
///
/// ```
/// # use annals_projections_sql::SqlRow;
/// let row = SqlRow::new()
///     .key("id", "alice")
///     .add("balance", 5)
///     .add("deposits", 1)
///     .set("last_counterparty", "bob");
/// # let _ = row;
/// ```
///
/// - [`SqlRow::key`]: a column of the conflict target (the table's primary key or a unique
///   constraint on exactly these columns); never NULL.
/// - [`SqlRow::set`]: written on insert, replaced on conflict (`c = excluded.c`).
/// - [`SqlRow::add`]: written on insert, added on conflict (`c = t.c + excluded.c`); an
///   integer, a float or NULL.
///
/// Columns the row does not name keep their stored value, or get their default when the
/// row is inserted. Column names are lower-case ASCII letters, digits and `_`, starting
/// with a letter or `_` (they are quoted in the SQL, so reserved words are fine).
#[derive(Debug, Clone, Default)]
pub struct SqlRow<'a> {
    pub(crate) columns: Vec<(&'a str, Kind, SqlValue)>,
}

impl<'a> SqlRow<'a> {
    /// A row with no column yet.
    pub fn new() -> Self {
        Self {
            columns: Vec::with_capacity(6),
        }
    }

    /// Adds a key column.
    #[must_use]
    pub fn key(mut self, column: &'a str, value: impl Into<SqlValue>) -> Self {
        self.columns.push((column, Kind::Key, value.into()));
        self
    }

    /// Adds a column written on insert and replaced on conflict.
    #[must_use]
    pub fn set(mut self, column: &'a str, value: impl Into<SqlValue>) -> Self {
        self.columns.push((column, Kind::Set, value.into()));
        self
    }

    /// Adds a column written on insert and added to the stored value on conflict (a counter,
    /// a balance). The value is an integer, a float or NULL.
    #[must_use]
    pub fn add(mut self, column: &'a str, value: impl Into<SqlValue>) -> Self {
        self.columns.push((column, Kind::Add, value.into()));
        self
    }
}

/// A column name as a row write accepts it.
pub(crate) fn check_column(table: &str, column: &str) -> Result<(), SqlError> {
    let ok = !column.is_empty()
        && column.len() <= 63
        && column
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !column.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(SqlError::Row {
            table: table.to_owned(),
            reason: format!(
                "column name {column:?}: use lower-case ASCII letters, digits and '_', \
                 not starting with a digit, at most 63 bytes"
            ),
        })
    }
}

/// The columns of one kind of row write: a table and its named columns, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shape {
    /// The declared table name.
    pub(crate) table: String,
    /// Its SQL name in the generation written.
    pub(crate) sql: String,
    /// Columns and how each is written (a delete has key columns only).
    pub(crate) columns: Vec<(String, Kind)>,
}

/// One row write of a batch, as the handler added it. Its values, one per column of its
/// shape, are the batch's value list from `start` on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowOp {
    pub(crate) shape: u32,
    /// An upsert, or a delete (of a key-only shape).
    pub(crate) upsert: bool,
    pub(crate) start: usize,
}

/// One statement's worth of row writes: rows of one table with the same columns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowWrite {
    /// The declared table name (to find its column types).
    pub(crate) table: String,
    /// Its SQL name.
    pub(crate) sql: String,
    /// Key columns first, then the other columns with their kinds; a delete has key
    /// columns only.
    pub(crate) columns: Vec<(String, Kind)>,
    /// Upsert (`true`) or delete.
    pub(crate) upsert: bool,
    /// The rows, each with a value per column.
    pub(crate) rows: Vec<Vec<SqlValue>>,
}

/// A key's bytes, for the per-key map of a group.
fn encode_key<'v>(out: &mut Vec<u8>, values: impl Iterator<Item = &'v SqlValue>) {
    out.clear();
    for value in values {
        match value {
            SqlValue::Null => out.push(0),
            SqlValue::Bool(b) => out.extend([1, u8::from(*b)]),
            SqlValue::Int(i) => {
                out.push(2);
                out.extend(i.to_le_bytes());
            }
            SqlValue::Float(f) => {
                out.push(3);
                let f = if *f == 0.0 { 0.0 } else { *f };
                out.extend(f.to_bits().to_le_bytes());
            }
            SqlValue::Text(t) => {
                out.push(4);
                out.extend((t.len() as u64).to_le_bytes());
                out.extend(t.as_bytes());
            }
            SqlValue::Json(j) => {
                let t = j.to_string();
                out.push(5);
                out.extend((t.len() as u64).to_le_bytes());
                out.extend(t.as_bytes());
            }
            SqlValue::Bytes(b) => {
                out.push(6);
                out.extend((b.len() as u64).to_le_bytes());
                out.extend(b);
            }
        }
    }
}

/// `a + b` as SQL computes it, when exactly representable here.
fn sum(a: &SqlValue, b: &SqlValue) -> Option<SqlValue> {
    match (a, b) {
        (SqlValue::Null, _) | (_, SqlValue::Null) => Some(SqlValue::Null),
        (SqlValue::Int(x), SqlValue::Int(y)) => x.checked_add(*y).map(SqlValue::Int),
        (SqlValue::Float(x), SqlValue::Float(y)) => Some(SqlValue::Float(x + y)),
        _ => None,
    }
}

/// The coalesced state of one key in a group.
struct Entry {
    key: Vec<SqlValue>,
    /// The row is deleted before anything else of the group is written to it.
    delete_first: bool,
    /// The cells to upsert, by table column (`None`: not named); `None` when the row ends
    /// deleted.
    cells: Option<Vec<Option<(Kind, SqlValue)>>>,
}

/// The rows of one table in a group.
struct TableRows {
    table: String,
    sql: String,
    keys: Vec<String>,
    /// Non-key columns seen so far, in order of first use.
    columns: Vec<String>,
    entries: Vec<Entry>,
    by_key: HashMap<Vec<u8>, usize>,
}

/// A run of row writes with no `execute` between them, coalesced per table and key.
#[derive(Default)]
struct Group {
    tables: Vec<TableRows>,
    /// Per shape id: where its columns go, once known.
    layouts: Vec<Option<Layout>>,
    /// The entry the last row write went to (table, entry): the writes of one key usually
    /// come in runs.
    last: Option<(usize, usize)>,
}

/// Where a shape's columns go in its table's rows of a group.
struct Layout {
    /// The table's index in the group.
    table: usize,
    /// Per column of the shape: its key position, or `keys.len() + column index`.
    map: Vec<usize>,
    /// Per key column of the table, in the table's key order: the shape's column.
    key_at: Vec<usize>,
}

/// What an op does to an entry, decided before anything is changed.
enum Merge {
    New,
    Into(usize),
}

impl Group {
    fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Computes where shape `id`'s columns go in its table; false when its key columns
    /// differ from the ones the table already has in this group.
    fn layout(&mut self, id: usize, shape: &Shape) -> bool {
        if self.layouts.get(id).is_some_and(Option::is_some) {
            return true;
        }
        let keys: Vec<&str> = shape
            .columns
            .iter()
            .filter(|(_, k)| *k == Kind::Key)
            .map(|(c, _)| c.as_str())
            .collect();
        let t = match self.tables.iter().position(|t| t.table == shape.table) {
            Some(t) => {
                let have = &self.tables[t].keys;
                if have.len() != keys.len() || !keys.iter().all(|k| have.iter().any(|h| h == k)) {
                    return false;
                }
                t
            }
            None => {
                self.tables.push(TableRows {
                    table: shape.table.clone(),
                    sql: shape.sql.clone(),
                    keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                    columns: Vec::new(),
                    entries: Vec::new(),
                    by_key: HashMap::new(),
                });
                self.tables.len() - 1
            }
        };
        let rows = &mut self.tables[t];
        let mut map = Vec::with_capacity(shape.columns.len());
        for (column, kind) in &shape.columns {
            if *kind == Kind::Key {
                map.push(rows.keys.iter().position(|k| k == column).unwrap_or(0));
            } else {
                let i = match rows.columns.iter().position(|c| c == column) {
                    Some(i) => i,
                    None => {
                        rows.columns.push(column.clone());
                        rows.columns.len() - 1
                    }
                };
                map.push(rows.keys.len() + i);
            }
        }
        let mut key_at = vec![0usize; rows.keys.len()];
        for (i, (_, kind)) in shape.columns.iter().enumerate() {
            if *kind == Kind::Key {
                key_at[map[i]] = i;
            }
        }
        if self.layouts.len() <= id {
            self.layouts.resize_with(id + 1, || None);
        }
        self.layouts[id] = Some(Layout {
            table: t,
            map,
            key_at,
        });
        true
    }

    /// Adds `op` (its values `values`) to the group, or returns `false`, taking nothing,
    /// when it cannot be coalesced exactly with what the group holds (the group is then
    /// written first, and the op starts the next one).
    fn add(
        &mut self,
        op: RowOp,
        values: &mut [SqlValue],
        shapes: &[Shape],
        scratch: &mut Vec<u8>,
    ) -> bool {
        let id = op.shape as usize;
        let upsert = op.upsert;
        let shape = &shapes[id];
        if !self.layout(id, shape) {
            return false;
        }
        let Some(layout) = self.layouts[id].as_ref() else {
            return false;
        };
        let (t, map) = (layout.table, &layout.map);
        let rows = &mut self.tables[t];
        let nkeys = rows.keys.len();
        let last = self
            .last
            .filter(|&(lt, e)| lt == t && same_key(&rows.entries[e].key, &layout.key_at, values));
        let found = match last {
            Some((_, e)) => Some(e),
            None => {
                // The key, in the table's key order.
                encode_key(scratch, layout.key_at.iter().map(|&i| &values[i]));
                rows.by_key.get(scratch.as_slice()).copied()
            }
        };
        let merge = match found {
            None => Merge::New,
            Some(e) => {
                if upsert && let Some(cells) = &rows.entries[e].cells {
                    // Every cell must merge exactly, or nothing changes.
                    for (i, (_, kind)) in shape.columns.iter().enumerate() {
                        if *kind != Kind::Add {
                            continue;
                        }
                        let fits = match cells.get(map[i] - nkeys).and_then(Option::as_ref) {
                            None => false,
                            Some((_, old)) => sum(old, &values[i]).is_some(),
                        };
                        if !fits {
                            return false;
                        }
                    }
                }
                Merge::Into(e)
            }
        };
        let ncols = rows.columns.len();
        let fresh_cells = |values: &mut [SqlValue]| {
            let mut cells: Vec<Option<(Kind, SqlValue)>> = vec![None; ncols];
            for (i, (_, kind)) in shape.columns.iter().enumerate() {
                if *kind != Kind::Key {
                    cells[map[i] - nkeys] = Some((*kind, take(&mut values[i])));
                }
            }
            cells
        };
        let e = match merge {
            Merge::New => {
                let key: Vec<SqlValue> = layout
                    .key_at
                    .iter()
                    .map(|&i| take(&mut values[i]))
                    .collect();
                let entry = if upsert {
                    Entry {
                        key,
                        delete_first: false,
                        cells: Some(fresh_cells(values)),
                    }
                } else {
                    Entry {
                        key,
                        delete_first: true,
                        cells: None,
                    }
                };
                let e = rows.entries.len();
                rows.by_key.insert(scratch.clone(), e);
                rows.entries.push(entry);
                e
            }
            Merge::Into(e) => {
                let entry = &mut rows.entries[e];
                if !upsert {
                    entry.delete_first = true;
                    entry.cells = None;
                } else if let Some(cells) = &mut entry.cells {
                    cells.resize(ncols, None);
                    for (i, (_, kind)) in shape.columns.iter().enumerate() {
                        if *kind == Kind::Key {
                            continue;
                        }
                        let value = take(&mut values[i]);
                        let cell = &mut cells[map[i] - nkeys];
                        match (cell, kind) {
                            (Some((_, old)), Kind::Add) => {
                                *old = sum(old, &value).unwrap_or(SqlValue::Null);
                            }
                            (cell, kind) => *cell = Some((*kind, value)),
                        }
                    }
                } else {
                    // Deleted earlier in the group: deleted, then inserted afresh.
                    entry.cells = Some(fresh_cells(values));
                }
                e
            }
        };
        self.last = Some((t, e));
        true
    }

    /// The group's statements: per table (in order of first use), the deletes, then the
    /// upserts, one statement per set of columns.
    fn finish(self, out: &mut Vec<RowWrite>) {
        for rows in self.tables {
            let deleted: Vec<Vec<SqlValue>> = rows
                .entries
                .iter()
                .filter(|e| e.delete_first)
                .map(|e| e.key.clone())
                .collect();
            if !deleted.is_empty() {
                out.push(RowWrite {
                    table: rows.table.clone(),
                    sql: rows.sql.clone(),
                    columns: rows.keys.iter().map(|k| (k.clone(), Kind::Key)).collect(),
                    upsert: false,
                    rows: deleted,
                });
            }
            // Upserts, by the columns they name and how.
            let mut by_shape: Vec<(Vec<Option<Kind>>, RowWrite)> = Vec::new();
            for entry in rows.entries {
                let Some(cells) = entry.cells else { continue };
                let signature: Vec<Option<Kind>> = (0..rows.columns.len())
                    .map(|i| cells.get(i).and_then(|c| c.as_ref().map(|(k, _)| *k)))
                    .collect();
                let mut row = entry.key;
                row.extend(cells.into_iter().flatten().map(|(_, v)| v));
                match by_shape.iter_mut().find(|(s, _)| *s == signature) {
                    Some((_, write)) => write.rows.push(row),
                    None => {
                        let mut columns: Vec<(String, Kind)> =
                            rows.keys.iter().map(|k| (k.clone(), Kind::Key)).collect();
                        for (i, kind) in signature.iter().enumerate() {
                            if let Some(kind) = kind {
                                columns.push((rows.columns[i].clone(), *kind));
                            }
                        }
                        by_shape.push((
                            signature,
                            RowWrite {
                                table: rows.table.clone(),
                                sql: rows.sql.clone(),
                                columns,
                                upsert: true,
                                rows: vec![row],
                            },
                        ));
                    }
                }
            }
            out.extend(by_shape.into_iter().map(|(_, w)| w));
        }
    }
}

/// What a batch runs, in order.
#[derive(Debug)]
pub(crate) enum Step<S> {
    /// A handler's statement.
    Statement(S),
    /// Coalesced row writes.
    Rows(RowWrite),
}

/// Turns a batch's operations into steps: statements stay in place, each run of row
/// writes between them is coalesced per table and key (and split where coalescing would
/// not be exact). `values` holds the row writes' values, in order. Leaves both empty
/// (their capacity kept, for the next batch).
pub(crate) fn plan<S>(
    ops: &mut Vec<Op<S>>,
    values: &mut Vec<SqlValue>,
    shapes: &[Shape],
) -> Vec<Step<S>> {
    let mut steps = Vec::new();
    let mut group = Group::default();
    let mut scratch = Vec::new();
    let mut writes = Vec::new();
    let flush = |group: &mut Group, steps: &mut Vec<Step<S>>, writes: &mut Vec<RowWrite>| {
        if !group.is_empty() {
            std::mem::take(group).finish(writes);
            steps.extend(writes.drain(..).map(Step::Rows));
        }
    };
    for op in ops.drain(..) {
        match op {
            Op::Statement(s) => {
                flush(&mut group, &mut steps, &mut writes);
                steps.push(Step::Statement(s));
            }
            Op::Row(row) => {
                let n = shapes[row.shape as usize].columns.len();
                let values = &mut values[row.start..row.start + n];
                if !group.add(row, values, shapes, &mut scratch) {
                    flush(&mut group, &mut steps, &mut writes);
                    let added = group.add(row, values, shapes, &mut scratch);
                    debug_assert!(added, "an empty group takes any row write");
                }
            }
        }
    }
    flush(&mut group, &mut steps, &mut writes);
    values.clear();
    steps
}

/// Whether `values` (at `key_at`) are the key `key`, for values whose equality is their
/// encoding's (no float, no JSON: those always go through the encoded key).
fn same_key(key: &[SqlValue], key_at: &[usize], values: &[SqlValue]) -> bool {
    key.iter().zip(key_at).all(|(k, &i)| match (k, &values[i]) {
        (SqlValue::Text(a), SqlValue::Text(b)) => a == b,
        (SqlValue::Int(a), SqlValue::Int(b)) => a == b,
        (SqlValue::Bool(a), SqlValue::Bool(b)) => a == b,
        (SqlValue::Bytes(a), SqlValue::Bytes(b)) => a == b,
        _ => false,
    })
}

/// Takes a value out of the batch's list.
fn take(value: &mut SqlValue) -> SqlValue {
    std::mem::replace(value, SqlValue::Null)
}

/// One operation of a batch, in the order the handler added them.
#[derive(Debug, Clone)]
pub(crate) enum Op<S> {
    Statement(S),
    Row(RowOp),
}

/// Splits `write`'s rows into runs whose values have one type per column (NULL fits any):
/// PostgreSQL binds each column as one typed array.
pub(crate) fn split_by_type(rows: Vec<Vec<SqlValue>>) -> Vec<Vec<Vec<SqlValue>>> {
    let mut groups: Vec<(Vec<u8>, Vec<Vec<SqlValue>>)> = Vec::new();
    'rows: for row in rows {
        let tags: Vec<u8> = row.iter().map(tag).collect();
        for (signature, members) in &mut groups {
            if signature
                .iter()
                .zip(&tags)
                .all(|(a, b)| *a == 0 || *b == 0 || a == b)
            {
                for (s, t) in signature.iter_mut().zip(&tags) {
                    if *s == 0 {
                        *s = *t;
                    }
                }
                members.push(row);
                continue 'rows;
            }
        }
        groups.push((tags, vec![row]));
    }
    groups.into_iter().map(|(_, rows)| rows).collect()
}

/// The type of a value, 0 for NULL.
pub(crate) fn tag(value: &SqlValue) -> u8 {
    match value {
        SqlValue::Null => 0,
        SqlValue::Bool(_) => 1,
        SqlValue::Int(_) => 2,
        SqlValue::Float(_) => 3,
        SqlValue::Text(_) => 4,
        SqlValue::Json(_) => 5,
        SqlValue::Bytes(_) => 6,
    }
}
