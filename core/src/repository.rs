//! The repository: load an aggregate (snapshot plus tail), handle a command, append the new
//! events with the expected version, snapshot by policy.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::{FutureExt, TryStreamExt};
use time::OffsetDateTime;
use tracing::{Instrument, Span, field::Empty};
use uuid::Uuid;

use crate::{
    Aggregate, AggregateRead, AppendResult, DomainEvent, Error, EventStore, ExpectedVersion,
    Metadata, NewEvent, Payload, RecordedEvent, Result, Retries, Snapshot, StreamAppend, StreamId,
    StreamRead, TraceContext, derive_event_id,
};

/// An aggregate's state and the stream version it includes.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state after applying every event up to `version`.
    pub state: A,
    /// The stream's version (0: no events yet).
    pub version: u64,
}

/// Identity of a command, carried into the metadata of every event it causes.
///
/// # Idempotent commands
///
/// By default ([`CommandContext::new`]) every attempt of a command gives its events fresh
/// ids, so one context can serve several commands, and a caller that sends a command again
/// after an ambiguous failure (a timeout, a connection lost after the commit) may store it
/// twice. An idempotent context ([`CommandContext::idempotent`],
/// [`CommandContext::with_command_id`]) names one command: its events get ids derived from
/// the command id ([`derive_event_id`](crate::derive_event_id)), and
/// [`Repository::execute`] never appends it twice to a stream; a retry is answered from the
/// stored events, as the first call was, with [`Executed::already_applied`] set. Use a new
/// command id for every command (reusing one on the same aggregate answers the later command
/// with the earlier one's events).
///
/// ```
/// use annals::{CommandContext, InMemoryEventStore, Repository};
/// use annals::testing::{Counter, CounterCommand};
///
/// # futures::executor::block_on(async {
/// let counters = Repository::<Counter, _>::new(InMemoryEventStore::new());
/// // The id comes with the request (an idempotency key), so a resent request has it too.
/// let ctx = CommandContext::idempotent(uuid::Uuid::now_v7());
/// let first = counters.execute("c", CounterCommand::Add(5), &ctx).await?;
/// let retry = counters.execute("c", CounterCommand::Add(5), &ctx).await?;
/// assert!(!first.already_applied && retry.already_applied);
/// assert_eq!(retry.append, first.append);
/// assert_eq!(counters.load("c").await?.state.total, 5);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    /// The command's own id; becomes each event's causation id unless
    /// [`causation_id`](Self::causation_id) is set.
    pub command_id: Uuid,
    /// Whether the events' ids are derived from `command_id`, so that the command is stored
    /// at most once however often it is sent (see [idempotent commands](Self#idempotent-commands)).
    /// False by default.
    pub idempotent: bool,
    /// The id tying this command to the request that started it; kept on every event. When
    /// `None`, the command id is used, starting a new correlation.
    pub correlation_id: Option<Uuid>,
    /// What caused this command (the event a reactor or saga reacted to, say); becomes each
    /// event's causation id. When `None`, the command id is.
    pub causation_id: Option<Uuid>,
    /// Application data copied into each event's metadata.
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// The W3C trace context this command continues (an incoming request's `traceparent`,
    /// the event a reaction handles): the command's span becomes its child, in its trace.
    /// When `None`, the command starts a new trace (with the `opentelemetry` feature, it
    /// continues the current span's). See [`crate::trace`].
    pub trace: Option<TraceContext>,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandContext {
    /// A context with a fresh v7 command id, not idempotent, and no correlation.
    pub fn new() -> Self {
        Self {
            command_id: Uuid::now_v7(),
            idempotent: false,
            correlation_id: None,
            causation_id: None,
            custom: serde_json::Map::new(),
            trace: None,
        }
    }

    /// The context of the idempotent command `command_id`: the same as
    /// `CommandContext::new().with_command_id(command_id)`.
    pub fn idempotent(command_id: Uuid) -> Self {
        Self::new().with_command_id(command_id)
    }

    /// A context for a command caused by `event` (a reactor's or a saga's): it continues the
    /// event's correlation (its correlation id, or its own id when it has none) and its
    /// trace (the command's span is a child of the span that appended `event`), has the
    /// event as causation, and a fresh command id (not idempotent: add
    /// [`with_command_id`](Self::with_command_id) with an id derived from the event, see
    /// [`derive_id`](crate::derive_id)).
    ///
    /// `event` must carry its id and metadata: read it without
    /// [`StreamRead::for_folding`].
    pub fn caused_by(event: &RecordedEvent) -> Self {
        let context = Self::new()
            .with_correlation_id(event.metadata.correlation_id.unwrap_or(event.event_id))
            .with_causation_id(event.event_id);
        match &event.metadata.trace {
            Some(trace) => context.with_trace(trace.clone()),
            None => context,
        }
    }

    /// Sets the command id and makes the context idempotent: every attempt of the command
    /// gives its events the same ids, and the repository stores it at most once.
    pub fn with_command_id(mut self, command_id: Uuid) -> Self {
        self.command_id = command_id;
        self.idempotent = true;
        self
    }

    /// Continues the correlation of an earlier request or event.
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Sets the causation id of the events (instead of the command id).
    pub fn with_causation_id(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// Adds a custom metadata field.
    pub fn with_custom(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.custom.insert(key.into(), value);
        self
    }

    /// Continues the trace of `parent` (parsed from an incoming request's `traceparent` with
    /// [`TraceContext::from_headers`], say): the command's span becomes its child.
    pub fn with_trace(mut self, parent: TraceContext) -> Self {
        self.trace = Some(parent);
        self
    }

    /// The metadata of an event caused by this command, recorded now: the correlation id (or
    /// the command id), the causation id (or the command id), the time, the custom fields
    /// and the trace context this command continues. (The [`Repository`] replaces the trace
    /// context with the one of the command's own span.)
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id.unwrap_or(self.command_id)),
            causation_id: Some(self.causation_id.unwrap_or(self.command_id)),
            occurred_at: Some(OffsetDateTime::now_utc()),
            custom: self.custom.clone(),
            trace: self.trace.clone(),
        }
    }

    /// The span of this command on `stream` (`annals.command`, at info: one per command),
    /// with its W3C context, a child of [`trace`](Self::trace).
    fn span(&self, aggregate: &'static str, stream: &StreamId) -> (Span, TraceContext) {
        let span = tracing::info_span!(
            "annals.command",
            aggregate,
            stream = %stream,
            command_id = %self.command_id,
            correlation_id = %self.correlation_id.unwrap_or(self.command_id),
            causation_id = %self.causation_id.unwrap_or(self.command_id),
            idempotent = self.idempotent,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
            version = Empty,
            events = Empty,
            position = Empty,
            already_applied = Empty,
        );
        let trace = TraceContext::for_span(&span, self.trace.as_ref());
        (span, trace)
    }

    /// The command id, when the events' ids derive from it.
    fn idempotency_key(&self) -> Option<Uuid> {
        self.idempotent.then_some(self.command_id)
    }
}

