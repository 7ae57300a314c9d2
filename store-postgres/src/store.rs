//! [`PgEventStore`]: connecting, migrating, and the [`EventStore`] contract.

use std::{sync::Arc, time::Duration};

use annals::{
    AggregateRead, AppendResult, EventStore, Limits, LogHold, LogPosition, LogRead, RecordedEvent,
    Snapshot, StreamAppend, StreamId, StreamRead,
};
use futures::{FutureExt, stream::BoxStream};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    Error, PgConfig, Result, aggregate,
    bounded::{Db, Lanes},
    config::{TestHooks, validate_schema_name},
    direct::Direct,
    error::{internal, sql_state},
    idempotency, info,
    loads::Loads,
    log,
    probe::Probe,
    read,
    seen::Seen,
    stream,
    writer::{self, Outcome, Request, WriterContext},
};

/// The embedded migrations (`store-postgres/migrations`), applied by [`PgEventStore::migrate`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL event store: a cheap handle (clone it) over a connection pool and the
/// group-commit writers.
///
/// Everything lives in one schema (see [`PgConfig::with_schema`]); call
/// [`PgEventStore::migrate`] once after connecting.
#[derive(Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// The pool with the bound of every wait ([`PgConfig::with_io_timeout`]).
    db: Db,
    /// Names the server when it cannot be reached.
    probe: Probe,
    schema: String,
    limits: Limits,
    channel: Option<String>,
    poll_interval: Duration,
    visibility_wait: Duration,
    stats: log::Stats,
    writer: mpsc::Sender<Request>,
    /// Wakes the notifier after a direct append.
    notify: Option<mpsc::Sender<()>>,
    /// The direct path, unless test hooks are set (they act on the writers' groups).
    direct: Option<Direct>,
    /// Concurrent loads of aggregates, read together.
    loads: Loads,
    /// How subscriptions listen for notifications.
    listen: log::Listen,
    hooks: TestHooks,
}

