//! The repository: load an aggregate (snapshot plus tail), handle a command, append the new
//! events with the expected version, snapshot by policy.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::TryStreamExt;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    Aggregate, AppendResult, DomainEvent, Error, EventStore, ExpectedVersion, Metadata, NewEvent,
    Payload, Result, Retries, Snapshot, StreamAppend, StreamId, StreamRead,
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
#[derive(Debug, Clone, PartialEq)]
pub struct CommandContext {
    /// The command's own id; becomes each event's causation id.
    pub command_id: Uuid,
    /// The id tying this command to the request that started it; kept on every event. When
    /// `None`, the command id is used, starting a new correlation.
    pub correlation_id: Option<Uuid>,
    /// Application data copied into each event's metadata.
    pub custom: serde_json::Map<String, serde_json::Value>,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandContext {
    /// A context with a fresh v7 command id and no correlation.
    pub fn new() -> Self {
        Self {
            command_id: Uuid::now_v7(),
            correlation_id: None,
            custom: serde_json::Map::new(),
        }
    }

    /// Continues the correlation of an earlier request or event.
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Adds a custom metadata field.
    pub fn with_custom(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        self.custom.insert(key.into(), value);
        self
    }

    /// The metadata of an event caused by this command, recorded now.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            correlation_id: Some(self.correlation_id.unwrap_or(self.command_id)),
            causation_id: Some(self.command_id),
            occurred_at: Some(OffsetDateTime::now_utc()),
            custom: self.custom.clone(),
        }
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
    /// The state after the new events.
    pub state: A,
    /// The stream version after the new events.
    pub version: u64,
    /// The new events (empty when the command changed nothing).
    pub events: Vec<A::Event>,
    /// What the store reported, or `None` when there was nothing to append.
    pub append: Option<AppendResult>,
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
    /// The typed new events.
    pub events: Vec<A::Event>,
    /// The same events encoded, with ids and metadata.
    pub new_events: Vec<NewEvent>,
    /// The state after the new events.
    pub state: A,
}

impl<A: Aggregate> Decision<A> {
    /// This decision's part of a multi-stream append.
    pub fn to_append(&self) -> StreamAppend {
        StreamAppend::new(
            self.stream.clone(),
            ExpectedVersion::Exact(self.version),
            self.new_events.clone(),
        )
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

    /// Loads an aggregate from its latest usable snapshot plus the events after it.
    ///
    /// A snapshot of another schema version, or one that does not decode, is ignored and the
    /// aggregate is rebuilt from its first event.
    ///
    /// # Errors
    /// Store failures and decode errors of stored events.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        self.load_stream(&self.stream_id(id)?).await
    }

    async fn load_stream(&self, stream: &StreamId) -> Result<Loaded<A>> {
        let mut loaded = match self.store.load_snapshot(stream).await? {
            Some(snapshot) if snapshot.schema_version == A::SNAPSHOT_VERSION => {
                match snapshot.payload.deserialize::<A>() {
                    Ok(state) => Loaded {
                        state,
                        version: snapshot.stream_version,
                    },
                    Err(error) => {
                        tracing::warn!(%stream, %error, "ignoring a snapshot that does not decode");
                        Loaded::default_state()
                    }
                }
            }
            Some(snapshot) => {
                tracing::debug!(
                    %stream,
                    stored = snapshot.schema_version,
                    current = A::SNAPSHOT_VERSION,
                    "ignoring a snapshot of another schema version"
                );
                Loaded::default_state()
            }
            None => Loaded::default_state(),
        };
        let mut events = self.store.read_stream(
            stream,
            StreamRead::forward_from(loaded.version + 1).for_folding(),
        );
        while let Some(recorded) = events.try_next().await? {
            let event = A::Event::decode(&recorded)?;
            loaded.state.apply(&event);
            loaded.version = recorded.stream_version;
        }
        Ok(loaded)
    }

    /// Loads the aggregate and decides a command without appending, for an atomic append
    /// across several aggregates (see [`Decision`]).
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
        let loaded = self.load_stream(&stream).await?;
        Self::decide_on(stream, loaded, command, context)
    }

    fn decide_on(
        stream: StreamId,
        loaded: Loaded<A>,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Decision<A>, CommandError<A::Error>> {
        let events = loaded
            .state
            .handle(command)
            .map_err(CommandError::Rejected)?;
        let metadata = context.metadata();
        let new_events = events
            .iter()
            .map(|e| Ok(e.to_new_event()?.with_metadata(metadata.clone())))
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
        })
    }

    /// Runs a command: load (or take from the cache), handle, append expecting the loaded
    /// version, snapshot when the policy says so.
    ///
    /// # Errors
    /// [`CommandError::Rejected`] when the aggregate refuses (nothing is appended);
    /// [`CommandError::Conflict`] when the aggregate kept changing through every retry;
    /// [`CommandError::Store`] for store failures and decode errors.
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
        let mut conflicts = 0u32;
        let mut use_cache = true;
        loop {
            let cached = if use_cache {
                self.cached(&stream)
            } else {
                None
            };
            let from_cache = cached.is_some();
            let loaded = match cached {
                Some(loaded) => loaded,
                None => self.load_stream(&stream).await?,
            };
            let decided = Self::decide_on(stream.clone(), loaded, command.clone(), context);
            // Only an append checks the cached version. A rejection or a no-op decided on a
            // cached state may come from a stale one: decide again on the stored state.
            let stale_risk = match &decided {
                Err(CommandError::Rejected(_)) => true,
                Ok(decision) => decision.events.is_empty(),
                Err(_) => false,
            };
            if from_cache && stale_risk {
                self.forget(&stream);
                use_cache = false;
                continue;
            }
            let decision = decided?;
            if decision.events.is_empty() {
                return Ok(Executed {
                    state: decision.state,
                    version: decision.version,
                    events: Vec::new(),
                    append: None,
                });
            }
            let expected = ExpectedVersion::Exact(decision.version);
            match self
                .append_retrying(&stream, expected, decision.new_events)
                .await
            {
                Ok(result) => {
                    self.remember(&stream, &decision.state, result.stream_version);
                    self.snapshot_if_due(&stream, &decision.state, decision.version, &result)
                        .await;
                    return Ok(Executed {
                        state: decision.state,
                        version: result.stream_version,
                        events: decision.events,
                        append: Some(result),
                    });
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

impl<A: Default> Loaded<A> {
    fn default_state() -> Self {
        Self {
            state: A::default(),
            version: 0,
        }
    }
}
