//! The read side of one `ledger` process: a `ProjectionRunner` over the store, started at the
//! first query (a write never needs a read model), with only the projections the commands
//! ask for. Each query first brings its projection up to the store's head
//! (`wait_for_within` the head: read-your-writes across processes), then reads.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use annals::{EventStore, LogPosition};
use annals_brokers::NatsPublisher;
use annals_projections::{
    Backoff, EventFilter, FailurePolicy, Generation, MemoryReadModel, ProgressDisplay,
    ProjectionConfig, ProjectionRunner, ProjectionState, ProjectionStatus, RebuildReport,
    RedisConnection, RedisReadModel, RunnerConfig, StoreChange, TantivyReadModel,
};
use indicatif::{ProgressBar, ProgressStyle};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::domain::{Account, Ledger, PAYOUTS, Payouts, SimulatedBank, bank_dependency};
use crate::projections::{
    AccountDoc, BALANCES, Balances, Fields, Filter, Hit, LedgerLeases, MemoryBalances, ReadError,
    RedisBalances, SEARCH, SearchProjection, open_index, search,
};

/// How long a query waits for its read model to reach the store's head (a first build of a
/// large store, a lease left by a process that died, a Redis outage being retried).
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the balances read model lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancesTarget {
    /// In this process, built by replay in each run (embedded mode).
    Memory,
    /// Redis (server mode).
    Redis {
        /// The server's URL.
        url: String,
        /// The key namespace (`--redis-prefix`).
        namespace: String,
    },
}

/// Where the read models live and who may write them.
#[derive(Debug, Clone)]
pub struct ReadConfig {
    /// The balances target.
    pub balances: BalancesTarget,
    /// The directory that holds the search index (in `<search_root>/search/`).
    pub search_root: PathBuf,
    /// The projection leases.
    pub leases: LedgerLeases,
}

enum BalancesModel {
    Memory(MemoryReadModel<AccountDoc>),
    Redis(RedisReadModel),
}

/// The runner and the read models a process has started.
pub(super) struct ReadSide<S> {
    store: S,
    config: ReadConfig,
    runner: OnceCell<ProjectionRunner<S>>,
    balances: OnceCell<BalancesModel>,
    search: OnceCell<(TantivyReadModel, Fields)>,
    reactors: OnceCell<()>,
    /// Whether the in-process balances have been reported as built.
    replayed: AtomicBool,
    /// How long the runner's leases outlive a killed process.
    lease_ttl: Duration,
}

impl<S> std::fmt::Debug for ReadSide<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSide")
            .field("config", &self.config)
            .field("started", &self.runner.initialized())
            .finish_non_exhaustive()
    }
}

