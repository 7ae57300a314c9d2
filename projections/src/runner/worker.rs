//! One generation's worker: catch up in large batches, then follow the log live.

use std::sync::Arc;

use annals::{EventStore, LogPosition, LogRead, RecordedEvent};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    DeadLetter, Durability, Error, Generation, GenerationWriter, Projection, ProjectionConfig,
    ProjectionState, ProjectionStatus, ReadModel, Result, StopReason, WriteBatch,
    handler::{self, Failure},
    lease::LeaseGuard,
    progress::Progress,
};

/// What every worker of one projection shares.
pub(crate) struct Shared<P: Projection, S> {
    pub(crate) projection: Arc<P>,
    pub(crate) model: Arc<P::Model>,
    pub(crate) store: S,
    pub(crate) config: Arc<ProjectionConfig>,
    pub(crate) status: watch::Sender<ProjectionStatus>,
}

impl<P: Projection, S: Clone> Clone for Shared<P, S> {
    fn clone(&self) -> Self {
        Self {
            projection: self.projection.clone(),
            model: self.model.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            status: self.status.clone(),
        }
    }
}

/// What a builder tells its supervisor.
#[derive(Debug)]
pub(crate) enum BuildEvent {
    /// Caught up with the log; send the serving worker's final checkpoint to finish.
    CaughtUp(oneshot::Sender<Option<LogPosition>>),
    /// Switched readers over; the builder serves once acknowledged. Carries the old
    /// generation.
    Switched {
        old: Option<Generation>,
        events: u64,
        checkpoint: Option<LogPosition>,
        ack: oneshot::Sender<()>,
    },
}

/// A worker's job.
pub(crate) enum Role {
    /// Keep the serving generation up to date.
    Serve,
    /// Build a new generation, hand over, then serve it.
    Build(mpsc::Sender<BuildEvent>),
}

pub(crate) struct Worker<P: Projection, S> {
    shared: Shared<P, S>,
    guard: LeaseGuard,
    generation: Generation,
    serving: bool,
    stop: watch::Receiver<bool>,
    progress: Option<Progress>,
    read: u64,
}

