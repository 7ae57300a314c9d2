//! [`SqliteWriter`]: writes batches into one generation, one transaction each.

use std::{collections::HashMap, fmt, sync::Arc};

use annals::LogPosition;
use annals_projections::{Durability, Error, Fence, Generation, GenerationWriter, Result};
use sqlx::{AssertSqlSafe, SqlitePool};

use super::{bind, immediate, rows::queries};
use crate::{
    SqlBatch, SqlError,
    batch::Spare,
    common::{from_i64, position, split, to_i64},
    error::db,
    row::Step,
    schema::Names,
};

/// The writer of one generation of a [`SqliteTables`](crate::SqliteTables).
///
/// A write is one `BEGIN IMMEDIATE` transaction: a statement that checks the fence and the
/// expected checkpoint and stores the new ones; at most four statements for the batch's
/// lookups and dead letters (each taking its rows as one JSON array); the batch's
/// statements and row writes in order (a run of row writes is one multi-row statement per
/// table and column set, split where SQLite's parameter limit requires); `COMMIT`. A refused fence or checkpoint rolls back before any of the
/// batch's statements run. Every write commits at once, whatever its [`Durability`].
pub struct SqliteWriter {
    pool: SqlitePool,
    projection: String,
    generation: Generation,
    names: Names,
    fence: Fence,
    checkpoint: Option<LogPosition>,
    sql: Arc<Sql>,
    /// The lists of the last batch written, emptied, for the next batch.
    spare: std::sync::Mutex<Spare>,
}

struct Sql {
    check: Arc<str>,
    state: Arc<str>,
    set: Arc<str>,
    remove: Arc<str>,
    park: Arc<str>,
    unpark: Arc<str>,
    lookups: Arc<str>,
    count: Arc<str>,
}

impl fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("projection", &self.projection)
            .field("generation", &self.generation)
            .field("fence", &self.fence)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

fn json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| {
        SqlError::Corrupt {
            what: format!("batch does not serialize: {e}"),
        }
        .into()
    })
}

impl SqliteWriter {
    pub(crate) async fn open(
        pool: SqlitePool,
        projection: String,
        generation: Generation,
        names: Names,
        prefix: &str,
        fence: Fence,
    ) -> Result<Self> {
        let meta = format!("\"{prefix}_meta\"");
        let lookups = format!("\"{prefix}_lookups\"");
        let letters = format!("\"{prefix}_dead_letters\"");
        let sql = Sql {
            check: format!(
                "UPDATE {meta} SET commit_pos = ?1, seq_pos = ?2, fence = ?3
                 WHERE fence <= ?3 AND commit_pos IS ?4 AND seq_pos IS ?5"
            )
            .into(),
            state: format!("SELECT fence, commit_pos, seq_pos FROM {meta}").into(),
            set: format!(
                "INSERT INTO {lookups} (key, value)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )
            .into(),
            remove: format!("DELETE FROM {lookups} WHERE key IN (SELECT value FROM json_each(?1))")
                .into(),
            park: format!(
                "INSERT INTO {letters} (event_id, commit_pos, seq_pos, letter)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                        json_extract(value, '$[2]'), json_extract(value, '$[3]')
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (event_id) DO UPDATE SET commit_pos = excluded.commit_pos,
                     seq_pos = excluded.seq_pos, letter = excluded.letter"
            )
            .into(),
            unpark: format!(
                "DELETE FROM {letters} WHERE event_id IN (SELECT value FROM json_each(?1))"
            )
            .into(),
            lookups: format!(
                "SELECT key, value FROM {lookups} WHERE key IN (SELECT value FROM json_each(?1))"
            )
            .into(),
            count: format!("SELECT count(*) FROM {letters}").into(),
        };
        let mut tx = immediate(&pool).await.map_err(db)?;
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {meta} SET fence = ?1 WHERE fence <= ?1 RETURNING commit_pos, seq_pos"
        )))
        .bind(to_i64(fence, "fence")?)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut writer = Self {
            pool,
            projection,
            generation,
            names,
            fence,
            checkpoint: None,
            sql: Arc::new(sql),
            spare: std::sync::Mutex::default(),
        };
        match row {
            Some((commit, sequence)) => {
                writer.checkpoint = position(commit, sequence)?;
                Ok(writer)
            }
            None => Err(writer.refused().await),
        }
    }

    /// Why the stored state refused this writer: a newer fence, or a moved checkpoint.
    async fn refused(&self) -> Error {
        let row: Result<(i64, Option<i64>, Option<i64>)> =
            sqlx::query_as(AssertSqlSafe(self.sql.state.clone()))
                .fetch_one(&self.pool)
                .await
                .map_err(db);
        let (fence, commit, sequence) = match row {
            Ok(row) => row,
            Err(e) => return e,
        };
        let stored = match from_i64(fence, "fence") {
            Ok(f) => f,
            Err(e) => return e,
        };
        if stored > self.fence {
            return Error::Fenced {
                projection: self.projection.clone(),
                fence: self.fence,
                stored,
            };
        }
        match position(commit, sequence) {
            Ok(stored) => Error::CheckpointMoved {
                projection: self.projection.clone(),
                expected: self.checkpoint,
                stored,
            },
            Err(e) => e,
        }
    }

    /// The generation this writer writes.
    pub fn generation(&self) -> Generation {
        self.generation
    }
}

