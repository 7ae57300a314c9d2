//! One generation's worker: catch up in large batches, then follow the log live.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use annals::{EventStore, LogPosition, LogRead, RecordedEvent, StreamId, StreamRead, TraceContext};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, field::Empty};
use uuid::Uuid;

use crate::{
    DeadLetter, Durability, Error, EventFilter, Generation, GenerationWriter, LookupKeys,
    ProjectionConfig, ProjectionState, ProjectionStatus, ReadModel, Result, RunnerConfig,
    StopReason, WriteBatch,
    lease::LeaseGuard,
    runner::consumer::Consumer,
    runner::handler::{self, Failure},
    runner::progress::Progress,
};

/// What every worker of one projection shares.
pub(crate) struct Shared<P: Consumer, S> {
    pub(crate) projection: Arc<P>,
    pub(crate) model: Arc<P::Model>,
    pub(crate) store: S,
    pub(crate) config: Arc<ProjectionConfig>,
    pub(crate) runner: Arc<RunnerConfig>,
    pub(crate) status: watch::Sender<ProjectionStatus>,
}

impl<P: Consumer, S: Clone> Clone for Shared<P, S> {
    fn clone(&self) -> Self {
        Self {
            projection: self.projection.clone(),
            model: self.model.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            runner: self.runner.clone(),
            status: self.status.clone(),
        }
    }
}

impl<P: Consumer, S> Shared<P, S> {
    /// The state a build shows: rebuilding, or catching up for a consumer whose builds are
    /// only catch-ups (a reactor).
    pub(crate) fn building_state(&self) -> ProjectionState {
        if self.projection.builds_models() {
            ProjectionState::Rebuilding
        } else {
            ProjectionState::CatchingUp
        }
    }