impl std::fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.inner.schema)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl PgEventStore {
    /// Connects a pool whose every connection uses the configured schema, and starts the
    /// group-commit writers on the current tokio runtime.
    ///
    /// One connection is opened at once, within the connect timeout
    /// ([`PgConfig::with_connect_timeout`]), so an unreachable server is reported now, by
    /// name, rather than by the first call.
    ///
    /// # Errors
    /// [`Error::InvalidSchemaName`], [`Error::InvalidUrl`], [`Error::Unreachable`] when the
    /// server cannot be reached ("cannot connect to PostgreSQL at HOST:PORT: connection
    /// refused"), or [`Error::Connect`] when it refuses the connection (authentication, an
    /// unknown database).
    pub async fn connect(config: PgConfig) -> Result<Self> {
        validate_schema_name(&config.schema)?;
        let options = config.connect_options()?;
        let probe = Probe::new(options.clone(), config.connect_timeout);
        let seen: Arc<Seen> = Arc::default();
        let listen_options = options.clone();
        probe.check().await?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            // The pool keeps retrying a refused connection until this timeout; the writers
            // then ask `probe` whether the server is reachable, and say so.
            .acquire_timeout(config.acquire_timeout)
            // No ping round trip before every query: a broken connection fails its call, and
            // the writers send an append again on a tested connection (see writer.rs).
            .test_before_acquire(false)
            // A new connection may reach a server that lacks versions seen before (a
            // standby promoted without the last commits): forget them (see `seen.rs`).
            .after_connect({
                let seen = seen.clone();
                move |_, _| {
                    seen.forget_all();
                    Box::pin(async { Ok(()) })
                }
            })
            .connect_lazy_with(options);
        let db = Db {
            pool: pool.clone(),
            timeout: config.io_timeout,
            lanes: Lanes::new(&pool, config.max_connections),
            privileges: Default::default(),
            seen,
        };
        let channel = config.notify.then(|| config.channel());
        let notify = channel
            .clone()
            .map(|c| writer::spawn_notifier(db.clone(), c));
        let direct = (!config.hooks.active()).then(|| Direct::new(config.direct_connections));
        let writer = writer::spawn(
            WriterContext {
                pool: pool.clone(),
                db: db.clone(),
                notify: notify.clone(),
                limits: writer::GroupLimits {
                    requests: config.max_group_requests,
                    events: config.max_group_events,
                },
                probe: probe.clone(),
                hooks: config.hooks.clone(),
                in_flight: writer::InFlight::default(),
            },
            config.writers,
        );
        let listen = log::Listen {
            options: listen_options,
            check: config.listener_check,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                db,
                listen,
                probe,
                schema: config.schema,
                limits: config.limits,
                channel,
                poll_interval: config.poll_interval,
                visibility_wait: config.visibility_wait,
                stats: log::Stats::default(),
                writer,
                notify,
                direct,
                loads: Loads::default(),
                hooks: config.hooks,
            }),
        })
    }

    /// Creates the schema if needed and applies the embedded migrations that are not applied
    /// yet (their bookkeeping table `_sqlx_migrations` lives in the same schema). Safe to call
    /// on every start and from several processes at once.
    ///
    /// # Errors
    /// [`Error::Unreachable`] when the server cannot be reached, [`Error::Connect`] when the
    /// schema cannot be created, [`Error::Migrate`] when a migration fails or an applied one
    /// was changed.
    pub async fn migrate(&self) -> Result<()> {
        // The validated schema name is the only identifier ever written into SQL text.
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.inner.schema);
        match sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&self.inner.pool)
            .await
        {
            // Another process created the schema between this statement's check and its
            // insert (a unique violation in the catalog): it exists, which is all we need.
            Err(e) if matches!(sql_state(&e).as_deref(), Some("23505" | "42P06")) => {}
            Err(e) => return Err(self.explain(e).await),
            Ok(_) => {}
        }
        let migrated = MIGRATOR.run(&self.inner.pool).await.map_err(Error::Migrate);
        // The schema may be new, under a name that held other events before.
        self.inner.db.seen.forget_all();
        migrated
    }

    /// Lets the existing role `role` append to and read this store, and nothing more: USAGE on
    /// the schema, SELECT on its tables, INSERT and UPDATE on snapshots, EXECUTE on the append
    /// functions (which run as the owner). Run it as the role that migrates (the owner); see
    /// `docs/operations.md` for the whole setup. The name is quoted by the server, never
    /// written into SQL text here.
    ///
    /// # Errors
    /// [`Error::Connect`] when the role does not exist or this connection's role may not grant.
    pub async fn grant_app_role(&self, role: &str) -> Result<()> {
        sqlx::query("SELECT grant_app_role($1)")
            .bind(role)
            .execute(&self.inner.pool)
            .await
            .map_err(Error::Connect)?;
        Ok(())
    }

    /// The error for a failed setup statement: the unreachable server, if that is why.
    async fn explain(&self, error: sqlx::Error) -> Error {
        match self.inner.probe.explain(&error).await {
            Some(unreachable) => unreachable,
            None => Error::Connect(error),
        }
    }

    /// Drops the schema with every event, stream and snapshot in it. For tests and
    /// benchmarks that made a throwaway schema; the handle is unusable afterwards.
    ///
    /// # Errors
    /// [`Error::Connect`] when the statement fails.
    pub async fn drop_schema(&self) -> Result<()> {
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.inner.schema);
        let dropped = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&self.inner.pool)
            .await
            .map_err(Error::Connect);
        // Its events are gone, and with them every version seen.
        self.inner.db.seen.forget_all();
        dropped?;
        Ok(())
    }

    /// The connection pool (its connections use the store's schema).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Checks `appends` against the store's limits, encoding their metadata once for both
    /// the check and the statements (per event, in order, `None` when empty).
    fn checked_metadata(&self, appends: &[StreamAppend]) -> annals::Result<Vec<Option<String>>> {
        let metadata = self.inner.limits.check_and_encode_metadata(appends)?;
        for event in appends.iter().flat_map(|a| &a.events) {
            if event.payload.as_str().contains('\0') {
                return Err(annals::Error::InvalidAppend {
                    reason: "a payload contains a NUL byte, which PostgreSQL cannot store",
                });
            }
        }
        Ok(metadata)
    }

    async fn submit(
        &self,
        appends: Vec<StreamAppend>,
        metadata: Vec<Option<String>>,
    ) -> annals::Result<Outcome> {
        // Before any statement: what the writers store is recorded only if the memory of
        // versions was not forgotten meanwhile.
        let epoch = self.inner.db.seen.epoch();
        let appending = self.inner.direct.as_ref().map(Direct::enter);
        if let (Some(direct), Some(appending), [append]) =
            (&self.inner.direct, &appending, appends.as_slice())
            && let Some(result) = direct
                .append(&self.inner.db, appending, append, &metadata)
                .await?
        {
            self.inner
                .hooks
                .direct_appends
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(notify) = &self.inner.notify {
                let _ = notify.try_send(());
            }
            if self.inner.hooks.lose_result() {
                return Err(internal(
                    true,
                    "the result of a committed append was lost (test hook)",
                ));
            }
            return Ok(Outcome::Appended(vec![result]));
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Request {
                appends,
                metadata,
                reply,
                queued: std::time::Instant::now(),
                epoch,
            })
            .await
            .map_err(|_| internal(false, "the store's writers have stopped"))?;
        answer
            .await
            .map_err(|_| internal(true, "a writer stopped before answering"))?
    }
}

