//! [`SqliteTables`]: a projection's read model in SQLite tables, one name prefix per
//! generation.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use annals_projections::{
    DeadLetter, Error, Fence, Generation, Generations, ReadModel, Result, check_name,
};
use sqlx::{AssertSqlSafe, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use super::{SqliteWriter, immediate};
use crate::{
    SqlBatch, SqlSchema, SqlView,
    common::{from_i64, letter_from_json, to_i64},
    error::db,
    schema::{Names, quote},
};

/// The metadata table: one row per projection.
const META: &str = "\"annals_read_models\"";

/// A projection's read model in SQLite tables, in the event store's own file (or any
/// other): the rows a batch writes, its checkpoint, the owner's fence, the lookups and dead
/// letters commit in one `BEGIN IMMEDIATE` transaction.
///
/// Layout for projection `p`: the table `annals_read_models` holds one row per projection
/// (current, building and retired generation, the next number, the fence, the event store
/// id); generation `n` is every table whose name starts with `p__gn__`: the user's tables
/// (`"p__g3__accounts"`, created from the [`SqlSchema`] when the generation is) and
/// `p__gn___meta` (checkpoint and fence), `p__gn___lookups`, `p__gn___dead_letters`.
/// Dropping a generation drops its tables.
///
/// Every change of the metadata (claim, build, switch, reset, drop) is one transaction with
/// its DDL, so a crash leaves no half-made generation. Cheap to clone; readers use
/// [`SqliteTables::view`]. Give it a pool whose connections have a busy timeout (sqlx's
/// default is 5 s) and, beside a running event store, WAL mode.
///
/// Names: the projection follows [`check_name`], and, since SQLite compares names without
/// regard to case and `__` separates the parts of a generated name, has no upper-case
/// letters and no `__`.
#[derive(Clone)]
pub struct SqliteTables {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    projection: String,
    schema: SqlSchema,
    migrated: AtomicBool,
}

impl fmt::Debug for SqliteTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteTables")
            .field("projection", &self.inner.projection)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    current: Option<u64>,
    building: Option<u64>,
    retired: Option<u64>,
    next: u64,
    fence: Fence,
    store: Option<Uuid>,
}

type MetaRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
    Option<String>,
);

const COLUMNS: &str = "current_gen, building_gen, retired_gen, next_gen, fence, store_id";

impl Meta {
    fn from_row(row: MetaRow) -> Result<Self> {
        let opt = |v: Option<i64>| v.map(|v| from_i64(v, "generation")).transpose();
        let store = row
            .5
            .map(|s| {
                Uuid::parse_str(&s).map_err(|_| Error::Corrupt {
                    what: format!("store id {s:?}"),
                })
            })
            .transpose()?;
        Ok(Self {
            current: opt(row.0)?,
            building: opt(row.1)?,
            retired: opt(row.2)?,
            next: from_i64(row.3, "generation")?,
            fence: from_i64(row.4, "fence")?,
            store,
        })
    }

    fn generations(&self) -> Generations {
        Generations {
            current: self.current.map(Generation),
            building: self.building.map(Generation),
            retired: self.retired.map(Generation),
            store: self.store,
        }
    }
}