    /// Runs `future` under the runner's I/O bound: a silent read model or store becomes a
    /// transient [`Error::IoTimeout`] instead of a wait without end.
    pub(crate) async fn bounded<T>(
        &self,
        what: &'static str,
        future: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.runner.io_timeout;
        match tokio::time::timeout(after, future).await {
            Ok(result) => result,
            Err(_) => Err(Error::IoTimeout {
                projection: self.projection.name().to_owned(),
                what,
                after,
            }),
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
        /// The head the status knew, and the events after `checkpoint` up to it.
        head: Option<LogPosition>,
        lag: u64,
        dead_letters: u64,
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

/// What to do with a dead letter of the serving generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LetterAction {
    /// Handle the parked event again, and remove the letter in the same write.
    Requeue,
    /// Remove the letter without handling the event.
    Skip,
}

/// A request to the serving worker, answered once its write is committed.
pub(crate) type LetterRequest = (Uuid, LetterAction, oneshot::Sender<Result<()>>);

/// The most lookup values a worker keeps between batches.
const LOOKUP_CACHE: usize = 1_000_000;

pub(crate) struct Worker<P: Consumer, S> {
    shared: Shared<P, S>,
    guard: LeaseGuard,
    generation: Generation,
    serving: bool,
    stop: watch::Receiver<bool>,
    letters: mpsc::Receiver<LetterRequest>,
    progress: Option<Progress>,
    read: u64,
    /// Lookup values as this worker last wrote or loaded them (this writer owns the
    /// generation, so nobody else changes them).
    lookups: HashMap<String, Option<String>>,
    /// True while `lookups` holds every lookup the generation has: the generation started
    /// empty under this worker and the cache was never cut. A key missing from it then has
    /// no value, and nothing needs loading (first builds and rebuilds load nothing).
    lookups_complete: bool,
    /// Writes not yet committed: their checkpoint and how many events of the status's lag
    /// they cover.
    uncommitted: Vec<(LogPosition, u64)>,
    dead_letters: u64,
    filter: EventFilter,
}

impl<P: Consumer, S: EventStore + Clone + 'static> Worker<P, S> {
    pub(crate) fn new(
        shared: Shared<P, S>,
        guard: LeaseGuard,
        generation: Generation,
        stop: watch::Receiver<bool>,
        letters: mpsc::Receiver<LetterRequest>,
    ) -> Self {
        let filter = shared.projection.filter();
        Self {
            shared,
            guard,
            generation,
            serving: false,
            stop,
            letters,
            progress: None,
            read: 0,
            lookups: HashMap::new(),
            lookups_complete: false,
            uncommitted: Vec::new(),
            dead_letters: 0,
            filter,
        }
    }

    /// Runs until stopped (returning the final checkpoint) or until an error.
    pub(crate) async fn run(mut self, role: Role) -> Result<Option<LogPosition>> {
        let shared = self.shared.clone();
        let mut writer = shared
            .bounded(
                "opening the read model's writer",
                shared.model.open_writer(self.generation, self.guard.fence),
            )
            .await?;
        let mut checkpoint = writer.checkpoint();
        // A generation that has processed nothing has no lookups either.
        self.lookups_complete = checkpoint.is_none();
        let head = shared
            .bounded("reading the log's head", async {
                Ok(shared.store.head_position().await?)
            })
            .await?;
        if checkpoint > head {
            // Built from a store that held more than this one: never resume past its end.
            return Err(Error::CheckpointBeyondHead {
                projection: shared.projection.name().to_owned(),
                checkpoint: checkpoint.unwrap_or_default(),
                head,
            });
        }
        self.dead_letters = shared
            .bounded("counting dead letters", writer.dead_letter_count())
            .await?;
        match &role {
            Role::Serve => {
                self.serving = true;
                let generation = self.generation;
                let lag = self.count(checkpoint, head).await?;
                let dead_letters = self.dead_letters;
                shared.status.send_modify(|s| {
                    s.generation = Some(generation);
                    s.serve(checkpoint, head, lag);
                    s.dead_letters = dead_letters;
                    if s.rebuild.is_none() {
                        s.state = ProjectionState::CatchingUp;
                    }
                });
            }
            Role::Build(_) => {
                let total = match head {
                    Some(head) => self.count(None, Some(head)).await?,
                    None => 0,
                };
                let mut progress = Progress::new(
                    shared.projection.name(),
                    self.generation,
                    total,
                    shared.config.progress,
                );
                self.read = match checkpoint {
                    Some(_) => total.saturating_sub(self.count(checkpoint, head).await?),
                    None => 0,
                };
                let snapshot = progress.advance(self.read);
                self.progress = Some(progress);
                shared.status.send_modify(|s| {
                    s.rebuild = Some(snapshot);
                    s.state = shared.building_state();
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            self.guard.check()?;
            let old = shared
                .bounded(
                    "switching generations",
                    shared.model.switch(self.generation, self.guard.fence),
                )
                .await?;
            if let Some(progress) = self.progress.take() {
                progress.finish();
            }
            // The supervisor publishes the switch in the status, then lets this worker serve.
            let head = shared.status.borrow().head.max(checkpoint);
            let lag = self.count(checkpoint, head).await?;
            let (ack, acked) = oneshot::channel();
            let done = BuildEvent::Switched {
                old,
                events: self.read,
                checkpoint,
                head,
                lag,
                dead_letters: self.dead_letters,
                ack,
            };
            events.send(done).await.map_err(|_| Error::Shutdown)?;
            acked.await.map_err(|_| Error::Shutdown)?;
            self.serving = true;
        }
        shared.status.send_modify(|s| {
            if s.rebuild.is_none() {
                s.state = ProjectionState::Running;
            }
        });
        self.live(&mut writer, checkpoint).await
    }

    /// The events after `after` up to `through`, counted by the store. The count is for
    /// the status only, so a failure does not stop the work: it shows as degraded, and the
    /// difference of sequence numbers stands in until the next measurement.
    async fn count(&self, after: Option<LogPosition>, through: Option<LogPosition>) -> Result<u64> {
        let Some(through) = through else {
            return Ok(0);
        };
        let store = &self.shared.store;
        let counted = self
            .shared
            .bounded("counting events", async {
                Ok(store
                    .count_events(after.unwrap_or(LogPosition::START), through)
                    .await?)
            })
            .await;
        Ok(match counted {
            Ok(n) => n,
            Err(e) => {
                let error = handler::error_chain(&e);
                tracing::warn!(
                    projection = self.shared.projection.name(),
                    error,
                    "counting events failed"
                );
                self.shared.status.send_modify(|s| s.degrade(error));
                through
                    .sequence
                    .saturating_sub(after.map_or(0, |a| a.sequence))
            }
        })
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
            let n = events.len() as u64;
            checkpoint = self
                .process(writer, events, checkpoint, Durability::Deferred)
                .await?;
            if let Some(progress) = &mut self.progress {
                self.read += n;
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
        let shared = self.shared.clone();
        let flushed = shared
            .bounded("flushing the read model", writer.flush())
            .await?;
        self.committed(flushed);
        Ok(checkpoint)
    }

    /// Follows the log live until asked to stop; answers dead-letter requests meanwhile.
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
        // Reset by every chunk: it fires only after `idle_check` without an event.
        let idle = self.shared.runner.idle_check;
        let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.stop.borrow() {
                return Ok(checkpoint);
            }
            tokio::select! {
                biased;
                _ = self.stop.changed() => return Ok(checkpoint),
                _ = idle_check.tick() => {
                    self.shared.bounded("checking the read model's target", writer.check()).await?;
                }
                Some((event_id, action, reply)) = self.letters.recv() => {
                    let outcome = self.letter(writer, checkpoint, event_id, action).await;
                    // A failed write leaves the writer in doubt: report it and restart.
                    let fatal = outcome.as_ref().is_err_and(|e| !matches!(e, Error::NoDeadLetter { .. } | Error::Stopped(_)));
                    let _ = reply.send(match &outcome {
                        Ok(()) => Ok(()),
                        Err(Error::NoDeadLetter { projection, event_id }) => Err(Error::NoDeadLetter { projection: projection.clone(), event_id: *event_id }),
                        Err(Error::Stopped(reason)) => Err(Error::Stopped(reason.clone())),
                        Err(e) => Err(Error::Corrupt { what: format!("dead-letter write failed: {}", handler::error_chain(e)) }),
                    });
                    if fatal {
                        return outcome.map(|()| checkpoint);
                    }
                }
                chunk = chunks.next() => {
                    let Some(chunk) = chunk else { return Err(Error::Shutdown) };
                    let events = chunk.into_iter().collect::<annals::Result<Vec<_>>>()?;
                    checkpoint = self.process(writer, events, checkpoint, Durability::Now).await?;
                    idle_check.reset();
                }
            }
        }
    }

    /// Requeues or skips one dead letter of the serving generation: one write that keeps the
    /// checkpoint where it is.
    async fn letter(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        checkpoint: Option<LogPosition>,
        event_id: Uuid,
        action: LetterAction,
    ) -> Result<()> {
        let shared = self.shared.clone();
        let name = shared.projection.name().to_owned();
        let missing = || Error::NoDeadLetter {
            projection: name.clone(),
            event_id,
        };
        let letters = shared
            .bounded("reading dead letters", shared.model.dead_letters())
            .await?;
        let letter = letters
            .into_iter()
            .find(|l| l.event_id == event_id)
            .ok_or_else(missing)?;
        let through = checkpoint.ok_or_else(missing)?;
        let mut batch = writer.batch();
        if action == LetterAction::Requeue {
            let event = self.parked_event(&letter).await?;
            self.load_lookups(writer, std::slice::from_ref(&event), &mut batch)
                .await?;
            if let Err(error) =
                handler::call_once(shared.projection.as_ref(), &event, &mut batch).await
            {
                return Err(Error::Stopped(Box::new(StopReason::new(
                    &name, &event, error,
                ))));
            }
        }
        batch.unpark(event_id);
        let changes = owned_changes(&batch);
        self.guard.check()?;
        let done = shared
            .bounded(
                "writing to the read model",
                writer.write(batch, through, Durability::Now),
            )
            .await?;
        self.remember(changes);
        self.committed(done);
        self.dead_letters = self.dead_letters.saturating_sub(1);
        let dead_letters = self.dead_letters;
        shared.status.send_modify(|s| s.dead_letters = dead_letters);
        tracing::info!(projection = name, %event_id, ?action, "dead letter handled");
        Ok(())
    }

    /// Reads a parked event back from its stream.
    async fn parked_event(&self, letter: &DeadLetter) -> Result<RecordedEvent> {
        let stream = StreamId::new(&letter.stream_id)?;
        let from = letter.stream_version.max(1);
        let read = StreamRead::forward_from(from).with_limit(if letter.stream_version == 0 {
            u64::MAX
        } else {
            1
        });
        let store = &self.shared.store;
        let mut events = store.read_stream(&stream, read);
        while let Some(event) = events.next().await {
            let event = event?;
            if event.event_id == letter.event_id {
                return Ok(event);
            }
        }
        Err(Error::Corrupt {
            what: format!(
                "dead letter of event {} names {} version {}, which does not hold it",
                letter.event_id, letter.stream_id, letter.stream_version
            ),
        })
    }

    /// Loads the lookups the projection declares for `events` into `batch`: from this
    /// worker's cache, the rest in one call to the writer.
    async fn load_lookups(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        events: &[RecordedEvent],
        batch: &mut <P::Model as ReadModel>::Batch,
    ) -> Result<()> {
        let mut keys = LookupKeys::default();
        let mut missing = Vec::new();
        for event in events.iter().filter(|e| self.filter.wants(e)) {
            keys.clear();
            self.shared.projection.lookups(event, &mut keys);
            for key in keys.drain() {
                if batch.lookups().has(&key) {
                    continue;
                }
                match self.lookups.get(&key) {
                    Some(value) => batch.lookups_mut().load(key, value.clone()),
                    None if self.lookups_complete => batch.lookups_mut().load(key, None),
                    None => {
                        batch.lookups_mut().load(key.clone(), None);
                        missing.push(key);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let values = shared
            .bounded("loading lookups", writer.load_lookups(&missing))
            .await?;
        if values.len() != missing.len() {
            return Err(Error::Corrupt {
                what: format!(
                    "the read model returned {} lookups for {} keys",
                    values.len(),
                    missing.len()
                ),
            });
        }
        if self.lookups.len() + missing.len() > LOOKUP_CACHE {
            self.lookups.clear();
            self.lookups_complete = false;
        }
        let lookups = batch.lookups_mut();
        for (key, value) in missing.into_iter().zip(values) {
            self.lookups.insert(key.clone(), value.clone());
            lookups.replace_loaded(key, value);
        }
        Ok(())
    }

    /// Takes what a committed (or deferred) write set into the cache.
    fn remember(&mut self, changes: Vec<(String, Option<String>)>) {
        if self.lookups.len() + changes.len() > LOOKUP_CACHE {
            self.lookups.clear();
            self.lookups_complete = false;
        }
        self.lookups.extend(changes);
    }

    /// Hands a run of events to the projection and writes the batch with its checkpoint,
    /// within the batch's span (see [`batch_span`]).
    async fn process(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        events: Vec<RecordedEvent>,
        from: Option<LogPosition>,
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let span = batch_span(self.shared.projection.name(), self.generation, &events);
        self.process_batch(writer, events, from, durability)
            .instrument(span)
            .await
    }

    /// [`process`](Self::process) within the batch's span.
    async fn process_batch(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        events: Vec<RecordedEvent>,
        from: Option<LogPosition>,
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let shared = self.shared.clone();
        if shared.config.concurrency > 1 && shared.projection.detached() {
            return self
                .process_concurrently(writer, events, from, durability)
                .await;
        }
        let mut batch = writer.batch();
        self.load_lookups(writer, &events, &mut batch).await?;
        let mut through = None;
        let mut parked = 0u64;
        let mut handled = 0u64;
        for event in &events {
            if self.filter.wants(event) {
                match handler::call(&shared, event, &mut batch).await {
                    Ok(()) => {}
                    Err(Failure::Park(error, attempts)) => {
                        let name = shared.projection.name();
                        tracing::warn!(projection = name, position = %event.position, event_id = %event.event_id, event_type = %event.event_type, error, "event parked in the dead-letter list");
                        batch.park(DeadLetter::new(name, event, error, attempts));
                        parked += 1;
                    }
                    Err(Failure::Stop(error)) => {
                        let reason = StopReason::new(shared.projection.name(), event, error);
                        tracing::error!(%reason, "projection stopped");
                        self.guard.check()?;
                        if let Some(through) = through {
                            let changes = owned_changes(&batch);
                            self.pending(through, handled);
                            let done = shared
                                .bounded(
                                    "writing to the read model",
                                    writer.write(batch, through, Durability::Now),
                                )
                                .await?;
                            self.remember(changes);
                            self.dead_letters += parked + writer.take_parked();
                            self.committed(done);
                        }
                        let flushed = shared
                            .bounded("flushing the read model", writer.flush())
                            .await?;
                        self.committed(flushed);
                        return Err(Error::Stopped(Box::new(reason)));
                    }
                }
            }
            handled += 1;
            through = Some(event.position);
        }
        let Some(through) = through else {
            return Ok(from);
        };
        self.guard.check()?;
        let changes = owned_changes(&batch);
        self.pending(through, handled);
        let done = shared
            .bounded(
                "writing to the read model",
                writer.write(batch, through, durability),
            )
            .await?;
        self.remember(changes);
        self.dead_letters += parked + writer.take_parked();
        self.committed(done);
        Ok(Some(through))
    }

    /// [`process_batch`](Self::process_batch) for a consumer whose handler leaves the batch
    /// alone (a reactor): the events of different streams are handled at once, up to
    /// `ProjectionConfig::concurrency`, each stream's in log order. The checkpoint moves past
    /// an event only when every event before it was handled (or parked); events after a
    /// stop that were handled anyway are handled again later, which a reactor's idempotent
    /// commands make harmless.
    async fn process_concurrently(
        &mut self,
        writer: &mut <P::Model as ReadModel>::Writer,
        events: Vec<RecordedEvent>,
        from: Option<LogPosition>,
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let shared = self.shared.clone();
        // The wanted events, grouped by stream in log order.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_stream: HashMap<&str, usize> = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            if self.filter.wants(event) {
                let group = *by_stream
                    .entry(event.stream_id.as_str())
                    .or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                groups[group].push(i);
            }
        }
        let mut scratch: Vec<_> = groups.iter().map(|_| writer.batch()).collect();
        let mut waiting = groups.into_iter().zip(scratch.iter_mut());
        let mut running = futures::stream::FuturesUnordered::new();
        let mut outcomes = Vec::with_capacity(events.len());
        loop {
            while running.len() < shared.config.concurrency {
                let Some((group, batch)) = waiting.next() else {
                    break;
                };
                running.push(handle_stream(&shared, &events, group, batch));
            }
            match running.next().await {
                Some(out) => outcomes.extend(out),
                None => break,
            }
        }
        drop(running);
        drop(scratch);
        outcomes.sort_by_key(|(i, _)| *i);
        let mut batch = writer.batch();
        let mut parked = 0u64;
        let mut stop = None;
        for (i, outcome) in outcomes {
            let event = &events[i];
            match outcome {
                Ok(()) => {}
                Err(Failure::Park(error, attempts)) => {
                    let name = shared.projection.name();
                    tracing::warn!(projection = name, position = %event.position, event_id = %event.event_id, event_type = %event.event_type, error, "event parked in the dead-letter list");
                    batch.park(DeadLetter::new(name, event, error, attempts));
                    parked += 1;
                }
                Err(Failure::Stop(error)) => {
                    stop = Some((i, error));
                    break;
                }
            }
        }
        // Everything before the first stop is handled; the checkpoint goes that far.
        let handled = stop.as_ref().map_or(events.len(), |(i, _)| *i);
        let through = handled.checked_sub(1).map(|last| events[last].position);
        if let Some(through) = through {
            self.guard.check()?;
            let durability = if stop.is_some() {
                Durability::Now
            } else {
                durability
            };
            self.pending(through, handled as u64);
            let done = shared
                .bounded(
                    "writing to the read model",
                    writer.write(batch, through, durability),
                )
                .await?;
            self.dead_letters += parked + writer.take_parked();
            self.committed(done);
        }
        let Some((i, error)) = stop else {
            return Ok(through.or(from));
        };
        let reason = StopReason::new(shared.projection.name(), &events[i], error);
        tracing::error!(%reason, "projection stopped");
        let flushed = shared
            .bounded("flushing the read model", writer.flush())
            .await?;
        self.committed(flushed);
        Err(Error::Stopped(Box::new(reason)))
    }

    /// Notes a write through `through` covering `events` log events.
    fn pending(&mut self, through: LogPosition, events: u64) {
        self.uncommitted.push((through, events));
    }

    /// Publishes a committed checkpoint: the status's checkpoint, lag and dead letters.
    fn committed(&mut self, checkpoint: Option<LogPosition>) {
        let Some(checkpoint) = checkpoint else {
            return;
        };
        let mut written = 0u64;
        self.uncommitted.retain(|(through, n)| {
            if *through <= checkpoint {
                written += n;
                false
            } else {
                true
            }
        });
        if !self.serving {
            return;
        }
        let dead_letters = self.dead_letters;
        let building = self.shared.building_state();
        self.shared.status.send_modify(|s| {
            if matches!(s.state, ProjectionState::Retrying { .. }) {
                s.state = if s.rebuild.is_some() {
                    building
                } else {
                    ProjectionState::Running
                };
            }
            s.advance(Some(checkpoint), written);
            s.dead_letters = dead_letters;
        });
    }
}

/// Handles one stream's events of a batch in order, under the failure policy; stops at the
/// first event the policy stops at. Returns each handled event's index and outcome.
async fn handle_stream<P: Consumer, S>(
    shared: &Shared<P, S>,
    events: &[RecordedEvent],
    group: Vec<usize>,
    batch: &mut <P::Model as ReadModel>::Batch,
) -> Vec<(usize, std::result::Result<(), Failure>)> {
    let mut out = Vec::with_capacity(group.len());
    for i in group {
        let outcome = handler::call(shared, &events[i], batch).await;
        let stop = matches!(outcome, Err(Failure::Stop(_)));
        out.push((i, outcome));
        if stop {
            break;
        }
    }
    out
}

/// Most trace contexts a batch's span is linked to (OpenTelemetry span links).
const MAX_BATCH_LINKS: usize = 32;

/// The span of one batch (`annals.projection.batch`, at debug): the projection, generation,
/// number of events and their positions. When the batch's traced events all belong to one
/// trace (a live batch of one command's events), the span continues it: its parent is the
/// first one's context. Otherwise it is linked to (up to [`MAX_BATCH_LINKS`] of) their
/// contexts, with the `opentelemetry` feature. Nothing is looked at when the span is off.
fn batch_span(projection: &str, generation: Generation, events: &[RecordedEvent]) -> tracing::Span {
    let span = tracing::debug_span!(
        "annals.projection.batch",
        projection,
        generation = generation.0,
        events = events.len(),
        first = events.first().map(|e| tracing::field::display(e.position)),
        position = events.last().map(|e| tracing::field::display(e.position)),
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let mut traces = events.iter().filter_map(|e| e.metadata.trace.as_ref());
    let Some(first) = traces.next() else {
        return span;
    };
    if traces.clone().all(|t| t.trace_id() == first.trace_id()) {
        TraceContext::for_span(&span, Some(first));
    } else {
        let mut linked: Vec<&TraceContext> = vec![first];
        for trace in traces {
            if linked.len() >= MAX_BATCH_LINKS {
                break;
            }
            if !linked.iter().any(|l| l.trace_id() == trace.trace_id()) {
                linked.push(trace);
            }
        }
        for trace in linked {
            trace.link(&span);
        }
    }
    span
}

/// The lookup writes of a batch, owned (the batch itself goes to the writer).
fn owned_changes<B: WriteBatch>(batch: &B) -> Vec<(String, Option<String>)> {
    batch
        .lookups()
        .changes()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
        .collect()
}