/// Saves a snapshot unless a later one is stored.
const SAVE_SNAPSHOT: &str = "INSERT INTO snapshots \
    (stream_id, stream_version, schema_version, payload, taken_at) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (stream_id) DO UPDATE SET stream_version = excluded.stream_version, \
      schema_version = excluded.schema_version, payload = excluded.payload, \
      taken_at = excluded.taken_at \
    WHERE snapshots.stream_version <= excluded.stream_version";

/// The store's name in spans.
const STORE: &str = "postgres";

/// The span of one append call (`annals.store.append`, at debug): its first stream, event
/// type and correlation, how many streams and events; the positions are recorded when it
/// commits.
fn append_span(appends: &[StreamAppend]) -> tracing::Span {
    let first = appends.first();
    let event = first.and_then(|a| a.events.first());
    tracing::debug_span!(
        "annals.store.append",
        store = STORE,
        stream = first.map(|a| a.stream.as_str()),
        streams = appends.len(),
        events = appends.iter().map(|a| a.events.len()).sum::<usize>(),
        event_type = event.map(|e| e.event_type.as_str()),
        correlation_id = event
            .and_then(|e| e.metadata.correlation_id)
            .map(tracing::field::display),
        causation_id = event
            .and_then(|e| e.metadata.causation_id)
            .map(tracing::field::display),
        first_position = tracing::field::Empty,
        position = tracing::field::Empty,
    )
}

/// Records the positions an append committed at on its span.
fn record_positions(span: &tracing::Span, results: &annals::Result<Vec<AppendResult>>) {
    if let Ok(results) = results
        && let (Some(first), Some(last)) = (results.first(), results.last())
    {
        span.record(
            "first_position",
            tracing::field::display(first.first_position),
        );
        span.record("position", tracing::field::display(last.last_position));
    }
}

