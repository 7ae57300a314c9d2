//! The services a run uses and the isolation of each scenario: its own PostgreSQL schema,
//! Redis key prefix and temporary directory, each removed afterwards.

use std::{str::FromStr, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{
    AssertSqlSafe, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{BenchResult, Sizes};

/// What every scenario gets: service addresses, sizes and the progress display.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// PostgreSQL URL (`DATABASE_URL`).
    pub(crate) database_url: String,
    /// Redis URL (`REDIS_URL`).
    pub(crate) redis_url: String,
    /// How big each scenario is.
    pub(crate) sizes: Sizes,
    /// Timed runs per side.
    pub(crate) runs: usize,
    progress: ProgressBar,
}

impl Ctx {
    /// A context; the progress bar counts scenarios.
    pub(crate) fn new(
        database_url: String,
        redis_url: String,
        sizes: Sizes,
        runs: usize,
        scenarios: u64,
    ) -> Self {
        let progress = ProgressBar::new(scenarios);
        progress.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        progress.enable_steady_tick(Duration::from_millis(200));
        Self {
            database_url,
            redis_url,
            sizes,
            runs: runs.max(1),
            progress,
        }
    }

    /// Shows what is happening now.
    pub(crate) fn phase(&self, message: impl Into<String>) {
        let message = message.into();
        if self.progress.is_hidden() {
            eprintln!("... {message}");
        }
        self.progress.set_message(message);
    }

    /// Marks one scenario done and prints a line above the bar.
    pub(crate) fn done(&self, line: String) {
        if self.progress.is_hidden() {
            eprintln!("{line}");
        } else {
            self.progress.println(line);
        }
        self.progress.inc(1);
    }

    /// Removes the progress bar.
    pub(crate) fn finish(&self) {
        self.progress.finish_and_clear();
    }

    /// A fresh schema with a random name and a pool whose connections use it.
    ///
    /// # Errors
    /// When PostgreSQL is unreachable.
    pub(crate) async fn pg_schema(&self, max_connections: u32) -> BenchResult<PgSchema> {
        pg_schema(&self.database_url, max_connections).await
    }

    /// A fresh Redis key prefix; every key a scenario writes starts with it.
    pub(crate) fn redis_prefix(&self) -> String {
        format!("annals-bench:{}:", uuid::Uuid::new_v4().simple())
    }

    /// A Redis connection manager.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub(crate) async fn redis(&self) -> BenchResult<redis::aio::ConnectionManager> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let manager = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| format!("cannot reach Redis at {}: {e}", self.redis_url))?;
        Ok(manager)
    }

    /// Deletes every key under `prefix`.
    ///
    /// # Errors
    /// Redis failures.
    pub(crate) async fn redis_cleanup(&self, prefix: &str) -> BenchResult<()> {
        let mut conn = self.redis().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Brings a freshly filled table to the state a long-lived one is in, before anything is
/// timed: `VACUUM (ANALYZE)` sets the hint bits and the visibility map of its rows (the
/// first read of a row otherwise sets them, dirtying its page, and with `shared_buffers`
/// below the table's size the reading backend then writes those pages out itself), and a
/// `CHECKPOINT` writes the fill's dirty pages now rather than while a timed run reads.
/// Without it, each side's first timed run did that work (16-22k buffers written by its
/// backends at 1,000,000 events); the medians rarely used those runs, so the ratios did not
/// move, but the minimums did. `tables` are SQL names the bench chose (never user input).
///
/// A `CHECKPOINT` needs a superuser or the `pg_checkpoint` role; without them it is left
/// out, with a warning on stderr.
///
/// # Errors
/// PostgreSQL failures of the `VACUUM`.
pub(crate) async fn settle(pool: &PgPool, tables: &str) -> BenchResult<()> {
    sqlx::raw_sql(AssertSqlSafe(format!("VACUUM (ANALYZE) {tables}")))
        .execute(pool)
        .await?;
    if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(pool).await {
        eprintln!("annals-bench: no CHECKPOINT before the timed runs ({e}); timings may vary more");
    }
    Ok(())
}

/// A fresh schema with a random name in the database at `url`, and a pool whose connections
/// use it.
///
/// # Errors
/// When PostgreSQL is unreachable.
pub(crate) async fn pg_schema(url: &str, max_connections: u32) -> BenchResult<PgSchema> {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {}: {e}", url))?;
    // The name is ours (a uuid), never user input.
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&admin)
        .await?;
    let options = PgConnectOptions::from_str(url)?.options([("search_path", name.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await?;
    Ok(PgSchema { name, pool, admin })
}

/// A schema of its own, dropped with [`PgSchema::drop`].
#[derive(Debug)]
pub(crate) struct PgSchema {
    /// The schema name (`bench_<uuid>`).
    pub(crate) name: String,
    /// Connections whose `search_path` is the schema.
    pub(crate) pool: PgPool,
    admin: PgPool,
}

impl PgSchema {
    /// Closes the pool and drops the schema with everything in it.
    ///
    /// # Errors
    /// PostgreSQL failures.
    pub(crate) async fn drop(self) -> BenchResult<()> {
        self.pool.close().await;
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        sqlx::query(AssertSqlSafe(sql)).execute(&self.admin).await?;
        self.admin.close().await;
        Ok(())
    }
}