/// What `ledger status` shows of one projection.
#[derive(Debug)]
pub(super) enum StatusLine {
    /// The runner's status.
    Status(Box<ProjectionStatus>, bool),
    /// The read model could not even be opened.
    Unavailable(&'static str, ReadError),
}

/// Connects to Redis, failing at once when it refuses (no retries while connecting) and
/// within 2 s when it does not answer.
async fn connect_redis(url: &str) -> Result<RedisConnection, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(0);
    let manager = ConnectionManager::new_with_config(client, config).await?;
    Ok(RedisConnection::from_manager(manager))
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://…@{host}"),
        _ => url.to_owned(),
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} events ({per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl<S: EventStore + Clone + 'static> ReadSide<S> {
    pub(super) fn new(store: S, config: ReadConfig) -> Self {
        Self {
            store,
            config,
            runner: OnceCell::new(),
            balances: OnceCell::new(),
            search: OnceCell::new(),
            reactors: OnceCell::new(),
            replayed: AtomicBool::new(false),
            lease_ttl: Duration::from_secs(5),
        }
    }

    pub(super) fn set_lease_ttl(&mut self, ttl: Duration) {
        self.lease_ttl = ttl;
    }

    async fn runner(&self) -> Result<&ProjectionRunner<S>, ReadError> {
        self.runner
            .get_or_try_init(|| async {
                self.config.leases.prepare().await?;
                Ok::<_, ReadError>(
                    ProjectionRunner::new(self.store.clone())
                        .with_leases(self.config.leases.clone())
                        .with_config(
                            RunnerConfig::new()
                                .with_lease_poll(Duration::from_millis(100))
                                .with_lease_ttl(self.lease_ttl),
                        ),
                )
            })
            .await
    }

    fn projection_config() -> ProjectionConfig {
        ProjectionConfig::new().with_progress(ProgressDisplay::Silent)
    }

    /// The balances read model, running in the runner.
    async fn balances_model(&self) -> Result<&BalancesModel, ReadError> {
        self.balances
            .get_or_try_init(|| async {
                match &self.config.balances {
                    BalancesTarget::Memory => {
                        let model = MemoryReadModel::new(BALANCES)?;
                        let runner = self.runner().await?;
                        runner.add(MemoryBalances, model.clone(), Self::projection_config())?;
                        Ok(BalancesModel::Memory(model))
                    }
                    BalancesTarget::Redis { url, namespace } => {
                        let connection =
                            connect_redis(url)
                                .await
                                .map_err(|source| ReadError::Unavailable {
                                    url: redact(url),
                                    source,
                                })?;
                        let model =
                            RedisReadModel::with_namespace(connection, namespace, BALANCES)?;
                        // Built from a replaced store (a dropped schema), it is rebuilt.
                        let config =
                            Self::projection_config().on_store_change(StoreChange::Rebuild);
                        self.runner()
                            .await?
                            .add(RedisBalances, model.clone(), config)?;
                        Ok(BalancesModel::Redis(model))
                    }
                }
            })
            .await
    }

    /// The search read model, running in the runner.
    async fn search_model(&self) -> Result<&(TantivyReadModel, Fields), ReadError> {
        self.search
            .get_or_try_init(|| async {
                let (model, fields) = open_index(&self.config.search_root)?;
                // The index outlives the process: built from a store that was replaced (a new
                // SQLite file), it is rebuilt from the new one rather than serve old events.
                let config = Self::projection_config().on_store_change(StoreChange::Rebuild);
                self.runner()
                    .await?
                    .add(SearchProjection::new(fields), model.clone(), config)?;
                Ok((model, fields))
            })
            .await
    }

    /// Starts the reactors (the payout saga's bank step) in this process's runner, their
    /// checkpoints kept beside the leases.
    async fn start_reactors(
        &self,
        ledger: &Ledger<S>,
        bank: SimulatedBank,
    ) -> Result<&ProjectionRunner<S>, ReadError> {
        let runner = self.runner().await?;
        self.reactors
            .get_or_try_init(|| async {
                // The bank's own guards retry a call; a step that still fails is retried
                // here with backoff, then parked (and shown in the status) rather than
                // holding up every payout behind it.
                let config = Self::projection_config().with_policy(FailurePolicy::Retry {
                    attempts: 5,
                    backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
                    then: Box::new(FailurePolicy::DeadLetter),
                });
                let payouts = Payouts::new(ledger.clone(), bank, bank_dependency());
                self.config
                    .leases
                    .add_reactor(runner, payouts, config)
                    .await?;
                Ok::<_, ReadError>(())
            })
            .await?;
        Ok(runner)
    }

    /// Works the reactors: with `once`, until they have handled the log up to its head as
    /// it is now; otherwise until Ctrl-C. Returns their statuses.
    ///
    /// # Errors
    /// Runner and store failures; a reactor that stops.
    pub(super) async fn work(
        &self,
        ledger: &Ledger<S>,
        bank: SimulatedBank,
        once: bool,
        publisher: Option<(String, NatsPublisher)>,
    ) -> Result<Vec<ProjectionStatus>, ReadError> {
        let runner = self.start_reactors(ledger, bank).await?;
        let mut names = vec![PAYOUTS.to_owned()];
        if let Some((name, publisher)) = publisher {
            // A message the broker refuses stops the publisher (the status says why) rather
            // than leave a gap in what the consumers see; outages are retried.
            let config = Self::projection_config().with_policy(FailurePolicy::Stop);
            self.config
                .leases
                .add_publisher(
                    runner,
                    &name,
                    EventFilter::aggregate::<Account>(),
                    publisher,
                    config,
                )
                .await?;
            names.push(name);
        }
        if once {
            runner.catch_up(QUERY_TIMEOUT).await?;
            // Reaching the head comes a moment before the state says "running".
            for name in &names {
                let mut status = runner.watch(name)?;
                let settled = status.wait_for(|s| {
                    !matches!(
                        s.state,
                        ProjectionState::Starting | ProjectionState::CatchingUp
                    )
                });
                let _ = tokio::time::timeout(Duration::from_secs(2), settled).await;
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        Ok(names.iter().filter_map(|n| runner.status(n)).collect())
    }

    /// Brings projection `name` up to the store's head as it is now; returns that head.
    async fn ready(&self, name: &'static str) -> Result<Option<LogPosition>, ReadError> {
        let runner = self.runner().await?;
        let head = self.store.head_position().await?;
        let waited = match head {
            Some(head) => runner.wait_for_within(name, head, QUERY_TIMEOUT).await,
            // An empty store: wait for the first (empty) build to switch in.
            None => runner.catch_up(QUERY_TIMEOUT).await.map(drop),
        };
        match waited {
            Ok(()) => Ok(head),
            // The projection failed (it says why); a rebuild may repair it.
            Err(annals_projections::Error::Failed { error, .. }) => Err(ReadError::NotServing {
                name,
                status: error,
            }),
            Err(annals_projections::Error::Shutdown) => Err(ReadError::NotServing {
                name,
                status: runner
                    .status(name)
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The balances read model, brought up to the store's head. The first time in a process,
    /// the in-process model is built by replaying the log, and says how long that took.
    async fn balances_ready(&self) -> Result<&BalancesModel, ReadError> {
        let model = self.balances_model().await?;
        let started = Instant::now();
        let head = self.ready(BALANCES).await?;
        if matches!(model, BalancesModel::Memory(_)) && !self.replayed.swap(true, Ordering::Relaxed)
        {
            let events = match head {
                Some(h) => self.store.count_events(LogPosition::START, h).await?,
                None => 0,
            };
            eprintln!(
                "(rebuilt the in-process read models by replaying {events} events in {} ms)",
                started.elapsed().as_millis()
            );
        }
        Ok(model)
    }

    /// The balances read model, up to date with the store.
    ///
    /// # Errors
    /// [`ReadError::Unavailable`] when Redis cannot be reached; runner and store failures.
    pub(super) async fn balances(&self) -> Result<Balances, ReadError> {
        let model = self.balances_ready().await?;
        let view = match model {
            BalancesModel::Memory(m) => m.view().map(Balances::Memory),
            BalancesModel::Redis(m) => m.view().await?.map(Balances::Redis),
        };
        view.ok_or(ReadError::NotBuilt(BALANCES))
    }

    /// Searches the index, up to date with the store.
    ///
    /// # Errors
    /// [`ReadError::Query`] for a bad query; runner, index and store failures.
    pub(super) async fn search(&self, query: &str, filter: &Filter) -> Result<Vec<Hit>, ReadError> {
        let (model, fields) = self.search_model().await?;
        self.ready(SEARCH).await?;
        let view = model
            .view()
            .map_err(ReadError::Index)?
            .ok_or(ReadError::NotBuilt(SEARCH))?;
        search(&view, fields, query, filter)
    }

    /// Rebuilds `name` blue/green with `ProjectionRunner::rebuild`, drawing its progress from
    /// the watched status. Returns the generation that served before, and the report.
    ///
    /// # Errors
    /// Runner and store failures.
    pub(super) async fn rebuild(
        &self,
        name: &'static str,
    ) -> Result<(Option<Generation>, RebuildReport), ReadError> {
        if name == BALANCES {
            self.balances_model().await?;
        } else {
            self.search_model().await?;
        }
        // Whatever serves now is replaced, even a generation that cannot be read any more.
        let _ = self.ready(name).await;
        let runner = self.runner().await?;
        let before = runner.status(name).and_then(|s| s.generation);
        let mut status = runner.watch(name)?;
        let bar = ProgressBar::new(0);
        bar.set_style(bar_style());
        bar.set_message(name);
        let drawn = bar.clone();
        let drawing = tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let rebuild = status.borrow_and_update().rebuild;
                if let Some(p) = rebuild {
                    drawn.set_length(p.events_total.max(p.events_done));
                    drawn.set_position(p.events_done);
                }
            }
        });
        let report = runner.rebuild(name).await;
        drawing.abort();
        bar.finish_and_clear();
        Ok((before, report?))
    }

    /// The store's head and each projection's status, once both have caught up with it (or
    /// failed trying: the status says why).
    ///
    /// # Errors
    /// Store failures.
    pub(super) async fn status(&self) -> Result<(Option<LogPosition>, Vec<StatusLine>), ReadError> {
        let head = self.store.head_position().await?;
        let mut lines = Vec::new();
        let mut running = Vec::new();
        match self.balances_model().await {
            Ok(_) => running.push(BALANCES),
            Err(e) => lines.push(StatusLine::Unavailable(BALANCES, e)),
        }
        match self.search_model().await {
            Ok(_) => running.push(SEARCH),
            Err(e) => lines.push(StatusLine::Unavailable(SEARCH, e)),
        }
        let runner = self.runner().await?;
        for name in &running {
            // A projection that cannot get there shows why in its status.
            let _ = match *name {
                BALANCES => self.balances_ready().await.map(drop),
                other => self.ready(other).await.map(drop),
            };
            // Reaching the head comes a moment before the state says "running".
            if let Ok(mut status) = runner.watch(name) {
                let settled = status.wait_for(|s| {
                    !matches!(
                        s.state,
                        ProjectionState::Starting | ProjectionState::CatchingUp
                    )
                });
                let _ = tokio::time::timeout(Duration::from_secs(2), settled).await;
            }
        }
        let in_process = self.config.balances == BalancesTarget::Memory;
        for name in running {
            if let Some(status) = runner.status(name) {
                let local = in_process && name == BALANCES;
                lines.push(StatusLine::Status(Box::new(status), local));
            }
        }
        lines.sort_by_key(|line| match line {
            StatusLine::Status(s, _) => s.name.clone(),
            StatusLine::Unavailable(name, _) => (*name).to_owned(),
        });
        Ok((head, lines))
    }

    /// Stops the runner cleanly: workers commit, leases are released.
    pub(super) async fn shutdown(self) {
        if let Some(runner) = self.runner.into_inner() {
            runner.shutdown().await;
        }
    }
}
