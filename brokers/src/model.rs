//! The publisher's read model: any read model kept for its checkpoint, fence and
//! generations, with a broker in front of its writes.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use annals::LogPosition;
use annals_projections::{
    DeadLetter, Durability, Error, FailurePolicy, Fence, Generation, GenerationWriter, Generations,
    Lookups, ReadModel, Result, StopReason, WriteBatch,
};
use time::OffsetDateTime;
use uuid::Uuid;

use tracing::Instrument;

use crate::{Broker, Message, Published};

/// A publisher's read model: the messages of a batch go to the broker `B`, and the batch's
/// checkpoint into the read model `C`, only once the broker has confirmed every message.
///
/// `C` is any read model, used for its checkpoint, fence, generations and dead letters (it
/// holds no data of the publisher's own): a [`MemoryReadModel`] in tests, or a durable one
/// (`SqliteTables` or `PgTables` of `annals-projections-sql` with an empty `SqlSchema`, a
/// `RedisReadModel`) so that a restarted process resumes where the last confirmed batch
/// ended instead of publishing the log again.
///
/// A message the broker refuses (unroutable, negatively acknowledged, rejected by the
/// stream) follows the refusal policy ([`BrokerModel::with_refusal_policy`];
/// [`Publisher::add_to`](crate::Publisher::add_to) sets the projection's own failure
/// policy): [`FailurePolicy::Stop`] stops the publisher at the event (the status names it,
/// the checkpoint stays before the batch); [`FailurePolicy::DeadLetter`] parks it in `C`'s
/// dead-letter list in the write that moves the checkpoint past it;
/// [`FailurePolicy::Retry`] publishes the batch again, after the runner's backoff, until
/// the event has been refused `attempts` times, then applies `then`. A broker that cannot be
/// reached fails the write as a transient error: the runner retries it with backoff, and
/// the status shows `Retrying` with the broker's error until it is back.
///
/// [`MemoryReadModel`]: annals_projections::MemoryReadModel
pub struct BrokerModel<B: Broker, C> {
    inner: C,
    shared: Arc<Shared<B>>,
}

impl<B: Broker, C: Clone> Clone for BrokerModel<B, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<B: Broker, C: fmt::Debug> fmt::Debug for BrokerModel<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerModel")
            .field("broker", &self.shared.broker.describe())
            .field("inner", &self.inner)
            .field("refusals", &self.shared.policy)
            .finish()
    }
}

/// What every writer of one model shares: the broker, an open session to reuse, and how
/// often each refused event has been refused.
struct Shared<B: Broker> {
    broker: Arc<B>,
    policy: FailurePolicy,
    session: Mutex<Option<B::Session>>,
    refusals: Mutex<HashMap<Uuid, u32>>,
}

impl<B: Broker> Shared<B> {
    fn take_session(&self) -> Option<B::Session> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn keep_session(&self, session: B::Session) {
        let mut slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(session);
        }
    }

    /// Counts one more refusal of `event_id` and returns the count.
    fn refused(&self, event_id: Uuid) -> u32 {
        let mut counts = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(event_id).or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn forget(&self, event_id: Uuid) {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&event_id);
    }
}

impl<B: Broker, C: ReadModel> BrokerModel<B, C> {
    /// Publishes to `broker`, keeping checkpoints in `inner`; refused messages stop the
    /// publisher (see [`BrokerModel::with_refusal_policy`]).
    pub fn new(broker: Arc<B>, inner: C) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                broker,
                policy: FailurePolicy::Stop,
                session: Mutex::new(None),
                refusals: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets what happens to a message the broker refuses (usually the projection's own
    /// [`ProjectionConfig::policy`](annals_projections::ProjectionConfig::policy), as
    /// [`Publisher::add_to`](crate::Publisher::add_to) does). Call before the model is
    /// cloned.
    #[must_use]
    pub fn with_refusal_policy(self, policy: FailurePolicy) -> Self {
        let shared = Shared {
            broker: self.shared.broker.clone(),
            policy,
            session: Mutex::new(self.shared.take_session()),
            refusals: Mutex::new(HashMap::new()),
        };
        Self {
            inner: self.inner,
            shared: Arc::new(shared),
        }
    }

    /// The read model that keeps the checkpoints.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<B> {
        &self.shared.broker
    }
}

/// A publisher's batch: the messages to publish, in log order, and the batch of the read
/// model that keeps the checkpoint (dead letters, lookups).
pub struct BrokerBatch<Inner> {
    messages: Vec<Message>,
    inner: Inner,
    /// Savepoints: the message count and the inner batch's savepoint at each mark (behind a
    /// lock because a savepoint is taken through `&self`).
    marks: Mutex<Vec<(usize, usize)>>,
}

