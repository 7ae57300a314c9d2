//! [`PgTables`]: a projection's read model in PostgreSQL tables, one schema per generation.

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
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{PgWriter, is_plain_identifier, migrate_locked};
use crate::{
    SqlBatch, SqlSchema, SqlView,
    common::{from_i64, letter_from_json, to_i64},
    error::db,
    schema::{Kind, Names, quote},
};

/// Room left for a generation number in a schema name.
const GENERATION_DIGITS: usize = 6;

/// A projection's read model in PostgreSQL tables, in the event store's own database: the
/// rows a batch writes, its checkpoint, the owner's fence, the lookups and dead letters
/// commit in one transaction.
///
/// Layout for namespace `ns` and projection `p`: the table `"ns"."annals_read_models"` holds
/// one row per projection (current, building and retired generation, the next number, the
/// fence, the event store id); generation `n` is the schema `"ns_p_gn"`, holding the user's
/// tables (created from the [`SqlSchema`] when the generation is), `__annals_meta`
/// (checkpoint and fence), `__annals_lookups` and `__annals_dead_letters`. Dropping a
/// generation drops its schema.
///
/// Every change of the metadata (claim, build, switch, reset, drop) is one transaction
/// with its DDL, so a crash leaves no half-made generation. Cheap to clone; readers use
/// [`PgTables::view`].
///
/// Names: the namespace is a plain identifier (letters, digits, `_`); the projection
/// follows [`check_name`]; together they leave room for a six-digit generation number in
/// PostgreSQL's 63-byte identifiers. Two namespaces whose names and projections join to the
/// same schema name (`a_b` + `c` and `a` + `b_c`) collide: creating the second generation
/// then fails (42P06) rather than sharing it.
#[derive(Clone)]
pub struct PgTables {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    namespace: String,
    projection: String,
    schema: SqlSchema,
    /// `"ns"."annals_read_models"`.
    meta: String,
    migrated: AtomicBool,
}

impl fmt::Debug for PgTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTables")
            .field("namespace", &self.inner.namespace)
            .field("projection", &self.inner.projection)
            .finish_non_exhaustive()
    }
}

/// The projection's row of the namespace's metadata table.
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
    Option<Uuid>,
);