impl GenerationWriter for SqliteWriter {
    type Batch = SqlBatch;

    fn checkpoint(&self) -> Option<LogPosition> {
        self.checkpoint
    }

    fn batch(&self) -> SqlBatch {
        let spare = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        SqlBatch::reusing(self.names.clone(), spare)
    }

    async fn load_lookups(&mut self, keys: &[String]) -> Result<Vec<Option<String>>> {
        let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(self.sql.lookups.clone()))
            .bind(json(&keys)?)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let found: HashMap<String, String> = rows.into_iter().collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn dead_letter_count(&mut self) -> Result<u64> {
        let (count,): (i64,) = sqlx::query_as(AssertSqlSafe(self.sql.count.clone()))
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        from_i64(count, "dead letter count")
    }

    async fn write(
        &mut self,
        batch: SqlBatch,
        through: LogPosition,
        _durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let mut parts = batch.into_parts();
        let spare = std::mem::take(&mut parts.spare);
        if spare.keep() {
            *self.spare.get_mut().unwrap_or_else(|e| e.into_inner()) = spare;
        }
        let (commit, sequence) = split(Some(through))?;
        let (expected_commit, expected_sequence) = split(self.checkpoint)?;
        let letters = parts.letters_json()?;
        let parks: Vec<(String, u64, u64, &str)> = parts
            .parks
            .iter()
            .zip(&letters)
            .map(|(l, text)| {
                (
                    l.event_id.to_string(),
                    l.position.commit,
                    l.position.sequence,
                    text.as_str(),
                )
            })
            .collect();
        let unparks: Vec<String> = parts.unparks.iter().map(|id| id.to_string()).collect();

        let mut tx = immediate(&self.pool).await.map_err(db)?;
        let done = sqlx::query(AssertSqlSafe(self.sql.check.clone()))
            .bind(commit)
            .bind(sequence)
            .bind(to_i64(self.fence, "fence")?)
            .bind(expected_commit)
            .bind(expected_sequence)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() != 1 {
            tx.rollback().await.map_err(db)?;
            return Err(self.refused().await);
        }
        let side = [
            (
                &self.sql.set,
                (!parts.sets.is_empty()).then(|| json(&parts.sets)),
            ),
            (
                &self.sql.remove,
                (!parts.removes.is_empty()).then(|| json(&parts.removes)),
            ),
            (&self.sql.park, (!parks.is_empty()).then(|| json(&parks))),
            (
                &self.sql.unpark,
                (!unparks.is_empty()).then(|| json(&unparks)),
            ),
        ];
        for (sql, rows) in side {
            if let Some(rows) = rows {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(rows?)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
        }
        for step in parts.steps {
            match step {
                Step::Statement(statement) => {
                    let mut query = sqlx::query(AssertSqlSafe(statement.sql));
                    for value in statement.values {
                        query = bind(query, value);
                    }
                    query.execute(&mut *tx).await.map_err(db)?;
                }
                Step::Rows(write) => {
                    for query in queries(write) {
                        query.execute(&mut *tx).await.map_err(db)?;
                    }
                }
            }
        }
        tx.commit().await.map_err(db)?;
        self.checkpoint = Some(through);
        Ok(self.checkpoint)
    }

    async fn flush(&mut self) -> Result<Option<LogPosition>> {
        Ok(self.checkpoint)
    }
}
