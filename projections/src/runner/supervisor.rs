//! One projection's task: hold its lease, run its workers, retry, rebuild, hand over.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use annals::{EventStore, LogPosition};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
};

use uuid::Uuid;

use crate::{
    Error, Fence, Generation, LeaseStore, ProjectionState, ReadModel, RebuildProgress,
    RebuildReport, Result, RunnerConfig, StoreChange,
    lease::LeaseGuard,
    runner::consumer::Consumer,
    runner::worker::{BuildEvent, LetterAction, LetterRequest, Role, Shared, Worker},
};

/// Requests from the runner's handle to a projection's task.
#[derive(Debug)]
pub(crate) enum Command {
    Rebuild(oneshot::Sender<Result<RebuildReport>>),
    /// Start again after a stop; answered once the state no longer says stopped.
    Restart(oneshot::Sender<()>),
    Letter(Uuid, LetterAction, oneshot::Sender<Result<()>>),
    Shutdown,
}

/// What the supervisor does after its workers end.
enum Flow {
    /// Shut down.
    Shutdown,
    /// Start them again now (the read model was reset).
    Again,
}

/// The serving worker: its generation, its stop switch, where to send letter requests.
struct Serving {
    generation: Generation,
    stop: watch::Sender<bool>,
    letters: mpsc::Sender<LetterRequest>,
}

