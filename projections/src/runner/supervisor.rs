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

use crate::{
    Error, Fence, Generation, LeaseStore, Projection, ProjectionState, ReadModel, RebuildProgress,
    RebuildReport, Result, RunnerConfig,
    lease::LeaseGuard,
    worker::{BuildEvent, Role, Shared, Worker},
};

/// Requests from the runner's handle to a projection's task.
#[derive(Debug)]
pub(crate) enum Command {
    Rebuild(oneshot::Sender<Result<RebuildReport>>),
    Restart,
    Shutdown,
}

pub(crate) struct Supervisor<P: Projection, S> {
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

impl<P: Projection, S: EventStore + Clone + 'static> Supervisor<P, S> {
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
            let started = Instant::now();
            let outcome = self.owned(&guard, lost_rx).await;
            drop(renewal);
            if let Err(e) = self.leases.release(&name, &self.owner, fence).await {
                tracing::warn!(projection = name, error = %e, "releasing the lease failed");
            }
            match outcome {
                Ok(()) => break,
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
                    if started.elapsed() > self.runner.backoff.max {
                        attempt = 0;
                    }
                    let error = crate::handler::error_chain(&e);
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
                    let error = crate::handler::error_chain(&e);
                    tracing::error!(projection = name, error, "projection failed");
                    self.fail_waiters(|| Error::Shutdown);
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
            let delay = match self
                .leases
                .try_acquire(name, &self.owner, self.runner.lease_ttl)
                .await
            {
                Ok(Some(fence)) => return Some((fence, sent)),
                Ok(None) => {
                    self.set_state(ProjectionState::WaitingForLease);
                    self.runner.lease_poll
                }
                Err(e) => {
                    let error = crate::handler::error_chain(&e);
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
                    Some(Command::Restart) => {}
                    Some(Command::Shutdown) | None => return false,
                },
            }
        }
    }

    /// After a stop: waits for a restart (`true`) or shutdown (`false`).
    async fn wait_for_restart(&mut self) -> bool {
        match self.commands.recv().await {
            Some(Command::Restart) => true,
            Some(Command::Rebuild(reply)) => {
                self.waiters.push(reply);
                self.rebuild_requested = true;
                true
            }
            Some(Command::Shutdown) | None => false,
        }
    }

    /// Marks a build as under way in the status before its worker starts, so no reader of the
    /// status sees "caught up, no rebuild" while a pending generation is still to be built.
    fn announce_build(&self, generation: Generation) {
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
            s.state = ProjectionState::Rebuilding;
        });
    }

    fn spawn(
        &self,
        tasks: &mut JoinSet<(Generation, Result<Option<LogPosition>>)>,
        guard: &LeaseGuard,
        generation: Generation,
        role: Role,
    ) -> watch::Sender<bool> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = Worker::new(self.shared.clone(), guard.clone(), generation, stop_rx);
        tasks.spawn(async move { (generation, worker.run(role).await) });
        stop_tx
    }

    /// Runs the workers while the lease is held. `Ok` on shutdown.
    async fn owned(&mut self, guard: &LeaseGuard, mut lost: watch::Receiver<bool>) -> Result<()> {
        let model = self.shared.model.clone();
        let fence = guard.fence;
        let generations = model.claim(fence).await?;
        if let Some(retired) = generations.retired {
            model.drop_generation(retired).await?;
        }
        let mut tasks = JoinSet::new();
        let mut retiring = JoinSet::new();
        let (build_tx, mut build_rx) = mpsc::channel(4);
        let mut serving: Option<(Generation, watch::Sender<bool>)> = None;
        let mut building: Option<(Generation, watch::Sender<bool>, Instant)> = None;
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
        if let Some(current) = generations.current {
            let stop = self.spawn(&mut tasks, guard, current, Role::Serve);
            serving = Some((current, stop));
        }
        if let Some(generation) = build {
            let stop = self.spawn(&mut tasks, guard, generation, Role::Build(build_tx.clone()));
            building = Some((generation, stop, Instant::now()));
        }
        self.rebuild_requested = false;
        loop {
            tokio::select! {
                Some(joined) = tasks.join_next() => {
                    let (generation, result) = joined.map_err(|e| Error::WorkerPanicked {
                        projection: self.name().to_owned(),
                        message: e.to_string(),
                    })?;
                    let checkpoint = result?;
                    match handover.take() {
                        Some(reply) if serving.as_ref().is_some_and(|(g, _)| *g == generation) => {
                            serving = None;
                            let _ = reply.send(checkpoint);
                        }
                        _ => return Err(Error::Shutdown),
                    }
                }
                Some(event) = build_rx.recv() => match event {
                    BuildEvent::CaughtUp(reply) => match &serving {
                        Some((_, stop)) => {
                            let _ = stop.send(true);
                            handover = Some(reply);
                        }
                        None => {
                            let _ = reply.send(None);
                        }
                    },
                    BuildEvent::Switched { old, events, checkpoint, ack } => {
                        if let Some((generation, stop, started)) = building.take() {
                            self.shared.status.send_modify(|s| {
                                s.generation = Some(generation);
                                s.set_checkpoint(checkpoint);
                                s.rebuild = None;
                            });
                            let _ = ack.send(());
                            let report = RebuildReport { generation, events, elapsed: started.elapsed() };
                            for waiter in self.waiters.drain(..) {
                                let _ = waiter.send(Ok(report));
                            }
                            serving = Some((generation, stop));
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
                            let stop = self.spawn(&mut tasks, guard, generation, Role::Build(build_tx.clone()));
                            building = Some((generation, stop, Instant::now()));
                        }
                    }
                    Some(Command::Restart) => {}
                    Some(Command::Shutdown) | None => {
                        for (_, stop) in serving.iter() {
                            let _ = stop.send(true);
                        }
                        if let Some((_, stop, _)) = &building {
                            let _ = stop.send(true);
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
                        return Ok(());
                    }
                },
                () = async { drop(lost.wait_for(|lost| *lost).await) } => {
                    return Err(Error::LeaseLost { projection: self.name().to_owned() });
                }
            }
        }
    }
}
