//! The batch a handler fills: statements with placeholders expanded, dead letters, lookups.

use std::{collections::HashMap, fmt};

use annals_projections::{DeadLetter, Lookups, WriteBatch};
use uuid::Uuid;

use crate::{
    SqlValue,
    error::{SqlError, SqlResult},
    schema::Names,
};

/// One statement of a batch, its placeholders expanded for the generation written.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) values: Vec<SqlValue>,
}

/// The writes a handler adds to a SQL read model: statements on the generation's tables,
/// run in order in the one transaction that also stores the checkpoint, the fence, the
/// lookups and the dead letters.
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
    statements: Vec<Statement>,
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
            .field("statements", &self.statements.len())
            .field("letters", &self.letters.len())
            .finish_non_exhaustive()
    }
}

impl SqlBatch {
    pub(crate) fn new(names: Names) -> Self {
        Self {
            names,
            statements: Vec::new(),
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
        self.statements.push(Statement {
            sql,
            values: values.into_iter().collect(),
        });
        Ok(())
    }

    /// The SQL name of a declared table in the generation this batch writes.
    ///
    /// # Errors
    /// [`SqlError::UnknownTable`].
    pub fn table(&self, name: &str) -> Result<&str, SqlError> {
        self.names.get(name)
    }

    /// The number of statements added.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// True when no statement and no dead-letter change was added.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.letters.is_empty()
    }

    /// Takes the batch apart for writing.
    pub(crate) fn into_parts(self) -> Parts {
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
            statements: self.statements,
            parks,
            unparks,
            sets,
            removes,
        }
    }
}

/// A batch taken apart: each key and event id once, with its final state.
pub(crate) struct Parts {
    pub(crate) statements: Vec<Statement>,
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

impl WriteBatch for SqlBatch {
    fn savepoint(&self) -> usize {
        // Two counters in one mark: statements in the low 48 bits, letters above.
        self.statements.len() | (self.letters.len() << 48)
    }

    fn rollback_to(&mut self, savepoint: usize) {
        self.statements.truncate(savepoint & ((1 << 48) - 1));
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
        assert_eq!(parts.statements[0].sql, "INSERT INTO g_t VALUES ($1)");
        assert_eq!(parts.unparks, [id, Uuid::nil()]);
        assert!(parts.parks.is_empty());
    }
}