pub(crate) struct Supervisor<P: Consumer, S> {
    pub(crate) shared: Shared<P, S>,
    pub(crate) leases: Arc<dyn LeaseStore>,
    pub(crate) runner: Arc<RunnerConfig>,
    pub(crate) owner: Arc<str>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) waiters: Vec<oneshot::Sender<Result<RebuildReport>>>,
    pub(crate) rebuild_requested: bool,
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<P: Consumer, S: EventStore + Clone + 'static> Supervisor<P, S> {
    fn name(&self) -> &str {
        self.shared.projection.name()
    }

    fn set_state(&self, state: ProjectionState) {
        self.shared.status.send_modify(|s| s.state = state);
    }

    fn fail_waiters(&mut self, error: impl Fn() -> Error) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Err(error()));
        }
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            let Some((fence, acquired_at)) = self.acquire().await else {
                break;
            };
            let name = self.name().to_owned();
            let ttl = self.runner.lease_ttl;
            let guard = LeaseGuard::new(&name, fence, acquired_at, ttl);
            let (lost_tx, lost_rx) = watch::channel(false);
            let renewal = AbortOnDrop(tokio::spawn(crate::lease::renew(
                self.leases.clone(),
                name.clone(),
                self.owner.clone(),
                guard.clone(),
                ttl,
                lost_tx,
            )));
            tracing::info!(projection = name, fence, "ownership acquired");
            let before = self.shared.status.borrow().checkpoint;
            let outcome = self.owned(&guard, lost_rx).await;
            let progressed = self.shared.status.borrow().checkpoint > before;
            drop(renewal);
            let released = tokio::time::timeout(
                self.runner.io_timeout,
                self.leases.release(&name, &self.owner, fence),
            )
            .await;
            match released {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(projection = name, error = %e, "releasing the lease failed")
                }
                Err(_) => tracing::warn!(
                    projection = name,
                    "releasing the lease got no answer; it expires by itself"
                ),
            }
            match outcome {
                Ok(Flow::Shutdown) => break,
                Ok(Flow::Again) => attempt = 0,
                Err(Error::Stopped(reason)) => {
                    self.fail_waiters(|| Error::Stopped(reason.clone()));
                    self.set_state(ProjectionState::Stopped(reason));
                    if !self.wait_for_restart().await {
                        break;
                    }
                    attempt = 0;
                }
                Err(e) if e.is_ownership_lost() => {
                    tracing::warn!(projection = name, error = %e, "ownership lost");
                    attempt = 0;
                }
                Err(e) if e.is_transient() => {
                    // A run that moved the checkpoint ended a failure streak: the next
                    // outage starts from the shortest wait again.
                    if progressed {
                        attempt = 0;
                    }
                    let error = crate::runner::handler::error_chain(&e);
                    tracing::warn!(
                        projection = name,
                        attempt,
                        error,
                        "projection failed, retrying"
                    );
                    let delay = self.runner.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    self.set_state(ProjectionState::Retrying { attempt, error });
                    if !self.pause(delay).await {
                        break;
                    }
                }
                Err(e) => {
                    let error = crate::runner::handler::error_chain(&e);
                    tracing::error!(projection = name, error, "projection failed");
                    // Readers still see the generation they saw, but nothing of it can be
                    // vouched for: no checkpoint, and the lag is unknown.
                    self.shared.status.send_modify(|s| {
                        s.checkpoint = None;
                        s.lag = 0;
                    });
                    self.fail_waiters(|| Error::Failed {
                        projection: name.clone(),
                        error: error.clone(),
                    });
                    self.set_state(ProjectionState::Failed { error });
                    if !self.wait_for_restart().await {
                        break;
                    }
                    attempt = 0;
                }
            }
        }
        self.fail_waiters(|| Error::Shutdown);
        self.set_state(ProjectionState::ShutDown);
    }

    /// Takes the lease, polling while another runner holds it. `None` on shutdown.
    async fn acquire(&mut self) -> Option<(Fence, Instant)> {
        let mut failures = 0u32;
        loop {
            let sent = Instant::now();
            let name = self.shared.projection.name();
            let acquired = tokio::time::timeout(
                self.runner.io_timeout,
                self.leases
                    .try_acquire(name, &self.owner, self.runner.lease_ttl),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Error::IoTimeout {
                    projection: name.to_owned(),
                    what: "taking the lease",
                    after: self.runner.io_timeout,
                })
            });
            let delay = match acquired {
                Ok(Some(fence)) => return Some((fence, sent)),
                Ok(None) => {
                    self.set_state(ProjectionState::WaitingForLease);
                    self.runner.lease_poll
                }
                Err(e) => {
                    let error = crate::runner::handler::error_chain(&e);
                    failures = failures.saturating_add(1);
                    self.set_state(ProjectionState::Retrying {
                        attempt: failures,
                        error,
                    });
                    self.runner.backoff.delay(failures - 1)
                }
            };
            if !self.pause(delay).await {
                return None;
            }
        }
    }

    /// Waits `delay` while answering commands; `false` on shutdown.
    async fn pause(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv() => match command {
                    Some(Command::Rebuild(reply)) => {
                        self.waiters.push(reply);
                        self.rebuild_requested = true;
                    }
                    Some(Command::Restart(reply)) => {
                        let _ = reply.send(());
                    }
                    Some(Command::Letter(.., reply)) => {
                        let _ = reply.send(Err(Error::Shutdown));
                    }
                    Some(Command::Shutdown) | None => return false,
                },
            }
        }
    }

    /// After a stop: waits for a restart (`true`) or shutdown (`false`).
    async fn wait_for_restart(&mut self) -> bool {
        loop {
            match self.commands.recv().await {
                Some(Command::Restart(reply)) => {
                    // Waiters that look right after `restart` returns must not see the stop.
                    self.set_state(ProjectionState::Starting);
                    let _ = reply.send(());
                    return true;
                }
                Some(Command::Rebuild(reply)) => {
                    self.waiters.push(reply);
                    self.rebuild_requested = true;
                    return true;
                }
                Some(Command::Letter(.., reply)) => {
                    // Skipping the event a projection stopped at is a way out of the stop;
                    // the letter does not exist yet, so say so.
                    let _ = reply.send(Err(Error::Shutdown));
                }
                Some(Command::Shutdown) | None => return false,
            }
        }
    }

    /// Marks a build as under way in the status before its worker starts, so no reader of the
    /// status sees "caught up, no rebuild" while a pending generation is still to be built.
    fn announce_build(&self, generation: Generation) {
        let building = self.shared.building_state();
        self.shared.status.send_modify(|s| {
            if s.rebuild.is_none_or(|r| r.generation != generation) {
                s.rebuild = Some(RebuildProgress {
                    generation,
                    events_done: 0,
                    events_total: 0,
                    events_per_second: 0.0,
                    seconds_left: None,
                });
            }
            s.state = building;
        });
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<(Generation, Result<Option<LogPosition>>)>,
        guard: &LeaseGuard,
        generation: Generation,
        role: Role,
    ) -> Serving {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (letters_tx, letters_rx) = mpsc::channel(4);
        let worker = Worker::new(
            self.shared.clone(),
            guard.clone(),
            generation,
            stop_rx,
            letters_rx,
        );
        tasks.spawn(async move { (generation, worker.run(role).await) });
        Serving {
            generation,
            stop: stop_tx,
            letters: letters_tx,
        }
    }

    /// Claims the read model and checks that it was built from this store; resets it when
    /// it was not and the projection is configured to rebuild.
    async fn claim(&self, fence: Fence) -> Result<crate::Generations> {
        let shared = &self.shared;
        let store = shared
            .bounded("reading the store's id", async {
                Ok(shared.store.store_id().await?)
            })
            .await?;
        let generations = shared
            .bounded("claiming the read model", shared.model.claim(fence, store))
            .await?;
        match generations.store {
            Some(recorded) if recorded != store => {
                let mismatch = Error::StoreMismatch {
                    projection: self.name().to_owned(),
                    recorded,
                    actual: store,
                };
                self.reset_or_fail(fence, store, mismatch).await
            }
            _ => Ok(generations),
        }
    }

    /// Under [`StoreChange::Rebuild`], deletes every generation so a first build starts;
    /// otherwise fails with `error`.
    async fn reset_or_fail(
        &self,
        fence: Fence,
        store: Uuid,
        error: Error,
    ) -> Result<crate::Generations> {
        if self.shared.config.on_store_change != StoreChange::Rebuild {
            return Err(error);
        }
        tracing::warn!(projection = self.name(), error = %error, "the read model belongs to another store; rebuilding it");
        let shared = &self.shared;
        shared
            .bounded("resetting the read model", shared.model.reset(fence, store))
            .await?;
        shared.status.send_modify(|s| {
            s.checkpoint = None;
            s.generation = None;
            s.dead_letters = 0;
        });
        shared
            .bounded("claiming the read model", shared.model.claim(fence, store))
            .await
    }

    /// Runs the workers while the lease is held, until shutdown or until they must start
    /// again (after a reset).
    async fn owned(&mut self, guard: &LeaseGuard, mut lost: watch::Receiver<bool>) -> Result<Flow> {
        let model = self.shared.model.clone();
        let fence = guard.fence;
        let generations = self.claim(fence).await?;
        let _measure = AbortOnDrop(tokio::spawn(measure(self.shared.clone())));
        if let Some(retired) = generations.retired {
            model.drop_generation(retired).await?;
        }
        let mut tasks = JoinSet::new();
        let mut retiring = JoinSet::new();
        let (build_tx, mut build_rx) = mpsc::channel(4);
        let mut serving: Option<Serving> = None;
        let mut building: Option<(Serving, Instant)> = None;
        let mut handover: Option<oneshot::Sender<Option<LogPosition>>> = None;
        let build = match generations.building {
            Some(generation) => Some(generation),
            None if generations.current.is_none() || self.rebuild_requested => {
                Some(model.begin_build(fence).await?)
            }
            None => None,
        };
        // Announced before any worker runs, so the serving worker's first report never
        // reads as "caught up, no rebuild" while a build is pending.
        match build {
            Some(generation) => self.announce_build(generation),
            None => self.shared.status.send_modify(|s| s.rebuild = None),
        }
        // Readers see `current` from now on, whether or not its worker gets going.
        self.shared
            .status
            .send_modify(|s| s.generation = generations.current);
        if let Some(current) = generations.current {
            serving = Some(self.spawn(&mut tasks, guard, current, Role::Serve));
        }
        if let Some(generation) = build {
            let worker = self.spawn(&mut tasks, guard, generation, Role::Build(build_tx.clone()));
            building = Some((worker, Instant::now()));
        }
        self.rebuild_requested = false;
        loop {
            tokio::select! {
                Some(joined) = tasks.join_next() => {
                    let (generation, result) = joined.map_err(|e| Error::WorkerPanicked {
                        projection: self.name().to_owned(),
                        message: e.to_string(),
                    })?;
                    let serving_failed = serving.as_ref().is_some_and(|s| s.generation == generation);
                    let checkpoint = match result {
                        Err(e) if e.is_store_mismatch() => {
                            // Found by a worker (a checkpoint beyond the store's head):
                            // reset or fail as configured, then start again.
                            let store = self.shared.store.store_id().await?;
                            self.reset_or_fail(fence, store, e).await?;
                            return Ok(Flow::Again);
                        }
                        Err(e) if serving_failed
                            && building.is_some()
                            && !e.is_transient()
                            && !e.is_ownership_lost()
                            && !matches!(e, Error::Stopped(_)) =>
                        {
                            // The serving generation is broken (a corrupt index, say) while a
                            // build is under way: that build is the repair. Let it finish and
                            // switch in without a generation to hand over from.
                            let error = crate::runner::handler::error_chain(&e);
                            tracing::error!(projection = self.name(), generation = generation.0, error, "the serving generation failed; the build under way replaces it");
                            self.shared.status.send_modify(|s| s.degrade(format!("the serving {generation} failed: {error}")));
                            serving = None;
                            if let Some(reply) = handover.take() {
                                let _ = reply.send(None);
                            }
                            continue;
                        }
                        other => other?,
                    };
                    match handover.take() {
                        Some(reply) if serving.as_ref().is_some_and(|s| s.generation == generation) => {
                            serving = None;
                            let _ = reply.send(checkpoint);
                        }
                        _ => return Err(Error::Shutdown),
                    }
                }
                Some(event) = build_rx.recv() => match event {
                    BuildEvent::CaughtUp(reply) => match &serving {
                        Some(worker) => {
                            let _ = worker.stop.send(true);
                            handover = Some(reply);
                        }
                        None => {
                            let _ = reply.send(None);
                        }
                    },
                    BuildEvent::Switched { old, events, checkpoint, head, lag, dead_letters, ack } => {
                        if let Some((worker, started)) = building.take() {
                            let generation = worker.generation;
                            self.shared.status.send_modify(|s| {
                                s.generation = Some(generation);
                                s.serve(checkpoint, head, lag);
                                s.dead_letters = dead_letters;
                                s.rebuild = None;
                            });
                            let _ = ack.send(());
                            let report = RebuildReport { generation, events, elapsed: started.elapsed() };
                            for waiter in self.waiters.drain(..) {
                                let _ = waiter.send(Ok(report));
                            }
                            serving = Some(worker);
                        }
                        if let Some(old) = old {
                            // Dropped after a grace period, in the background; a crash before
                            // that leaves it `retired`, and the next owner drops it.
                            let model = model.clone();
                            let grace = self.runner.retire_grace;
                            let name = self.name().to_owned();
                            retiring.spawn(async move {
                                tokio::time::sleep(grace).await;
                                if let Err(e) = model.drop_generation(old).await {
                                    tracing::warn!(projection = name, generation = old.0, error = %e, "dropping a retired generation failed");
                                }
                            });
                        }
                    }
                },
                command = self.commands.recv() => match command {
                    Some(Command::Rebuild(reply)) => {
                        self.waiters.push(reply);
                        if building.is_none() {
                            let generation = model.begin_build(fence).await?;
                            self.announce_build(generation);
                            let worker = self.spawn(&mut tasks, guard, generation, Role::Build(build_tx.clone()));
                            building = Some((worker, Instant::now()));
                        }
                    }
                    Some(Command::Restart(reply)) => {
                        let _ = reply.send(());
                    }
                    Some(Command::Letter(event_id, action, reply)) => match &serving {
                        Some(worker) if handover.is_none() => {
                            if let Err(mpsc::error::TrySendError::Full((.., reply)) | mpsc::error::TrySendError::Closed((.., reply))) = worker.letters.try_send((event_id, action, reply)) {
                                let _ = reply.send(Err(Error::Shutdown));
                            }
                        }
                        _ => {
                            let _ = reply.send(Err(Error::Shutdown));
                        }
                    },
                    Some(Command::Shutdown) | None => {
                        if let Some(worker) = &serving {
                            let _ = worker.stop.send(true);
                        }
                        if let Some((worker, _)) = &building {
                            let _ = worker.stop.send(true);
                        }
                        drop(handover.take());
                        let deadline = tokio::time::sleep(self.runner.shutdown_grace);
                        tokio::pin!(deadline);
                        loop {
                            tokio::select! {
                                joined = tasks.join_next() => if joined.is_none() { break },
                                () = &mut deadline => break,
                            }
                        }
                        return Ok(Flow::Shutdown);
                    }
                },
                () = async { drop(lost.wait_for(|lost| *lost).await) } => {
                    return Err(Error::LeaseLost { projection: self.name().to_owned() });
                }
            }
        }
    }
}