impl<P: Projection, S: EventStore + Clone + 'static> Worker<P, S> {
    pub(crate) fn new(
        shared: Shared<P, S>,
        guard: LeaseGuard,
        generation: Generation,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            guard,
            generation,
            serving: false,
            stop,
            progress: None,
            read: 0,
        }
    }

    /// Runs until stopped (returning the final checkpoint) or until an error.
    pub(crate) async fn run(mut self, role: Role) -> Result<Option<LogPosition>> {
        let mut writer = self
            .shared
            .model
            .open_writer(self.generation, self.guard.fence)
            .await?;
        let mut checkpoint = writer.checkpoint();
        let head = self.shared.store.head_position().await?;
        match &role {
            Role::Serve => {
                self.serving = true;
                let generation = self.generation;
                self.shared.status.send_modify(|s| {
                    s.generation = Some(generation);
                    s.set_checkpoint(checkpoint);
                    s.set_head(head);
                    if s.rebuild.is_none() {
                        s.state = ProjectionState::CatchingUp;
                    }
                });
            }
            Role::Build(_) => {
                let total = head.map_or(0, |h| h.sequence);
                let mut progress = Progress::new(
                    self.shared.projection.name(),
                    self.generation,
                    total,
                    self.shared.config.progress,
                );
                self.read = checkpoint.map_or(0, |c| c.sequence);
                let snapshot = progress.advance(self.read);
                self.progress = Some(progress);
                self.shared.status.send_modify(|s| {
                    s.rebuild = Some(snapshot);
                    s.set_head(head);
                    s.state = ProjectionState::Rebuilding;
                });
            }
        }
        checkpoint = self.catch_up(&mut writer, checkpoint).await?;
        if *self.stop.borrow() {
            return Ok(checkpoint);
        }
        if let Role::Build(events) = role {
            let (tx, rx) = oneshot::channel();
            events
                .send(BuildEvent::CaughtUp(tx))
                .await
                .map_err(|_| Error::Shutdown)?;
            let target = rx.await.map_err(|_| Error::Shutdown)?;
            while checkpoint < target {
                let before = checkpoint;
                checkpoint = self.catch_up(&mut writer, checkpoint).await?;
                if checkpoint == before {
                    // The target is at or before the head, so this cannot happen with a store
                    // that keeps its contract; wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            self.guard.check()?;
            let old = self
                .shared
                .model
                .switch(self.generation, self.guard.fence)
                .await?;
            if let Some(progress) = self.progress.take() {
                progress.finish();
            }
            // The supervisor publishes the switch in the status, then lets this worker serve.
            let (ack, acked) = oneshot::channel();
            let done = BuildEvent::Switched {
                old,
                events: self.read,
                checkpoint,
                ack,
            };
            events.send(done).await.map_err(|_| Error::Shutdown)?;
            acked.await.map_err(|_| Error::Shutdown)?;
            self.serving = true;
        }
        self.shared.status.send_modify(|s| {
            if s.rebuild.is_none() {
                s.state = ProjectionState::Running;
            }
        });
        self.live(&mut writer, checkpoint).await
    }

    /// Reads the log after `from` to its current end in large batches, commits deferred, and
    /// flushes at the end. Returns the checkpoint reached.
    async fn catch_up(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        from: Option<LogPosition>,
    ) -> Result<Option<LogPosition>> {
        let store = self.shared.store.clone();
        let read = LogRead::after(from.unwrap_or(LogPosition::START))
            .with_page_size(self.shared.config.page_size);
        let mut chunks = store
            .read_all(read)
            .ready_chunks(self.shared.config.batch_size);
        let mut checkpoint = from;
        while let Some(chunk) = chunks.next().await {
            let events = chunk.into_iter().collect::<annals::Result<Vec<_>>>()?;
            checkpoint = self
                .process(writer, events, checkpoint, Durability::Deferred)
                .await?;
            if let Some(progress) = &mut self.progress {
                self.read = checkpoint.map_or(0, |c| c.sequence);
                let snapshot = progress.advance(self.read);
                self.shared
                    .status
                    .send_modify(|s| s.rebuild = Some(snapshot));
            }
            if *self.stop.borrow() {
                break;
            }
        }
        self.guard.check()?;
        if let Some(committed) = writer.flush().await? {
            self.committed(Some(committed));
        }
        Ok(checkpoint)
    }

    /// Follows the log live until asked to stop.
    async fn live(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        from: Option<LogPosition>,
    ) -> Result<Option<LogPosition>> {
        let store = self.shared.store.clone();
        let mut chunks = store
            .subscribe(from.unwrap_or(LogPosition::START))
            .ready_chunks(self.shared.config.batch_size);
        let mut checkpoint = from;
        loop {
            if *self.stop.borrow() {
                return Ok(checkpoint);
            }
            tokio::select! {
                biased;
                _ = self.stop.changed() => return Ok(checkpoint),
                chunk = chunks.next() => {
                    let Some(chunk) = chunk else { return Err(Error::Shutdown) };
                    let events = chunk.into_iter().collect::<annals::Result<Vec<_>>>()?;
                    checkpoint = self.process(writer, events, checkpoint, Durability::Now).await?;
                }
            }
        }
    }

    /// Hands a run of events to the projection and writes the batch with its checkpoint.
    async fn process(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        events: Vec<RecordedEvent>,
        from: Option<LogPosition>,
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let filter = self.shared.projection.filter();
        let mut batch = writer.batch();
        let mut through = None;
        let mut parked = 0u64;
        let head = events.last().map(|e| e.position);
        for event in &events {
            if filter.wants(event.event_type.as_str()) {
                match handler::call(&self.shared, event, &mut batch).await {
                    Ok(()) => {}
                    Err(Failure::Park(error, attempts)) => {
                        let name = self.shared.projection.name();
                        tracing::warn!(projection = name, position = %event.position, event_id = %event.event_id, event_type = %event.event_type, error, "event parked in the dead-letter list");
                        batch.park(DeadLetter::new(name, event, error, attempts));
                        parked += 1;
                    }
                    Err(Failure::Stop(error)) => {
                        let reason = StopReason::new(self.shared.projection.name(), event, error);
                        tracing::error!(%reason, "projection stopped");
                        self.guard.check()?;
                        if let Some(through) = through {
                            let done = writer.write(batch, through, Durability::Now).await?;
                            self.committed(done);
                        }
                        let flushed = writer.flush().await?;
                        self.committed(flushed);
                        return Err(Error::Stopped(Box::new(reason)));
                    }
                }
            }
            through = Some(event.position);
        }
        let Some(through) = through else {
            return Ok(from);
        };
        self.guard.check()?;
        let done = writer.write(batch, through, durability).await?;
        self.committed(done);
        if self.serving {
            self.shared.status.send_modify(|s| {
                s.dead_letters += parked;
                s.set_head(head);
            });
        }
        Ok(Some(through))
    }

    fn committed(&self, checkpoint: Option<LogPosition>) {
        if !self.serving || checkpoint.is_none() {
            return;
        }
        self.shared.status.send_modify(|s| {
            if matches!(s.state, ProjectionState::Retrying { .. }) {
                s.state = if s.rebuild.is_some() {
                    ProjectionState::Rebuilding
                } else {
                    ProjectionState::Running
                };
            }
            if checkpoint > s.checkpoint {
                s.set_checkpoint(checkpoint);
            }
        });
    }
}