impl SqliteTables {
    /// The read model of `projection` with the tables of `schema`, in the file of `pool`.
    /// Creates nothing yet: the metadata table is created by [`SqliteTables::migrate`] or
    /// the first claim, a generation's tables when the runner begins building it.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad projection or table name; [`Error::Schema`] for a
    /// placeholder the schema does not declare.
    pub fn new(pool: SqlitePool, projection: &str, schema: SqlSchema) -> Result<Self> {
        check_name(projection)?;
        if projection.contains("__") || projection.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::InvalidName {
                name: projection.to_owned(),
                reason: "a projection kept in SQLite tables has no upper-case letters and no '__'",
            });
        }
        schema.check()?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                projection: projection.to_owned(),
                schema,
                migrated: AtomicBool::new(false),
            }),
        })
    }

    /// The pool, for readers' queries.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Creates the metadata table when missing. Safe to call from several processes at
    /// once; the first claim calls it too.
    ///
    /// # Errors
    /// Database errors ([`Error::Store`], transient or not).
    pub async fn migrate(&self) -> Result<()> {
        let mut tx = immediate(&self.inner.pool).await.map_err(db)?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {META} (
                projection TEXT PRIMARY KEY,
                current_gen INTEGER,
                building_gen INTEGER,
                retired_gen INTEGER,
                next_gen INTEGER NOT NULL DEFAULT 0,
                fence INTEGER NOT NULL DEFAULT 0,
                store_id TEXT
            )"
        )))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.inner.migrated.store(true, Ordering::Release);
        Ok(())
    }

    async fn migrated(&self) -> Result<()> {
        if self.inner.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        self.migrate().await
    }

    /// The name prefix of generation `n`'s tables.
    fn prefix(&self, n: u64) -> String {
        format!("{}__g{n}__", self.inner.projection)
    }

    fn names(&self, n: u64) -> Names {
        let prefix = self.prefix(n);
        self.inner
            .schema
            .names(|o| quote(&format!("{prefix}{}", o.name)))
    }

    /// The generations of this projection, without claiming anything.
    ///
    /// # Errors
    /// Database errors.
    pub async fn generations(&self) -> Result<Generations> {
        let row: Option<MetaRow> = match sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM {META} WHERE projection = ?1"
        )))
        .bind(&self.inner.projection)
        .fetch_optional(&self.inner.pool)
        .await
        {
            Ok(row) => row,
            // No metadata table yet: nothing was ever built.
            Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => None,
            Err(e) => return Err(db(e)),
        };
        Ok(row
            .map(Meta::from_row)
            .transpose()?
            .map(|m| m.generations())
            .unwrap_or_default())
    }

    /// A view of the generation readers should use now, or `None` before the first build
    /// has completed. Take one per request.
    ///
    /// # Errors
    /// Database errors.
    pub async fn view(&self) -> Result<Option<SqlView>> {
        Ok(self
            .generations()
            .await?
            .current
            .map(|g| SqlView::new(g, self.names(g.0))))
    }

    /// Starts a write transaction holding the projection's metadata (creating its row),
    /// refusing a fence lower than the stored one.
    async fn locked(&self, fence: Option<Fence>) -> Result<(Transaction<'static, Sqlite>, Meta)> {
        self.migrated().await?;
        let mut tx = immediate(&self.inner.pool).await.map_err(db)?;
        let row: MetaRow = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {META} (projection) VALUES (?1)
             ON CONFLICT (projection) DO UPDATE SET projection = excluded.projection
             RETURNING {COLUMNS}"
        )))
        .bind(&self.inner.projection)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let meta = Meta::from_row(row)?;
        if let Some(fence) = fence
            && meta.fence > fence
        {
            tx.rollback().await.map_err(db)?;
            return Err(Error::Fenced {
                projection: self.inner.projection.clone(),
                fence,
                stored: meta.fence,
            });
        }
        Ok((tx, meta))
    }

    async fn save(&self, mut tx: Transaction<'static, Sqlite>, meta: Meta) -> Result<()> {
        let opt = |v: Option<u64>| v.map(|v| to_i64(v, "generation")).transpose();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {META} SET current_gen = ?2, building_gen = ?3, retired_gen = ?4,
                 next_gen = ?5, fence = ?6, store_id = ?7
             WHERE projection = ?1"
        )))
        .bind(&self.inner.projection)
        .bind(opt(meta.current)?)
        .bind(opt(meta.building)?)
        .bind(opt(meta.retired)?)
        .bind(to_i64(meta.next, "generation")?)
        .bind(to_i64(meta.fence, "fence")?)
        .bind(meta.store.map(|s| s.to_string()))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// Drops every table and view of generation `n`.
    async fn drop_tables(&self, tx: &mut Transaction<'static, Sqlite>, n: u64) -> Result<()> {
        let prefix = self.prefix(n);
        let objects: Vec<(String, String)> = sqlx::query_as(
            "SELECT type, name FROM sqlite_master
             WHERE type IN ('table', 'view') AND substr(name, 1, length(?1)) = ?1",
        )
        .bind(&prefix)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
        for (kind, name) in objects {
            // Only names with this generation's prefix (no '"': checked names only).
            if name.contains('"') {
                continue;
            }
            let kind = if kind == "view" { "VIEW" } else { "TABLE" };
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP {kind} IF EXISTS {}",
                quote(&name)
            )))
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    /// Creates generation `n`: the bookkeeping tables and the user's DDL.
    async fn create(&self, tx: &mut Transaction<'static, Sqlite>, n: u64) -> Result<()> {
        let p = self.prefix(n);
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE \"{p}_meta\" (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 commit_pos INTEGER,
                 seq_pos INTEGER,
                 fence INTEGER NOT NULL DEFAULT 0
             );
             INSERT INTO \"{p}_meta\" (id) VALUES (1);
             CREATE TABLE \"{p}_lookups\" (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE \"{p}_dead_letters\" (
                 event_id TEXT PRIMARY KEY,
                 commit_pos INTEGER NOT NULL,
                 seq_pos INTEGER NOT NULL,
                 letter TEXT NOT NULL
             );"
        )))
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        let names = self.names(n);
        for object in self.inner.schema.objects() {
            let ddl = names.expand(&object.ddl)?;
            sqlx::raw_sql(AssertSqlSafe(ddl))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
        Ok(())
    }
}