impl<Inner> fmt::Debug for BrokerBatch<Inner> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerBatch")
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl<Inner: WriteBatch> BrokerBatch<Inner> {
    fn new(inner: Inner) -> Self {
        Self {
            messages: Vec::new(),
            inner,
            marks: Mutex::new(Vec::new()),
        }
    }

    /// Adds a message, published after the ones added before it.
    pub fn publish(&mut self, message: Message) {
        self.messages.push(message);
    }

    /// The messages added so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The read model's own batch (for a projection that also writes there).
    pub fn inner_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl<Inner: WriteBatch> WriteBatch for BrokerBatch<Inner> {
    fn savepoint(&self) -> usize {
        let mark = (self.messages.len(), self.inner.savepoint());
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if marks.last() != Some(&mark) {
            marks.push(mark);
        }
        marks.len() - 1
    }

    fn rollback_to(&mut self, savepoint: usize) {
        let marks = self.marks.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(&(messages, inner)) = marks.get(savepoint) else {
            return;
        };
        marks.truncate(savepoint + 1);
        self.messages.truncate(messages);
        self.inner.rollback_to(inner);
    }

    fn park(&mut self, letter: DeadLetter) {
        self.inner.park(letter);
    }

    fn unpark(&mut self, event_id: Uuid) {
        self.inner.unpark(event_id);
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.inner.is_empty()
    }

    fn lookups(&self) -> &Lookups {
        self.inner.lookups()
    }

    fn lookups_mut(&mut self) -> &mut Lookups {
        self.inner.lookups_mut()
    }
}

impl<B: Broker, C: ReadModel> ReadModel for BrokerModel<B, C> {
    type Batch = BrokerBatch<C::Batch>;
    type Writer = BrokerWriter<B, C>;

    fn projection(&self) -> &str {
        self.inner.projection()
    }

    async fn claim(&self, fence: Fence, store: Uuid) -> Result<Generations> {
        self.inner.claim(fence, store).await
    }

    async fn peek_generations(&self) -> Result<Generations> {
        self.inner.peek_generations().await
    }

    async fn peek_checkpoint(&self, generation: Generation) -> Result<Option<LogPosition>> {
        self.inner.peek_checkpoint(generation).await
    }

    async fn reset(&self, fence: Fence, store: Uuid) -> Result<()> {
        self.inner.reset(fence, store).await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters().await
    }

    async fn begin_build(&self, fence: Fence) -> Result<Generation> {
        self.inner.begin_build(fence).await
    }

    async fn open_writer(&self, generation: Generation, fence: Fence) -> Result<Self::Writer> {
        let inner = self.inner.open_writer(generation, fence).await?;
        Ok(BrokerWriter {
            inner,
            shared: self.shared.clone(),
            projection: self.inner.projection().to_owned(),
            parked: 0,
        })
    }

    async fn switch(&self, generation: Generation, fence: Fence) -> Result<Option<Generation>> {
        self.inner.switch(generation, fence).await
    }

    async fn drop_generation(&self, generation: Generation) -> Result<()> {
        self.inner.drop_generation(generation).await
    }
}

/// Writes a publisher's batches: publishes the messages, waits for every confirm, then
/// writes the checkpoint (and any dead letters) into the inner read model.
pub struct BrokerWriter<B: Broker, C: ReadModel> {
    inner: C::Writer,
    shared: Arc<Shared<B>>,
    projection: String,
    /// Refused messages parked by this writer's writes, not yet told to the runner.
    parked: u64,
}

impl<B: Broker, C: ReadModel> fmt::Debug for BrokerWriter<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerWriter")
            .field("projection", &self.projection)
            .field("broker", &self.shared.broker.describe())
            .field("checkpoint", &self.inner.checkpoint())
            .finish_non_exhaustive()
    }
}

/// What the refusal policy says for an event refused `attempt` times.
enum Verdict {
    Stop,
    Park,
    Retry { attempts: u32 },
}

fn verdict(policy: &FailurePolicy, attempt: u32) -> Verdict {
    match policy {
        FailurePolicy::DeadLetter => Verdict::Park,
        FailurePolicy::Retry { attempts, then, .. } => {
            if attempt < *attempts {
                Verdict::Retry {
                    attempts: *attempts,
                }
            } else if matches!(then.as_ref(), FailurePolicy::DeadLetter) {
                Verdict::Park
            } else {
                Verdict::Stop
            }
        }
        _ => Verdict::Stop,
    }
}

impl<B: Broker> Shared<B> {
    /// Publishes `messages` on the shared session (opening one when there is none or it
    /// broke) and returns what the broker said; a transport failure drops the session.
    async fn publish(&self, projection: &str, messages: &[Message]) -> Result<Published> {
        let broker = &self.broker;
        let mut session = self.open_session(projection).await?;
        let span = tracing::info_span!(
            "annals.publish",
            projection,
            broker = %broker.describe(),
            messages = messages.len(),
            first_position = messages.first().map(|m| tracing::field::display(m.position)),
            last_position = messages.last().map(|m| tracing::field::display(m.position)),
            stored = tracing::field::Empty,
            duplicates = tracing::field::Empty,
            refused = tracing::field::Empty,
        );
        let outcome = broker
            .publish(&mut session, messages)
            .instrument(span.clone())
            .await;
        if let Ok(published) = &outcome {
            span.record("stored", published.stored);
            span.record("duplicates", published.duplicates);
            span.record("refused", published.refused.len());
        }
        match outcome {
            Ok(published) => {
                self.keep_session(session);
                Ok(published)
            }
            Err(error) => {
                tracing::warn!(
                    projection,
                    broker = broker.describe(),
                    error = crate::error::error_chain(&error),
                    "publishing failed; the batch is published again after a backoff"
                );
                Err(error.into_runner_error(projection))
            }
        }
    }

