//! [`PgWriter`]: writes batches into one generation, one transaction each.

use std::{collections::HashMap, fmt, sync::Arc};

use annals::LogPosition;
use annals_projections::{Durability, Error, Fence, Generation, GenerationWriter, Result};
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use super::{
    bind::{bind, check_text},
    rows::{ColumnTypes, RowQuery, queries},
};
use crate::{
    SqlBatch,
    batch::Spare,
    common::{from_i64, position, split, to_i64},
    error::db,
    row::Step,
    schema::Names,
};

/// The parameters of the checkpoint statement (`$1` to `$14`).
const COMMIT_PARAMS: usize = 14;

/// A batch's statement, ready to run.
enum Prepared {
    Statement(sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>),
    Rows(RowQuery),
}

/// The writer of one generation of a [`PgTables`](crate::PgTables).
///
/// A write is one transaction: `BEGIN`; one statement that checks the fence and the
/// expected checkpoint, stores the new ones and applies the batch's lookups and dead
/// letters (a data-modifying `WITH`, arrays bound as parameters); the batch's statements
/// and row writes in order, one round trip each (a run of row writes is one statement per
/// table and column set); `COMMIT`. A batch with nothing but one such row-write
/// statement on a plain table (no rules, not a view; the common case of upserts into one
/// table) is one statement in all: the row write joins the checkpoint statement as one
/// more `WITH` query, its rows gated on the checkpoint's update, and commits on its own
/// (one round trip instead of four). The column types of the generation's tables are read
/// once, when the writer opens, to cast row values to them.
///
/// Every write is visible when it returns. A [`Durability::Deferred`] write (catch-up,
/// rebuild) commits with `synchronous_commit` off: it does not wait for its WAL to reach
/// the disk, and a crash may lose it, its checkpoint with it (never one without the
/// other). [`GenerationWriter::flush`] waits for the WAL of every write before it. A
/// refused fence or checkpoint rolls back before any of the batch's statements run (the
/// row write of a single statement writes no row then).
pub struct PgWriter {
    pool: PgPool,
    projection: String,
    generation: Generation,
    names: Names,
    fence: Fence,
    checkpoint: Option<LogPosition>,
    sql: Arc<Sql>,
    types: Arc<ColumnTypes>,
    /// The lists of the last batch written, emptied, for the next batch.
    spare: std::sync::Mutex<Spare>,
    /// A deferred write committed without waiting for its WAL flush.
    unflushed: bool,
    /// The checkpoint of the last write known durable (a synchronous commit or a flush):
    /// what a deferred write reports as committed, so no status claims a write a server
    /// crash could still take back.
    durable: Option<LogPosition>,
}

/// The writer's fixed statements.
struct Sql {
    commit: Arc<str>,
    /// `commit` in two parts: its `WITH` queries (`m` the checkpoint's update) and its
    /// final `SELECT`, for a row write to join as one more `WITH` query.
    commit_with: String,
    commit_select: &'static str,
    state: Arc<str>,
    lookups: Arc<str>,
    count: Arc<str>,
}