impl Meta {
    fn from_row(row: MetaRow) -> Result<Self> {
        let opt = |v: Option<i64>| v.map(|v| from_i64(v, "generation")).transpose();
        Ok(Self {
            current: opt(row.0)?,
            building: opt(row.1)?,
            retired: opt(row.2)?,
            next: from_i64(row.3, "generation")?,
            fence: from_i64(row.4, "fence")?,
            store: row.5,
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

impl PgTables {
    /// The read model of `projection`, kept under `namespace` (a plain identifier: letters,
    /// digits, `_`), with the tables of `schema`. Creates nothing yet: the metadata table is
    /// created by [`PgTables::migrate`] or the first claim, a generation's tables when the
    /// runner begins building it.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad namespace, projection or table name or names too
    /// long together; [`Error::Schema`] for a placeholder the schema does not declare.
    pub fn new(pool: PgPool, namespace: &str, projection: &str, schema: SqlSchema) -> Result<Self> {
        if !is_plain_identifier(namespace) {
            return Err(Error::InvalidName {
                name: namespace.to_owned(),
                reason: "a namespace is a plain identifier (letters, digits, '_'), at most 63 bytes",
            });
        }
        check_name(projection)?;
        if namespace.len() + projection.len() + "__g".len() + GENERATION_DIGITS > 63 {
            return Err(Error::InvalidName {
                name: format!("{namespace}_{projection}"),
                reason: "namespace and projection are too long together: a generation's schema name must fit in 63 bytes",
            });
        }
        schema.check()?;
        Ok(Self {
            inner: Arc::new(Inner {
                meta: format!("{}.\"annals_read_models\"", quote(namespace)),
                pool,
                namespace: namespace.to_owned(),
                projection: projection.to_owned(),
                schema,
                migrated: AtomicBool::new(false),
            }),
        })
    }

    /// The pool, for readers' queries.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Creates the namespace's schema and metadata table when missing. Safe to call from
    /// several processes at once; the first claim calls it too.
    ///
    /// # Errors
    /// Database errors ([`Error::Store`], transient or not).
    pub async fn migrate(&self) -> Result<()> {
        let ddl = [
            format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote(&self.inner.namespace)
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    projection text PRIMARY KEY,
                    current_gen bigint,
                    building_gen bigint,
                    retired_gen bigint,
                    next_gen bigint NOT NULL DEFAULT 0,
                    fence bigint NOT NULL DEFAULT 0,
                    store_id uuid
                )",
                self.inner.meta
            ),
        ];
        migrate_locked(
            &self.inner.pool,
            &format!("tables:{}", self.inner.namespace),
            &ddl,
        )
        .await?;
        self.inner.migrated.store(true, Ordering::Release);
        Ok(())
    }

    async fn migrated(&self) -> Result<()> {
        if self.inner.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        self.migrate().await
    }

    /// The raw (unquoted) schema name of generation `n`.
    fn schema_name(&self, n: u64) -> String {
        format!("{}_{}_g{n}", self.inner.namespace, self.inner.projection)
    }

    /// The SQL names of generation `n`'s declared tables.
    fn names(&self, n: u64) -> Names {
        let schema = quote(&self.schema_name(n));
        self.inner.schema.names(|o| match o.kind {
            Kind::Index => quote(&o.name),
            _ => format!("{schema}.{}", quote(&o.name)),
        })
    }

    /// The generations of this projection, without claiming anything.
    ///
    /// # Errors
    /// Database errors.
    pub async fn generations(&self) -> Result<Generations> {
        let row: Option<MetaRow> = match sqlx::query_as(AssertSqlSafe(format!(
            "SELECT current_gen, building_gen, retired_gen, next_gen, fence, store_id
             FROM {} WHERE projection = $1",
            self.inner.meta
        )))
        .bind(&self.inner.projection)
        .fetch_optional(&self.inner.pool)
        .await
        {
            Ok(row) => row,
            // No metadata table yet: nothing was ever built.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P01" | "3F000")) =>
            {
                None
            }
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

    /// Locks the projection's metadata row (creating it) in a new transaction, refusing a
    /// fence lower than the stored one.
    async fn locked(&self, fence: Option<Fence>) -> Result<(Transaction<'static, Postgres>, Meta)> {
        self.migrated().await?;
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        let row: MetaRow = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {} AS m (projection) VALUES ($1)
             ON CONFLICT (projection) DO UPDATE SET projection = m.projection
             RETURNING current_gen, building_gen, retired_gen, next_gen, fence, store_id",
            self.inner.meta
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

    /// Stores `meta` and commits.
    async fn save(&self, mut tx: Transaction<'static, Postgres>, meta: Meta) -> Result<()> {
        let opt = |v: Option<u64>| v.map(|v| to_i64(v, "generation")).transpose();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET current_gen = $2, building_gen = $3, retired_gen = $4,
                 next_gen = $5, fence = $6, store_id = $7
             WHERE projection = $1",
            self.inner.meta
        )))
        .bind(&self.inner.projection)
        .bind(opt(meta.current)?)
        .bind(opt(meta.building)?)
        .bind(opt(meta.retired)?)
        .bind(to_i64(meta.next, "generation")?)
        .bind(to_i64(meta.fence, "fence")?)
        .bind(meta.store)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn drop_schema(&self, tx: &mut Transaction<'static, Postgres>, n: u64) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote(&self.schema_name(n))
        )))
        .execute(&mut **tx)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Creates generation `n`: its schema, the bookkeeping tables, the user's DDL.
    async fn create(&self, tx: &mut Transaction<'static, Postgres>, n: u64) -> Result<()> {
        let name = self.schema_name(n);
        if name.len() > 63 {
            return Err(Error::InvalidName {
                name,
                reason: "a generation's schema name must fit in 63 bytes",
            });
        }
        let s = quote(&name);
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA {s};
             CREATE TABLE {s}.\"__annals_meta\" (
                 id boolean PRIMARY KEY DEFAULT true CHECK (id),
                 commit_pos bigint,
                 seq_pos bigint,
                 fence bigint NOT NULL DEFAULT 0
             );
             INSERT INTO {s}.\"__annals_meta\" DEFAULT VALUES;
             CREATE TABLE {s}.\"__annals_lookups\" (key text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE {s}.\"__annals_dead_letters\" (
                 event_id uuid PRIMARY KEY,
                 commit_pos bigint NOT NULL,
                 seq_pos bigint NOT NULL,
                 letter text NOT NULL
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

impl ReadModel for PgTables {
    type Batch = SqlBatch;
    type Writer = PgWriter;

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
            self.drop_schema(&mut tx, n).await?;
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
            "SELECT commit_pos, seq_pos FROM {}.\"__annals_meta\"",
            quote(&self.schema_name(generation.0))
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
            "SELECT letter FROM {}.\"__annals_dead_letters\" ORDER BY commit_pos, seq_pos",
            quote(&self.schema_name(current.0))
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

    async fn open_writer(&self, generation: Generation, fence: Fence) -> Result<PgWriter> {
        PgWriter::open(
            self.inner.pool.clone(),
            self.inner.projection.clone(),
            generation,
            self.names(generation.0),
            self.schema_name(generation.0),
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
        let mut tx = self.inner.pool.begin().await.map_err(db)?;
        self.drop_schema(&mut tx, generation.0).await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET retired_gen = NULL WHERE projection = $1 AND retired_gen = $2",
            self.inner.meta
        )))
        .bind(&self.inner.projection)
        .bind(to_i64(generation.0, "generation")?)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }
}