/// Measures the status against the store every
/// [`RunnerConfig::status_interval`](crate::RunnerConfig::status_interval): the head, the
/// exact lag, what holds the log back; an unreachable or silent store shows as degraded
/// within one I/O bound.
async fn measure<P: Consumer, S: EventStore + Clone + 'static>(shared: Shared<P, S>) {
    loop {
        tokio::time::sleep(shared.runner.status_interval).await;
        let store = &shared.store;
        // What holds the log back first: reading the head may itself wait for a while
        // behind the very transaction that holds it.
        let hold = shared
            .bounded("asking the store what holds the log", async {
                Ok(store.log_hold().await?)
            })
            .await;
        let hold = match hold {
            Ok(hold) => {
                shared.status.send_modify(|s| s.held_by = hold.clone());
                hold
            }
            Err(e) => {
                degrade(&shared, &e);
                continue;
            }
        };
        let checkpoint = shared.status.borrow().checkpoint;
        let measured = shared
            .bounded("measuring the lag", async {
                Ok(crate::runner::inspect::head_and_lag(store, checkpoint).await?)
            })
            .await;
        match measured {
            Ok((head, lag)) => shared
                .status
                .send_modify(|s| s.measured(checkpoint, head, lag, hold)),
            Err(e) => degrade(&shared, &e),
        }
    }
}

fn degrade<P: Consumer, S>(shared: &Shared<P, S>, e: &Error) {
    let error = crate::runner::handler::error_chain(e);
    tracing::warn!(
        projection = shared.projection.name(),
        error,
        "measuring the status failed"
    );
    shared.status.send_modify(|s| s.degrade(error));
}