impl fmt::Debug for PgWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgWriter")
            .field("projection", &self.projection)
            .field("generation", &self.generation)
            .field("fence", &self.fence)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl PgWriter {
    pub(crate) async fn open(
        pool: PgPool,
        projection: String,
        generation: Generation,
        names: Names,
        schema: String,
        fence: Fence,
    ) -> Result<Self> {
        let types = ColumnTypes::load(&pool, &schema).await.map_err(db)?;
        let schema = crate::schema::quote(&schema);
        let meta = format!("{schema}.\"__annals_meta\"");
        let lookups = format!("{schema}.\"__annals_lookups\"");
        let letters = format!("{schema}.\"__annals_dead_letters\"");
        let commit_with = format!(
            "WITH m AS (
                 UPDATE {meta} SET commit_pos = $1, seq_pos = $2, fence = $3
                 WHERE fence <= $3
                   AND commit_pos IS NOT DISTINCT FROM $4
                   AND seq_pos IS NOT DISTINCT FROM $5
                 RETURNING 1
             ),
             s AS (
                 INSERT INTO {lookups} (key, value)
                 SELECT k, v FROM unnest($6::text[], $7::text[]) AS u(k, v)
                 WHERE EXISTS (SELECT FROM m)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value
             ),
             r AS (
                 DELETE FROM {lookups} WHERE key = ANY($8::text[]) AND EXISTS (SELECT FROM m)
             ),
             p AS (
                 INSERT INTO {letters} (event_id, commit_pos, seq_pos, letter)
                 SELECT * FROM unnest($9::uuid[], $10::bigint[], $11::bigint[], $12::text[])
                 WHERE EXISTS (SELECT FROM m)
                 ON CONFLICT (event_id) DO UPDATE SET commit_pos = excluded.commit_pos,
                     seq_pos = excluded.seq_pos, letter = excluded.letter
             ),
             d AS (
                 DELETE FROM {letters} WHERE event_id = ANY($13::uuid[]) AND EXISTS (SELECT FROM m)
             )"
        );
        let commit_select = "SELECT EXISTS (SELECT FROM m),
             CASE WHEN $14 THEN set_config('synchronous_commit', 'off', true) END";
        let sql = Sql {
            commit: format!("{commit_with} {commit_select}").into(),
            commit_with,
            commit_select,
            state: format!("SELECT fence, commit_pos, seq_pos FROM {meta}").into(),
            lookups: format!("SELECT key, value FROM {lookups} WHERE key = ANY($1::text[])").into(),
            count: format!("SELECT count(*) FROM {letters}").into(),
        };
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE {meta} SET fence = $1 WHERE fence <= $1 RETURNING commit_pos, seq_pos"
        )))
        .bind(to_i64(fence, "fence")?)
        .fetch_optional(&pool)
        .await
        .map_err(db)?;
        let mut writer = Self {
            pool,
            projection,
            generation,
            names,
            fence,
            checkpoint: None,
            sql: Arc::new(sql),
            types: Arc::new(types),
            spare: std::sync::Mutex::default(),
            unflushed: false,
            durable: None,
        };
        match row {
            Some((commit, sequence)) => {
                writer.checkpoint = position(commit, sequence)?;
                writer.durable = writer.checkpoint;
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

impl GenerationWriter for PgWriter {
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
            .bind(keys)
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
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let deferred = durability == Durability::Deferred;
        let mut parts = batch.into_parts();
        let spare = std::mem::take(&mut parts.spare);
        if spare.keep() {
            *self.spare.get_mut().unwrap_or_else(|e| e.into_inner()) = spare;
        }
        let (commit, sequence) = split(Some(through))?;
        let (expected_commit, expected_sequence) = split(self.checkpoint)?;
        let (set_keys, set_values): (Vec<String>, Vec<String>) = parts.sets.iter().cloned().unzip();
        for text in set_keys.iter().chain(&set_values).chain(&parts.removes) {
            check_text(text)?;
        }
        let letters = parts.letters_json()?;
        let mut letter_commits = Vec::with_capacity(parts.parks.len());
        let mut letter_sequences = Vec::with_capacity(parts.parks.len());
        for letter in &parts.parks {
            letter_commits.push(to_i64(letter.position.commit, "position")?);
            letter_sequences.push(to_i64(letter.position.sequence, "position")?);
        }
        let letter_ids: Vec<Uuid> = parts.parks.iter().map(|l| l.event_id).collect();
        let mut statements = Vec::with_capacity(parts.steps.len());
        for step in parts.steps {
            match step {
                Step::Statement(statement) => {
                    let mut query = sqlx::query(AssertSqlSafe(statement.sql));
                    for value in statement.values {
                        query = bind(query, value)?;
                    }
                    statements.push(Prepared::Statement(query));
                }
                Step::Rows(write) => {
                    statements.extend(queries(write, &self.types)?.into_iter().map(Prepared::Rows))
                }
            }
        }
        // One statement alone: nothing to write, or a single row write on a plain table,
        // which runs inside the checkpoint statement (a data-modifying `WITH` gated on the
        // checkpoint's update). Otherwise a transaction, a round trip per statement.
        let single = match &statements[..] {
            [] => true,
            [Prepared::Rows(rows)] => rows.plain,
            _ => false,
        };
        let fused = if single {
            match statements.pop() {
                Some(Prepared::Rows(rows)) => Some(rows),
                _ => None,
            }
        } else {
            None
        };
        let sql = match &fused {
            None => self.sql.commit.clone(),
            Some(rows) => format!(
                "{}, w AS ({}) {}",
                self.sql.commit_with,
                rows.sql(COMMIT_PARAMS + 1, Some("m")),
                self.sql.commit_select
            )
            .into(),
        };
        let mut commit_query = sqlx::query(AssertSqlSafe(sql))
            .bind(commit)
            .bind(sequence)
            .bind(to_i64(self.fence, "fence")?)
            .bind(expected_commit)
            .bind(expected_sequence)
            .bind(set_keys)
            .bind(set_values)
            .bind(parts.removes)
            .bind(letter_ids)
            .bind(letter_commits)
            .bind(letter_sequences)
            .bind(letters)
            .bind(parts.unparks)
            .bind(deferred);
        if let Some(rows) = fused {
            commit_query = rows.bind(commit_query);
        }

        if single {
            // One statement: its own transaction.
            let row = commit_query.fetch_one(&self.pool).await.map_err(db)?;
            let applied: bool = row.try_get(0).map_err(db)?;
            if !applied {
                return Err(self.refused().await);
            }
        } else {
            let mut tx = self.pool.begin().await.map_err(db)?;
            let row = commit_query.fetch_one(&mut *tx).await.map_err(db)?;
            let applied: bool = row.try_get(0).map_err(db)?;
            if !applied {
                tx.rollback().await.map_err(db)?;
                return Err(self.refused().await);
            }
            for statement in statements {
                let query = match statement {
                    Prepared::Statement(query) => query,
                    Prepared::Rows(rows) => rows.query(),
                };
                query.execute(&mut *tx).await.map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
        }
        self.checkpoint = Some(through);
        if deferred {
            // Visible, not yet durable: report the last durable checkpoint until a flush.
            self.unflushed = true;
            return Ok(self.durable);
        }
        // A synchronous commit waits for the WAL up to its own record, which follows every
        // deferred commit before it.
        self.unflushed = false;
        self.durable = self.checkpoint;
        Ok(self.checkpoint)
    }

    async fn flush(&mut self) -> Result<Option<LogPosition>> {
        if self.unflushed {
            // A transaction that commits synchronously waits for the WAL up to its commit
            // record, which follows every deferred commit.
            let mut tx = self.pool.begin().await.map_err(db)?;
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            self.unflushed = false;
        }
        self.durable = self.checkpoint;
        Ok(self.checkpoint)
    }
}