/// Why a command did not produce stored events. Each failure asks for a different reaction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command: tell the user; retrying will not help.
    #[error(transparent)]
    Rejected(E),
    /// Someone else changed the aggregate meanwhile, and the configured retries were used up:
    /// retry the command later, or report the contention.
    #[error("conflict on stream {stream}: expected {expected}, actual version {actual}")]
    Conflict {
        /// The aggregate's stream.
        stream: StreamId,
        /// The version the last attempt expected.
        expected: ExpectedVersion,
        /// The version the store had.
        actual: u64,
    },
    /// The store failed (see [`Error::is_transient`]) or a stored event did not decode.
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E> CommandError<E> {
    /// True for [`CommandError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// True when the store failed in a way a retry may fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_transient())
    }
}

/// What a command did: the events it appended and the state after them.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// The state after the new events (when `already_applied`, the current state).
    pub state: A,
    /// The stream version after the new events (when `already_applied`, the current one).
    pub version: u64,
    /// The new events (empty when the command changed nothing); when `already_applied`, the
    /// command's stored events.
    pub events: Vec<A::Event>,
    /// What the store reported, or `None` when there was nothing to append; when
    /// `already_applied`, the positions and version of the command's stored events.
    pub append: Option<AppendResult>,
    /// True when an idempotent command (see [`CommandContext::idempotent`]) was found stored
    /// already, by an earlier call: it was not decided again and nothing was appended.
    ///
    /// An earlier call's events met at exactly the version this call expected (a cached
    /// state one command behind, or a retry of the same append after a transient error)
    /// are answered by the store as the first call was, and reported as appended (false).
    pub already_applied: bool,
}