impl ReadModel for SqliteTables {
    type Batch = SqlBatch;
    type Writer = SqliteWriter;

    fn projection(&self) -> &str {
        &self.inner.projection
    }

    async fn claim(&self, fence: Fence, store: Uuid) -> Result<Generations> {
        let (tx, mut meta) = self.locked(Some(fence)).await?;
        let before = meta.generations();
        meta.fence = fence;
        meta.store.get_or_insert(store);
        self.save(tx, meta).await?;
        Ok(before)
    }

    async fn reset(&self, fence: Fence, store: Uuid) -> Result<()> {
        let (mut tx, mut meta) = self.locked(Some(fence)).await?;
        for n in [meta.current, meta.building, meta.retired]
            .into_iter()
            .flatten()
        {
            self.drop_tables(&mut tx, n).await?;
        }
        meta.current = None;
        meta.building = None;
        meta.retired = None;
        meta.fence = fence;
        meta.store = Some(store);
        self.save(tx, meta).await
    }

    async fn peek_generations(&self) -> Result<Generations> {
        self.generations().await
    }

    async fn peek_checkpoint(&self, generation: Generation) -> Result<Option<annals::LogPosition>> {
        let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT commit_pos, seq_pos FROM \"{}_meta\"",
            self.prefix(generation.0)
        )))
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(db)?;
        match row {
            Some((commit, sequence)) => crate::common::position(commit, sequence),
            None => Ok(None),
        }
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let Some(current) = self.generations().await?.current else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT letter FROM \"{}_dead_letters\" ORDER BY commit_pos, seq_pos",
            self.prefix(current.0)
        )))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|(text,)| letter_from_json(text)).collect()
    }

    async fn begin_build(&self, fence: Fence) -> Result<Generation> {
        let (mut tx, mut meta) = self.locked(Some(fence)).await?;
        meta.fence = fence;
        if let Some(building) = meta.building {
            self.save(tx, meta).await?;
            return Ok(Generation(building));
        }
        let n = (meta.next + 1)
            .max(meta.current.unwrap_or(0) + 1)
            .max(meta.retired.unwrap_or(0) + 1);
        self.create(&mut tx, n).await?;
        meta.next = n;
        meta.building = Some(n);
        self.save(tx, meta).await?;
        Ok(Generation(n))
    }

    async fn open_writer(&self, generation: Generation, fence: Fence) -> Result<SqliteWriter> {
        SqliteWriter::open(
            self.inner.pool.clone(),
            self.inner.projection.clone(),
            generation,
            self.names(generation.0),
            &self.prefix(generation.0),
            fence,
        )
        .await
    }

    async fn switch(&self, generation: Generation, fence: Fence) -> Result<Option<Generation>> {
        let (tx, mut meta) = self.locked(Some(fence)).await?;
        let old = meta.current.filter(|&c| c != generation.0);
        meta.fence = fence;
        meta.current = Some(generation.0);
        if meta.building == Some(generation.0) {
            meta.building = None;
        }
        if old.is_some() {
            meta.retired = old;
        }
        self.save(tx, meta).await?;
        Ok(old.map(Generation))
    }

    async fn drop_generation(&self, generation: Generation) -> Result<()> {
        self.migrated().await?;
        let mut tx = immediate(&self.inner.pool).await.map_err(db)?;
        self.drop_tables(&mut tx, generation.0).await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {META} SET retired_gen = NULL WHERE projection = ?1 AND retired_gen = ?2"
        )))
        .bind(&self.inner.projection)
        .bind(to_i64(generation.0, "generation")?)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }
}
