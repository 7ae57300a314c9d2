//! The runner: one task per projection, a handle to watch and steer them.
//!
//! The engine every log follower runs on: a supervisor per projection holds its lease and
//! restarts its workers (`supervisor.rs`), workers read the log and write batches with their
//! checkpoint (`worker.rs`), the handler runs under the failure policy (`handler.rs`).

pub(crate) mod config;
pub(crate) mod consumer;
pub(crate) mod handler;
pub(crate) mod inspect;
pub(crate) mod policy;
pub(crate) mod progress;
pub(crate) mod status;
pub(crate) mod supervisor;
pub(crate) mod worker;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use annals::{EventStore, LogPosition};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
};

use crate::{
    Error, InMemoryLeases, LeaseStore, Projection, ProjectionConfig, ProjectionState,
    ProjectionStatus, ReadModel, RebuildReport, Result, RunnerConfig,
    projection::check_name,
    runner::consumer::{Consumer, Projected},
    runner::supervisor::{Command, Supervisor},
    runner::worker::{LetterAction, Shared},
};

/// Runs projections: each in its own task, owning it through a lease, catching up, following
/// the log live, retrying transient failures, rebuilding on request.
///
/// Dropping the runner aborts every task at whatever point it is, exactly like a crash: the
/// read models stay consistent with their checkpoints, and the next runner resumes from them.
/// [`ProjectionRunner::shutdown`] stops cleanly instead.
#[derive(Debug)]
pub struct ProjectionRunner<S> {
    store: S,
    leases: Arc<dyn LeaseStore>,
    config: Arc<RunnerConfig>,
    owner: Arc<str>,
    handles: Mutex<BTreeMap<String, Handle>>,
    tasks: Mutex<JoinSet<()>>,
}

#[derive(Debug, Clone)]
struct Handle {
    status: watch::Receiver<ProjectionStatus>,
    commands: mpsc::Sender<Command>,
    /// False for consumers whose effects leave the read model (reactors): replaying them
    /// from the start is not a rebuild.
    rebuildable: bool,
    /// The outside dependencies it calls, for the status.
    dependencies: Vec<crate::resilience::Dependency>,
}

impl Handle {
    /// The status now, with the dependencies' guards as they are now.
    fn status(&self) -> ProjectionStatus {
        let mut status = self.status.borrow().clone();
        status.dependencies = self.dependencies.iter().map(|d| d.status()).collect();
        status
    }
}