/// A decision not yet appended, for appends that span several aggregates atomically.
///
/// Get one from [`Repository::decide`] per aggregate, then pass each
/// [`Decision::to_append`] to one [`EventStore::append_multi`] call.
#[derive(Debug, Clone)]
pub struct Decision<A: Aggregate> {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The version the decision was made at; the append expects exactly it.
    pub version: u64,
    /// The typed new events; when `already_applied`, the command's stored events.
    pub events: Vec<A::Event>,
    /// The same events encoded, with ids and metadata; empty when `already_applied`.
    pub new_events: Vec<NewEvent>,
    /// The state after the new events (when `already_applied`, the current state).
    pub state: A,
    /// True when the idempotent command (see [`CommandContext::idempotent`]) is stored in
    /// this stream already: nothing new was decided.
    pub already_applied: bool,
    /// The command's stored events, as they were appended, when `already_applied`.
    stored: Option<StreamAppend>,
}

impl<A: Aggregate> Decision<A> {
    /// This decision's part of a multi-stream append.
    ///
    /// For a decision [`already_applied`](Self::already_applied) it is the command's stored
    /// events once more (same ids, type, schema version and payload, expecting the version
    /// they were appended at): every store answers such an append with the original
    /// [`AppendResult`] and writes nothing, so a retried multi-stream command whose
    /// decisions are all already applied gets its original results back. (An append with no
    /// events is refused by every store with [`Error::InvalidAppend`].) Mixed with new events
    /// of the same command in another stream, the store refuses the append with
    /// [`Error::IdempotencyConflict`]: the command was applied without them.
    pub fn to_append(&self) -> StreamAppend {
        if let Some(stored) = &self.stored {
            return stored.clone();
        }
        StreamAppend::new(
            self.stream.clone(),
            ExpectedVersion::Exact(self.version),
            self.new_events.clone(),
        )
    }
}

/// The events of an idempotent command found in its stream.
struct Applied<A: Aggregate> {
    events: Vec<A::Event>,
    stored: Vec<RecordedEvent>,
}

impl<A: Aggregate> Applied<A> {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            stored: Vec::new(),
        }
    }

    fn push(&mut self, recorded: RecordedEvent, event: A::Event) {
        self.stored.push(recorded);
        self.events.push(event);
    }

    /// The id the next event of the command has.
    fn next_id(&self, command_id: Uuid, stream: &StreamId) -> Uuid {
        derive_event_id(command_id, stream, event_index(self.stored.len()))
    }

    /// What the store answered when these events were appended.
    fn result(&self) -> Option<AppendResult> {
        let (first, last) = (self.stored.first()?, self.stored.last()?);
        Some(AppendResult {
            stream_version: last.stream_version,
            first_position: first.position,
            last_position: last.position,
        })
    }

    fn executed(self, loaded: Loaded<A>) -> Executed<A> {
        Executed {
            append: self.result(),
            state: loaded.state,
            version: loaded.version,
            events: self.events,
            already_applied: true,
        }
    }

    fn decision(self, stream: StreamId, loaded: Loaded<A>) -> Decision<A> {
        let expected = self
            .stored
            .first()
            .map_or(loaded.version, |e| e.stream_version - 1);
        let replay = self
            .stored
            .into_iter()
            .map(|e| NewEvent {
                event_id: e.event_id,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
                metadata: e.metadata,
            })
            .collect();
        Decision {
            stored: Some(StreamAppend::new(
                stream.clone(),
                ExpectedVersion::Exact(expected),
                replay,
            )),
            stream,
            version: loaded.version,
            events: self.events,
            new_events: Vec::new(),
            state: loaded.state,
            already_applied: true,
        }
    }
}