    /// The shared session, taken out, when it is still open; else a new one.
    async fn open_session(&self, projection: &str) -> Result<B::Session> {
        match self.take_session() {
            Some(session) if self.broker.is_open(&session) => Ok(session),
            _ => self
                .broker
                .connect()
                .await
                .map_err(|e| e.into_runner_error(projection)),
        }
    }

    /// Keeps an open session, opening one when there is none or it broke: the idle check
    /// of [`GenerationWriter::check`], so that a broker that went away while no event came
    /// shows in the status.
    async fn check(&self, projection: &str) -> Result<()> {
        let session = self.open_session(projection).await?;
        self.keep_session(session);
        Ok(())
    }

    /// Publishes the batch's messages and applies the refusal policy to the ones refused:
    /// parks them in `batch`, or fails the write (to stop, or to try again). Returns how
    /// many it parked.
    async fn deliver<Batch: WriteBatch>(
        &self,
        projection: &str,
        messages: &[Message],
        batch: &mut Batch,
    ) -> Result<u64> {
        let published = self.publish(projection, messages).await?;
        if published.refused.is_empty() {
            return Ok(0);
        }
        let shared = self;
        let mut park = Vec::new();
        let mut retry = None;
        let mut stop = None;
        for refusal in &published.refused {
            let Some(message) = messages.get(refusal.index) else {
                continue;
            };
            let attempt = shared.refused(message.event_id);
            tracing::warn!(
                projection,
                broker = shared.broker.describe(),
                event_id = %message.event_id,
                position = %message.position,
                attempt,
                reason = refusal.reason,
                "the broker refused a message"
            );
            match verdict(&shared.policy, attempt) {
                Verdict::Stop => {
                    stop.get_or_insert((message, &refusal.reason));
                }
                Verdict::Park => park.push((message, &refusal.reason, attempt)),
                Verdict::Retry { attempts } => {
                    retry.get_or_insert((message, &refusal.reason, attempt, attempts));
                }
            }
        }
        if let Some((message, reason)) = stop {
            shared.forget(message.event_id);
            return Err(Error::Stopped(Box::new(StopReason {
                projection: projection.to_owned(),
                position: message.position,
                event_id: message.event_id,
                event_type: message.event_type.to_string(),
                error: format!("{} refused the message: {reason}", shared.broker.describe()),
            })));
        }
        if let Some((message, reason, attempt, attempts)) = retry {
            return Err(Error::Io(std::io::Error::other(format!(
                "{} refused event {} at {} (try {attempt} of {attempts}): {reason}",
                shared.broker.describe(),
                message.event_id,
                message.position
            ))));
        }
        let parked = park.len() as u64;
        for (message, reason, attempts) in park {
            shared.forget(message.event_id);
            batch.park(DeadLetter {
                projection: projection.to_owned(),
                position: message.position,
                event_id: message.event_id,
                event_type: message.event_type.to_string(),
                stream_id: message.stream_id.to_string(),
                stream_version: message.stream_version,
                error: format!("{} refused the message: {reason}", shared.broker.describe()),
                attempts,
                parked_at: OffsetDateTime::now_utc(),
            });
        }
        Ok(parked)
    }
}

impl<B: Broker, C: ReadModel> GenerationWriter for BrokerWriter<B, C> {
    type Batch = BrokerBatch<C::Batch>;

    fn checkpoint(&self) -> Option<LogPosition> {
        self.inner.checkpoint()
    }

    fn batch(&self) -> Self::Batch {
        BrokerBatch::new(self.inner.batch())
    }

    async fn load_lookups(&mut self, keys: &[String]) -> Result<Vec<Option<String>>> {
        self.inner.load_lookups(keys).await
    }

    async fn dead_letter_count(&mut self) -> Result<u64> {
        self.inner.dead_letter_count().await
    }

    async fn write(
        &mut self,
        batch: Self::Batch,
        through: LogPosition,
        durability: Durability,
    ) -> Result<Option<LogPosition>> {
        let BrokerBatch {
            messages,
            mut inner,
            ..
        } = batch;
        let parked = if messages.is_empty() {
            0
        } else {
            self.shared
                .deliver(&self.projection, &messages, &mut inner)
                .await?
        };
        let written = self.inner.write(inner, through, durability).await?;
        self.parked += parked;
        Ok(written)
    }

    fn take_parked(&mut self) -> u64 {
        std::mem::take(&mut self.parked) + self.inner.take_parked()
    }

    async fn flush(&mut self) -> Result<Option<LogPosition>> {
        self.inner.flush().await
    }

    async fn check(&mut self) -> Result<()> {
        self.inner.check().await?;
        self.shared.check(&self.projection).await
    }
}