impl<S: EventStore + Clone + 'static> ProjectionRunner<S> {
    /// A runner over `store` in single-process mode ([`InMemoryLeases`]).
    pub fn new(store: S) -> Self {
        Self {
            store,
            leases: Arc::new(InMemoryLeases::new()),
            config: Arc::new(RunnerConfig::default()),
            owner: uuid::Uuid::new_v4().to_string().into(),
            handles: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// Takes ownership leases from `leases` (`PgLeases` or `SqliteLeases` of `annals-projections-sql` to run several processes; share
    /// one `InMemoryLeases` between runners of one process). Call before adding projections.
    pub fn with_leases(mut self, leases: impl LeaseStore) -> Self {
        self.leases = Arc::new(leases);
        self
    }

    /// Uses `config`. Call before adding projections.
    pub fn with_config(mut self, config: RunnerConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// The id this runner uses as lease owner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Starts running `projection` into `model`. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::ModelMismatch`] when the model was opened for another
    /// projection, [`Error::DuplicateProjection`], [`Error::NoRuntime`] outside a runtime.
    pub fn add<P: Projection>(
        &self,
        projection: P,
        model: P::Model,
        config: ProjectionConfig,
    ) -> Result<()> {
        self.add_consumer(Projected(projection), model, config, true)
    }

    /// Starts any consumer of the engine (a projection, a reactor) into `model`.
    pub(crate) fn add_consumer<C: Consumer>(
        &self,
        consumer: C,
        model: C::Model,
        config: ProjectionConfig,
        rebuildable: bool,
    ) -> Result<()> {
        let name = consumer.name().to_owned();
        check_name(&name)?;
        let dependencies = consumer.dependencies();
        if model.projection() != name {
            return Err(Error::ModelMismatch {
                projection: name,
                model: model.projection().to_owned(),
            });
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if handles.contains_key(&name) {
            return Err(Error::DuplicateProjection { name });
        }
        let (status_tx, status_rx) = watch::channel(ProjectionStatus::new(&name));
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let supervisor = Supervisor {
            shared: Shared {
                projection: Arc::new(consumer),
                model: Arc::new(model),
                store: self.store.clone(),
                config: Arc::new(config),
                runner: self.config.clone(),
                status: status_tx,
            },
            leases: self.leases.clone(),
            runner: self.config.clone(),
            owner: self.owner.clone(),
            commands: commands_rx,
            waiters: Vec::new(),
            rebuild_requested: false,
        };
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn_on(supervisor.run(), &runtime);
        handles.insert(
            name,
            Handle {
                status: status_rx,
                commands: commands_tx,
                rebuildable,
                dependencies,
            },
        );
        Ok(())
    }

    /// Runs `task` beside the consumers: aborted when the runner is dropped, awaited by
    /// [`shutdown`](ProjectionRunner::shutdown) (so it must end once its consumer shuts down).
    pub(crate) fn spawn(
        &self,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn_on(task, &runtime);
        Ok(())
    }

    /// The store this runner follows.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn handle(&self, name: &str) -> Result<Handle> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownProjection {
                name: name.to_owned(),
            })
    }

    /// The status of one projection.
    pub fn status(&self, name: &str) -> Option<ProjectionStatus> {
        self.handle(name).ok().map(|h| h.status())
    }

    /// The status of every projection, by name.
    pub fn statuses(&self) -> Vec<ProjectionStatus> {
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.values().map(Handle::status).collect()
    }

    /// A receiver that sees every status change of one projection.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`].
    pub fn watch(&self, name: &str) -> Result<watch::Receiver<ProjectionStatus>> {
        Ok(self.handle(name)?.status)
    }

    /// Waits until the generation readers see has processed `position` (read your own
    /// writes: pass the `last_position` of an append).
    ///
    /// # Errors
    /// [`Error::Stopped`] when the projection stops at a failing event first,
    /// [`Error::Failed`] (with the reason) when it fails, [`Error::Shutdown`] when it shuts
    /// down, [`Error::UnknownProjection`].
    pub async fn wait_for(&self, name: &str, position: LogPosition) -> Result<()> {
        let mut status = self.handle(name)?.status;
        loop {
            {
                let s = status.borrow_and_update();
                if s.checkpoint >= Some(position) {
                    return Ok(());
                }
                if let Some(end) = ended(name, &s.state) {
                    return Err(end);
                }
            }
            status.changed().await.map_err(|_| Error::Shutdown)?;
        }
    }

    /// [`wait_for`](ProjectionRunner::wait_for) with a deadline.
    ///
    /// # Errors
    /// As [`ProjectionRunner::wait_for`], and [`Error::Timeout`] (naming what the
    /// projection was doing) when `timeout` passes first.
    pub async fn wait_for_within(
        &self,
        name: &str,
        position: LogPosition,
        timeout: std::time::Duration,
    ) -> Result<()> {
        match tokio::time::timeout(timeout, self.wait_for(name, position)).await {
            Ok(done) => done,
            Err(_) => Err(Error::Timeout {
                projection: name.to_owned(),
                position,
                waited: timeout,
                status: self
                    .status(name)
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
            }),
        }
    }

    /// Processes the log up to its head as it is now, in every projection, then returns
    /// their statuses: for command-line tools, batch jobs and tests, which then drop the
    /// runner or call [`shutdown`](ProjectionRunner::shutdown). Projections that already
    /// run keep running.
    ///
    /// # Errors
    /// The store's head cannot be read; as [`ProjectionRunner::wait_for_within`] for the
    /// first projection that does not get there within `timeout`.
    pub async fn catch_up(&self, timeout: std::time::Duration) -> Result<Vec<ProjectionStatus>> {
        let head = self.store.head_position().await?;
        let names: Vec<String> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        for name in &names {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match head {
                Some(head) => self.wait_for_within(name, head, left).await?,
                None => self.wait_until_built(name, left).await?,
            }
        }
        Ok(names.iter().filter_map(|n| self.status(n)).collect())
    }

    /// Waits until a projection serves a generation (its first build switched in).
    async fn wait_until_built(&self, name: &str, timeout: std::time::Duration) -> Result<()> {
        let mut status = self.handle(name)?.status;
        let wait = async {
            loop {
                {
                    let s = status.borrow_and_update();
                    if s.generation.is_some() && s.rebuild.is_none() {
                        return Ok(());
                    }
                    if let Some(end) = ended(name, &s.state) {
                        return Err(end);
                    }
                }
                status.changed().await.map_err(|_| Error::Shutdown)?;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(done) => done,
            Err(_) => Err(Error::Timeout {
                projection: name.to_owned(),
                position: LogPosition::START,
                waited: timeout,
                status: self
                    .status(name)
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
            }),
        }
    }

    /// Handles a parked event again (after a fix to the handler), and removes its dead
    /// letter in the same atomic write; the checkpoint does not move. The event is handled
    /// after the events that followed it in the log.
    ///
    /// # Errors
    /// [`Error::NoDeadLetter`]; [`Error::Stopped`] when the handler still fails (the letter
    /// stays); [`Error::Shutdown`] when the projection is not serving (stopped, failed,
    /// switching generations: try again).
    pub async fn requeue(&self, name: &str, event_id: uuid::Uuid) -> Result<()> {
        self.letter(name, event_id, LetterAction::Requeue).await
    }

    /// Removes a dead letter without handling its event.
    ///
    /// # Errors
    /// As [`ProjectionRunner::requeue`].
    pub async fn skip(&self, name: &str, event_id: uuid::Uuid) -> Result<()> {
        self.letter(name, event_id, LetterAction::Skip).await
    }

    async fn letter(&self, name: &str, event_id: uuid::Uuid, action: LetterAction) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(name, Command::Letter(event_id, action, tx))
            .await?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Waits until every projection has processed `position`.
    ///
    /// # Errors
    /// As [`ProjectionRunner::wait_for`], for the first projection that fails.
    pub async fn wait_for_all(&self, position: LogPosition) -> Result<()> {
        let names: Vec<String> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in names {
            self.wait_for(&name, position).await?;
        }
        Ok(())
    }

    /// Rebuilds a projection blue/green: builds a new generation from the start of the log
    /// while the current one keeps serving and following the log, switches readers over
    /// atomically once the new one has caught up, and drops the old one. Returns after the
    /// switch. A rebuild interrupted by a crash resumes where its last commit left it.
    ///
    /// # Errors
    /// [`Error::Stopped`] when the rebuild meets a failing event under
    /// [`FailurePolicy::Stop`](crate::FailurePolicy::Stop), [`Error::Shutdown`],
    /// [`Error::UnknownProjection`].
    pub async fn rebuild(&self, name: &str) -> Result<RebuildReport> {
        if !self.handle(name)?.rebuildable {
            return Err(Error::NotRebuildable {
                name: name.to_owned(),
            });
        }
        let (tx, rx) = oneshot::channel();
        self.send(name, Command::Rebuild(tx)).await?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Starts a stopped or failed projection again from its checkpoint (after a fix, or to
    /// try a failing event once more). Returns once the status no longer reports the stop, so
    /// a `wait_for` right after it waits for the new run.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`], [`Error::Shutdown`].
    pub async fn restart(&self, name: &str) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(name, Command::Restart(tx)).await?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    async fn send(&self, name: &str, command: Command) -> Result<()> {
        self.handle(name)?
            .commands
            .send(command)
            .await
            .map_err(|_| Error::Shutdown)
    }

    /// Stops every projection cleanly: workers commit what they hold, leases are released.
    pub async fn shutdown(self) {
        let handles: Vec<Handle> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for handle in handles {
            let _ = handle.commands.send(Command::Shutdown).await;
        }
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}

/// The error a waiter gets when a projection's state means it will not get further (stopped
/// at an event, failed, shut down); `None` while it may.
fn ended(name: &str, state: &ProjectionState) -> Option<Error> {
    match state {
        ProjectionState::Stopped(reason) => Some(Error::Stopped(reason.clone())),
        ProjectionState::Failed { error } => Some(Error::Failed {
            projection: name.to_owned(),
            error: error.clone(),
        }),
        ProjectionState::ShutDown => Some(Error::Shutdown),
        _ => None,
    }
}