/// The index of the `i`-th event of a command in [`derive_event_id`]. Stores refuse far
/// fewer events per append than `u32::MAX`; past it the ids repeat and the append is refused.
fn event_index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// What loading an aggregate saw of an idempotent command.
struct Tail<A: Aggregate> {
    /// The load started from a snapshot: the events before it were not read.
    from_snapshot: bool,
    /// The command's events, when the events read hold them.
    applied: Option<Applied<A>>,
}

impl<A: Aggregate> Tail<A> {
    fn unread() -> Self {
        Self {
            from_snapshot: false,
            applied: None,
        }
    }
}

/// Loads aggregates from a store and runs commands against them.
///
/// With [`Repository::with_cache`], the state of recently used aggregates is kept in memory:
/// a command then costs one round trip (the append, which checks the cached version). If the
/// cache is stale the append conflicts, the aggregate is reloaded and the command decided
/// again, so the cache never changes what is stored. A command that the cached state
/// rejects, or that changes nothing, is decided again on the stored state before it is
/// answered, since no append checked that state.
pub struct Repository<A: Aggregate, S> {
    store: S,
    retries: Retries,
    cache: Option<Arc<Cache<A>>>,
}

struct Cache<A> {
    capacity: usize,
    entries: Mutex<HashMap<StreamId, Loaded<A>>>,
}

impl<A> Cache<A> {
    fn lock(&self) -> MutexGuard<'_, HashMap<StreamId, Loaded<A>>> {
        // A panic while holding the lock cannot leave a half-written entry (inserts and
        // removes are single calls), so a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<A: Aggregate, S: fmt::Debug> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("retries", &self.retries)
            .field("cache", &self.cache.as_ref().map(|c| c.capacity))
            .finish()
    }
}