impl EventStore for PgEventStore {
    /// The future is boxed: the append's own state (the statements' futures, their bounds)
    /// is several kilobytes, which every caller's future would otherwise hold inline and
    /// copy each time it is moved (a repository's command moved it several times).
    fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> impl Future<Output = annals::Result<Vec<AppendResult>>> + Send {
        Box::pin(async move {
            let metadata = self.checked_metadata(&appends)?;
            let span = append_span(&appends);
            let results = async {
                match self.submit(appends, metadata).await? {
                    Outcome::Appended(results) => Ok(results),
                    // Out of line: rare, and its state would be part of every append's.
                    Outcome::Duplicate(appends) => {
                        idempotency::resolve(&self.inner.db, &appends).boxed().await
                    }
                }
            }
            .instrument(span.clone())
            .await;
            record_positions(&span, &results);
            results
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &StreamId,
        read: StreamRead,
    ) -> BoxStream<'a, annals::Result<RecordedEvent>> {
        stream::read_stream(self.inner.db.clone(), stream.clone(), read)
    }

    /// One statement for the snapshot and the first page of events after it, on the caller's
    /// task (see `aggregate.rs`). The future is boxed, as `append_multi`'s is.
    fn read_aggregate<'a>(
        &'a self,
        stream: &StreamId,
        snapshot_version: Option<u32>,
        read: StreamRead,
    ) -> impl Future<Output = annals::Result<AggregateRead<'a>>> + Send + 'a {
        let stream = stream.clone();
        Box::pin(async move {
            let found: AggregateRead<'a> = aggregate::read(
                &self.inner.db,
                &self.inner.loads,
                self.inner.direct.as_ref(),
                stream,
                snapshot_version,
                read,
            )
            .await?;
            Ok(found)
        })
    }

    fn read_all(&self, read: LogRead) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        log::read_all(
            self.inner.db.clone(),
            read,
            self.inner.visibility_wait,
            self.inner.stats.clone(),
        )
    }

    fn subscribe(&self, after: LogPosition) -> BoxStream<'_, annals::Result<RecordedEvent>> {
        log::subscribe(
            self.inner.db.clone(),
            after,
            self.inner
                .channel
                .clone()
                .map(|channel| (channel, self.inner.listen.clone())),
            self.inner.poll_interval,
            self.inner.stats.clone(),
        )
    }

    async fn stream_version(&self, stream: &StreamId) -> annals::Result<u64> {
        let stream = stream.as_str();
        let version: Option<i64> = self
            .inner
            .db
            .read("a stream's version", async |c| {
                sqlx::query_scalar(
                    "SELECT stream_version FROM events WHERE stream_id = $1 \
                     ORDER BY stream_version DESC LIMIT 1",
                )
                .bind(stream)
                .fetch_optional(c)
                .await
            })
            .await?;
        Ok(version.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
    }

    async fn head_position(&self) -> annals::Result<Option<LogPosition>> {
        let mut goal = None;
        let mut waited = Duration::ZERO;
        let mut backoff = Duration::from_millis(1);
        loop {
            let (g, last, waiting) = read::head(&self.inner.db, goal).await?;
            goal = Some(g);
            if !waiting || waited >= self.inner.visibility_wait {
                return Ok(last);
            }
            let pause = annals::Backoff::jittered(backoff);
            tokio::time::sleep(pause).await;
            waited += pause;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    async fn store_id(&self) -> annals::Result<Uuid> {
        info::store_id(&self.inner.db).await
    }

    async fn count_events(&self, after: LogPosition, through: LogPosition) -> annals::Result<u64> {
        info::count_events(&self.inner.db, after, through).await
    }

    async fn log_hold(&self) -> annals::Result<Option<LogHold>> {
        info::log_hold(&self.inner.db).await
    }

    // Boxed, as `append_multi`: a repository's command holds this future.
    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = annals::Result<()>> + Send {
        Box::pin(async move {
            self.inner
                .db
                .read("saving a snapshot", async |c| {
                    sqlx::query(SAVE_SNAPSHOT)
                        .bind(snapshot.stream_id.as_str())
                        .bind(i64::try_from(snapshot.stream_version).unwrap_or(i64::MAX))
                        .bind(i32::try_from(snapshot.schema_version).unwrap_or(i32::MAX))
                        .bind(snapshot.payload.as_str())
                        .bind(snapshot.taken_at)
                        .execute(c)
                        .await
                })
                .await?;
            Ok(())
        })
    }

    async fn load_snapshot(&self, stream: &StreamId) -> annals::Result<Option<Snapshot>> {
        let id = stream.as_str();
        let row: Option<(i64, i32, String, time::OffsetDateTime)> = self
            .inner
            .db
            .read("loading a snapshot", async |c| {
                sqlx::query_as(
                    "SELECT stream_version, schema_version, payload, taken_at \
                     FROM snapshots WHERE stream_id = $1",
                )
                .bind(id)
                .fetch_optional(c)
                .await
            })
            .await?;
        Ok(row.map(|(version, schema, payload, taken_at)| Snapshot {
            stream_id: stream.clone(),
            stream_version: u64::try_from(version).unwrap_or(0),
            schema_version: u32::try_from(schema).unwrap_or(0),
            payload: annals::Payload::from_stored(payload),
            taken_at,
        }))
    }
}