impl<A: Aggregate, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            retries: self.retries.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository without cache that does not retry.
    pub fn new(store: S) -> Self {
        Self {
            store,
            retries: Retries::none(),
            cache: None,
        }
    }

    /// Retries a command up to `retries` times when the aggregate changed meanwhile (each
    /// retry reloads and decides again), at once; [`Repository::with_retries`] adds backoff
    /// and transient store errors.
    pub fn with_conflict_retries(mut self, retries: u32) -> Self {
        self.retries.conflicts = retries;
        self
    }

    /// Retries conflicts and transient store errors as `retries` says, with backoff and
    /// jitter between attempts (see [`Retries`]).
    pub fn with_retries(mut self, retries: Retries) -> Self {
        self.retries = retries;
        self
    }

    /// Keeps up to `capacity` aggregates in memory between commands.
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| {
            Arc::new(Cache {
                capacity,
                entries: Mutex::new(HashMap::new()),
            })
        });
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stream id of the aggregate instance `id`.
    ///
    /// # Errors
    /// [`Error::InvalidStreamId`] when the id makes an invalid stream id.
    pub fn stream_id(&self, id: &str) -> Result<StreamId> {
        StreamId::for_aggregate(A::TYPE, id)
    }

    /// Loads an aggregate from its latest usable snapshot plus the events after it, read
    /// together ([`EventStore::read_aggregate`]: one round trip in the PostgreSQL store).
    ///
    /// A snapshot of another schema version, or one that does not decode, is ignored and the
    /// aggregate is rebuilt from its first event. An aggregate whose
    /// [`SnapshotPolicy`](crate::SnapshotPolicy) keeps no snapshots
    /// ([`Never`](crate::SnapshotPolicy::Never), the default) is always rebuilt from its
    /// events, and no snapshot is looked for.
    ///
    /// # Errors
    /// Store failures and decode errors of stored events.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        self.load_stream(&self.stream_id(id)?).await
    }

    async fn load_stream(&self, stream: &StreamId) -> Result<Loaded<A>> {
        Ok(self.load_tail(stream, None).await?.0)
    }

    /// Loads the aggregate; with the id of an idempotent command, also looks for the
    /// command's events among the events read (which are then read with their ids).
    async fn load_tail(
        &self,
        stream: &StreamId,
        command_id: Option<Uuid>,
    ) -> Result<(Loaded<A>, Tail<A>)> {
        let span = tracing::debug_span!(
            "annals.load",
            aggregate = A::TYPE,
            stream = %stream,
            snapshot = Empty,
            version = Empty,
        );
        let loaded = self
            .read_tail(stream, command_id, &span)
            .instrument(span.clone())
            .await?;
        span.record("version", loaded.0.version);
        Ok(loaded)
    }

    /// [`load_tail`](Self::load_tail) within its span.
    async fn read_tail(
        &self,
        stream: &StreamId,
        command_id: Option<Uuid>,
        span: &Span,
    ) -> Result<(Loaded<A>, Tail<A>)> {
        // Folding needs no ids, but finding the command's events does.
        let read = if command_id.is_some() {
            StreamRead::forward()
        } else {
            StreamRead::forward().for_folding()
        };
        // An aggregate that keeps no snapshots has none to look for: one read, not two.
        let snapshot_version = A::SNAPSHOT_POLICY
            .keeps_snapshots()
            .then_some(A::SNAPSHOT_VERSION);
        let AggregateRead { snapshot, events } = self
            .store
            .read_aggregate(stream, snapshot_version, read)
            .await?;
        let (mut loaded, mut events) = match snapshot {
            Some(snapshot) if snapshot.schema_version == A::SNAPSHOT_VERSION => {
                match snapshot.payload.deserialize::<A>() {
                    Ok(state) => (
                        Loaded {
                            state,
                            version: snapshot.stream_version,
                        },
                        events,
                    ),
                    Err(error) => {
                        tracing::warn!(%stream, %error, "ignoring a snapshot that does not decode");
                        drop(events);
                        (
                            Loaded::default_state(),
                            self.store.read_stream(stream, read),
                        )
                    }
                }
            }
            // Stores return only snapshots of the version asked for; should one not, its
            // events were read after it: read them all.
            Some(snapshot) => {
                tracing::debug!(
                    %stream,
                    stored = snapshot.schema_version,
                    current = A::SNAPSHOT_VERSION,
                    "ignoring a snapshot of another schema version"
                );
                drop(events);
                (
                    Loaded::default_state(),
                    self.store.read_stream(stream, read),
                )
            }
            None => (Loaded::default_state(), events),
        };
        if loaded.version > 0 {
            span.record("snapshot", loaded.version);
        }
        let mut tail = Tail {
            from_snapshot: loaded.version > 0,
            applied: None,
        };
        // Whether the events just read are the command's (they are consecutive).
        let mut in_command = false;
        while let Some(recorded) = events.try_next().await? {
            let event = A::Event::decode(&recorded)?;
            loaded.state.apply(&event);
            loaded.version = recorded.stream_version;
            let Some(command_id) = command_id else {
                continue;
            };
            match &mut tail.applied {
                None if recorded.event_id == derive_event_id(command_id, stream, 0) => {
                    let mut applied = Applied::new();
                    applied.push(recorded, event);
                    tail.applied = Some(applied);
                    in_command = true;
                }
                Some(applied)
                    if in_command && recorded.event_id == applied.next_id(command_id, stream) =>
                {
                    applied.push(recorded, event);
                }
                _ => in_command = false,
            }
        }
        Ok((loaded, tail))
    }

    /// Looks for the events of the idempotent command `command_id` anywhere in the stream,
    /// newest first (one read of the stream when they are not there).
    ///
    /// Callers box its future (`.boxed()`): a command rarely needs it, and its state and code
    /// would otherwise be part of every command's future (larger to allocate and move, and
    /// more code between a command's hot steps).
    async fn find_applied(
        &self,
        stream: &StreamId,
        command_id: Uuid,
    ) -> Result<Option<Applied<A>>> {
        let first_id = derive_event_id(command_id, stream, 0);
        let mut start = None;
        let mut backward = self.store.read_stream(stream, StreamRead::backward());
        while let Some(recorded) = backward.try_next().await? {
            if recorded.event_id == first_id {
                start = Some(recorded.stream_version);
                break;
            }
        }
        drop(backward);
        let Some(start) = start else {
            return Ok(None);
        };
        let mut applied = Applied::new();
        let mut forward = self.store.read_stream(
            stream,
            StreamRead::forward_from(start).with_page_size(COMMAND_PAGE),
        );
        while let Some(recorded) = forward.try_next().await? {
            if recorded.event_id != applied.next_id(command_id, stream) {
                break;
            }
            let event = A::Event::decode(&recorded)?;
            applied.push(recorded, event);
        }
        Ok((!applied.stored.is_empty()).then_some(applied))
    }

    /// Loads the aggregate and decides a command without appending, for an atomic append
    /// across several aggregates (see [`Decision`]).
    ///
    /// With an idempotent context (see [`CommandContext::idempotent`]) the new events get ids
    /// derived from the command id, the same at every attempt. When the command's events
    /// are in the stream already the decision is [`Decision::already_applied`] and holds
    /// them, without deciding again. Events older than the aggregate's snapshot are looked
    /// up only when the command would be refused or would change nothing; otherwise the
    /// append of the decision meets them: the store answers with the original result (same
    /// payloads) or refuses with [`Error::IdempotencyConflict`].
    ///
    /// # Errors
    /// [`CommandError::Rejected`] when the aggregate refuses; store and decode failures.
    pub async fn decide(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Decision<A>, CommandError<A::Error>> {
        let stream = self.stream_id(id)?;
        let (span, trace) = context.span(A::TYPE, &stream);
        let decided = self
            .decide_traced(stream, command, context, &trace)
            .instrument(span.clone())
            .await;
        if let Ok(decision) = &decided {
            span.record("version", decision.version);
            span.record("events", decision.events.len());
            span.record("already_applied", decision.already_applied);
        }
        decided
    }

    /// [`decide`](Self::decide) within the command's span, whose context is `trace`.
    async fn decide_traced(
        &self,
        stream: StreamId,
        command: A::Command,
        context: &CommandContext,
        trace: &TraceContext,
    ) -> Result<Decision<A>, CommandError<A::Error>> {
        let command_id = context.idempotency_key();
        let (loaded, tail) = self.load_tail(&stream, command_id).await?;
        if let Some(applied) = tail.applied {
            return Ok(applied.decision(stream, loaded));
        }
        let outcome = loaded.state.handle(command);
        // A refusal or a no-op may come from a state that already includes the command.
        if let Some(command_id) = command_id
            && tail.from_snapshot
            && outcome.as_ref().map_or(true, Vec::is_empty)
            && let Some(applied) = self.find_applied(&stream, command_id).boxed().await?
        {
            return Ok(applied.decision(stream, loaded));
        }
        let events = outcome.map_err(CommandError::Rejected)?;
        Ok(Self::decision(stream, loaded, events, context, trace)?)
    }

    /// The decision to append `events` to the aggregate `loaded`, by the command whose span
    /// has the context `trace`.
    fn decision(
        stream: StreamId,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        context: &CommandContext,
        trace: &TraceContext,
    ) -> Result<Decision<A>> {
        let mut metadata = context.metadata();
        metadata.trace = Some(trace.clone());
        let command_id = context.idempotency_key();
        let new_events = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let event = e.to_new_event()?.with_metadata(metadata.clone());
                Ok(match command_id {
                    Some(command_id) => {
                        event.with_id(derive_event_id(command_id, &stream, event_index(i)))
                    }
                    None => event,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut state = loaded.state;
        for event in &events {
            state.apply(event);
        }
        Ok(Decision {
            stream,
            version: loaded.version,
            events,
            new_events,
            state,
            already_applied: false,
            stored: None,
        })
    }

    /// Runs a command: load (or take from the cache), handle, append expecting the loaded
    /// version, snapshot when the policy says so.
    ///
    /// With an idempotent context (see [`CommandContext::idempotent`]) the command is
    /// appended at most once, however often it is executed: when its events are found in
    /// the stream (among the events loaded, or, when the store shows that they are older
    /// than the snapshot, by reading the stream backward) the command is not decided again,
    /// and the answer is [`Executed::already_applied`], with the stored events and their
    /// positions. So a retry after an ambiguous failure is answered as the first call was,
    /// even when the new state would refuse the command.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] when the aggregate refuses (nothing is appended);
    /// [`CommandError::Conflict`] when the aggregate kept changing through every retry;
    /// [`CommandError::Store`] for store failures and decode errors, and
    /// [`Error::IdempotencyConflict`] when an idempotent command's id was used before for
    /// other events.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let stream = self.stream_id(id)?;
        let (span, trace) = context.span(A::TYPE, &stream);
        let executed = self
            .execute_traced(stream, command, context, &trace)
            .instrument(span.clone())
            .await;
        match &executed {
            Ok(executed) => {
                span.record("version", executed.version);
                span.record("events", executed.events.len());
                span.record("already_applied", executed.already_applied);
                if let Some(append) = &executed.append {
                    span.record("position", tracing::field::display(append.last_position));
                }
            }
            Err(error) => {
                let _in_span = span.enter();
                match error {
                    CommandError::Rejected(_) => tracing::debug!("command rejected"),
                    CommandError::Conflict { .. } => tracing::debug!("command conflicted"),
                    CommandError::Store(error) => tracing::debug!(%error, "command failed"),
                }
            }
        }
        executed
    }

    /// [`execute`](Self::execute) within the command's span, whose context is `trace`.
    async fn execute_traced(
        &self,
        stream: StreamId,
        command: A::Command,
        context: &CommandContext,
        trace: &TraceContext,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let command_id = context.idempotency_key();
        let mut conflicts = 0u32;
        let mut use_cache = true;
        // Set when an append showed that the idempotent command may be stored already: the
        // next load looks for its events, and answers with this error if they are not there.
        let mut look_up: Option<Error> = None;
        loop {
            let cached = if use_cache {
                self.cached(&stream)
            } else {
                None
            };
            let from_cache = cached.is_some();
            let (loaded, tail) = match cached {
                Some(loaded) => (loaded, Tail::unread()),
                None => self.load_tail(&stream, command_id).await?,
            };
            if let Some(applied) = tail.applied {
                self.remember(&stream, &loaded.state, loaded.version);
                return Ok(applied.executed(loaded));
            }
            if let Some(error) = look_up.take() {
                // `look_up` is only set for idempotent commands and then skips the cache.
                if let Some(command_id) = command_id
                    && tail.from_snapshot
                    && let Some(applied) = self.find_applied(&stream, command_id).boxed().await?
                {
                    self.remember(&stream, &loaded.state, loaded.version);
                    return Ok(applied.executed(loaded));
                }
                return Err(error.into());
            }
            let outcome = loaded.state.handle(command.clone());
            // Only an append checks the cached version. A rejection or a no-op decided on a
            // cached state may come from a stale one: decide again on the stored state. On
            // a state loaded from a snapshot, it may come from the command's own events.
            if outcome.as_ref().map_or(true, Vec::is_empty) {
                if from_cache {
                    self.forget(&stream);
                    use_cache = false;
                    continue;
                }
                if let Some(command_id) = command_id
                    && tail.from_snapshot
                    && let Some(applied) = self.find_applied(&stream, command_id).boxed().await?
                {
                    self.remember(&stream, &loaded.state, loaded.version);
                    return Ok(applied.executed(loaded));
                }
            }
            let events = outcome.map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    state: loaded.state,
                    version: loaded.version,
                    events: Vec::new(),
                    append: None,
                    already_applied: false,
                });
            }
            let decision = Self::decision(stream.clone(), loaded, events, context, trace)?;
            let expected = ExpectedVersion::Exact(decision.version);
            let count = decision.new_events.len() as u64;
            match self
                .append_retrying(&stream, expected, decision.new_events)
                .await
            {
                // A fresh append ends `count` versions after the expected one. Any other
                // result is the store's answer to a retry: the original result of this
                // command's events, stored before the state it was decided on.
                Ok(result)
                    if command_id.is_some()
                        && result.stream_version != expected_end(decision.version, count) =>
                {
                    self.forget(&stream);
                    use_cache = false;
                    look_up = Some(Error::IdempotencyConflict {
                        event_id: derive_event_id(context.command_id, &stream, 0),
                    });
                }
                Ok(result) => {
                    tracing::debug!(
                        version = result.stream_version,
                        events = count,
                        first = %result.first_position,
                        last = %result.last_position,
                        "appended"
                    );
                    self.remember(&stream, &decision.state, result.stream_version);
                    // Boxed: a store's snapshot write may be a large future, which every
                    // command's future would otherwise hold (and copy when moved).
                    if A::SNAPSHOT_POLICY.due(decision.version, result.stream_version) {
                        Box::pin(self.snapshot_if_due(
                            &stream,
                            &decision.state,
                            decision.version,
                            &result,
                        ))
                        .await;
                    }
                    return Ok(Executed {
                        state: decision.state,
                        version: result.stream_version,
                        events: decision.events,
                        append: Some(result),
                        already_applied: false,
                    });
                }
                // Some of this command's ids are stored, with other content: it was applied
                // on another state (its events are older than the snapshot or the cached
                // state), or the id was used for another command.
                Err(error @ Error::IdempotencyConflict { .. }) if command_id.is_some() => {
                    self.forget(&stream);
                    use_cache = false;
                    look_up = Some(error);
                }
                Err(Error::Conflict {
                    stream,
                    expected,
                    actual,
                }) => {
                    self.forget(&stream);
                    use_cache = false;
                    // A stale cache entry is not the caller's conflict: reload once for free.
                    if from_cache {
                        continue;
                    }
                    if conflicts >= self.retries.conflicts {
                        return Err(CommandError::Conflict {
                            stream,
                            expected,
                            actual,
                        });
                    }
                    self.retries.wait(conflicts).await;
                    conflicts += 1;
                }
                Err(other) => {
                    // The outcome may be unknown: never trust the cached version after it.
                    self.forget(&stream);
                    return Err(other.into());
                }
            }
        }
    }

    /// Appends, sending the same append again (same events, ids and expected version) after
    /// a transient error, with backoff, up to the configured number of times. A retry of an
    /// append that did commit gets the original result from the store's idempotency by
    /// event id.
    async fn append_retrying(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        let span = tracing::debug_span!(
            "annals.append",
            stream = %stream,
            expected = %expected,
            events = events.len(),
            position = Empty,
        );
        let appended = async {
            let mut attempt = 0u32;
            loop {
                match self.store.append(stream, expected, events.clone()).await {
                    Err(e) if e.is_transient() && attempt < self.retries.transient => {
                        tracing::debug!(stream = %stream, attempt, error = %e, "transient append failure, retrying");
                        self.retries.wait(attempt).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        }
        .instrument(span.clone())
        .await;
        if let Ok(result) = &appended {
            span.record("position", tracing::field::display(result.last_position));
        }
        appended
    }

    async fn snapshot_if_due(
        &self,
        stream: &StreamId,
        state: &A,
        before: u64,
        result: &AppendResult,
    ) {
        if !A::SNAPSHOT_POLICY.due(before, result.stream_version) {
            return;
        }
        let saved = async {
            let snapshot = Snapshot {
                stream_id: stream.clone(),
                stream_version: result.stream_version,
                schema_version: A::SNAPSHOT_VERSION,
                payload: Payload::from_serialize(state)?,
                taken_at: OffsetDateTime::now_utc(),
            };
            self.store.save_snapshot(snapshot).await
        };
        // A snapshot is only a cache of the events: failing to save one loses nothing.
        if let Err(error) = saved.await {
            tracing::warn!(%stream, %error, "could not save a snapshot");
        }
    }

    fn cached(&self, stream: &StreamId) -> Option<Loaded<A>> {
        self.cache.as_ref()?.lock().get(stream).cloned()
    }

    fn remember(&self, stream: &StreamId, state: &A, version: u64) {
        if let Some(cache) = &self.cache {
            let mut entries = cache.lock();
            if entries.len() >= cache.capacity
                && !entries.contains_key(stream)
                && let Some(evict) = entries.keys().next().cloned()
            {
                entries.remove(&evict);
            }
            entries.insert(
                stream.clone(),
                Loaded {
                    state: state.clone(),
                    version,
                },
            );
        }
    }

    fn forget(&self, stream: &StreamId) {
        if let Some(cache) = &self.cache {
            cache.lock().remove(stream);
        }
    }
}

/// The version a fresh append of `count` events expecting `version` ends at.
fn expected_end(version: u64, count: u64) -> u64 {
    version.saturating_add(count)
}

/// Events fetched per round trip when reading one command's events.
const COMMAND_PAGE: usize = 64;

impl<A: Default> Loaded<A> {
    fn default_state() -> Self {
        Self {
            state: A::default(),
            version: 0,
        }
    }
}
