//! The contract between the runner and a read-model target (Redis, tantivy, in process, or
//! your own).

pub(crate) mod lookups;

use std::{fmt, future::Future};

use annals::{LogPosition, RecordedEvent};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, Lookups, Result};

/// One build of a projection's read model. Rebuilding writes a new generation beside the one
/// that serves, then switches readers to it atomically. Numbers are never reused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {}", self.0)
    }
}

/// An ownership fencing number: every read-model write carries it, and a write with a
/// number lower than one the read model has seen is refused.
pub type Fence = u64;

/// Which generations of a projection exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generations {
    /// The generation readers use (`None` until the first build completes).
    pub current: Option<Generation>,
    /// A generation being built (by a rebuild, or the first build), if any.
    pub building: Option<Generation>,
    /// A generation replaced by a switch and not yet dropped (a crash came between the two);
    /// the next owner drops it.
    pub retired: Option<Generation>,
    /// The event store the read model was built from ([`EventStore::store_id`]), as recorded
    /// before the claim; `None` for a new read model (or one from before stores had ids).
    ///
    /// [`EventStore::store_id`]: annals::EventStore::store_id
    pub store: Option<Uuid>,
}

/// Whether a write must be visible and durable before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Commit now: live processing, where readers wait for the write.
    Now,
    /// The target may hold the write and commit it with later ones (catch-up and rebuild,
    /// where tantivy commits are expensive); a crash loses only uncommitted work, whose
    /// checkpoint was not committed either.
    Deferred,
}

/// An event parked by [`FailurePolicy::DeadLetter`](crate::FailurePolicy::DeadLetter),
/// stored in the read model in the same atomic write that moves the checkpoint past it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The projection that could not handle it.
    pub projection: String,
    /// Where it sits in the log.
    pub position: LogPosition,
    /// Its id.
    pub event_id: Uuid,
    /// Its stored type.
    pub event_type: String,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream (0 in letters parked before versions were recorded).
    #[serde(default)]
    pub stream_version: u64,
    /// What the handler said (the last error, after any retries).
    pub error: String,
    /// How many times the handler was tried.
    pub attempts: u32,
    /// When it was parked.
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: OffsetDateTime,
}

impl DeadLetter {
    /// A dead letter for `event`.
    pub fn new(projection: &str, event: &RecordedEvent, error: String, attempts: u32) -> Self {
        Self {
            projection: projection.to_owned(),
            position: event.position,
            event_id: event.event_id,
            event_type: event.event_type.to_string(),
            stream_id: event.stream_id.to_string(),
            stream_version: event.stream_version,
            error,
            attempts,
            parked_at: OffsetDateTime::now_utc(),
        }
    }
}

/// The writes a handler adds for a run of events, committed together with a checkpoint.
pub trait WriteBatch: Send + 'static {
    /// A mark to roll back to when the handler fails half-way through an event.
    fn savepoint(&self) -> usize;
    /// Forgets everything added after `savepoint`.
    fn rollback_to(&mut self, savepoint: usize);
    /// Parks a failing event in the generation's dead-letter list.
    fn park(&mut self, letter: DeadLetter);
    /// Removes the dead letter of `event_id` from the list, in this batch's write (after a
    /// requeued event was handled, or to skip it).
    fn unpark(&mut self, event_id: Uuid);
    /// True when nothing was added.
    fn is_empty(&self) -> bool;
    /// The batch's lookups: what was loaded for it and what its handler set (see
    /// [`Lookups`]); written with the batch.
    fn lookups(&self) -> &Lookups;
    /// The batch's lookups, to set values.
    fn lookups_mut(&mut self) -> &mut Lookups;
}

/// A read-model target bound to one projection: where its generations live and how a batch
/// is committed with its checkpoint and fence.
///
/// Implement it to project into another store; the guarantees the runner relies on are:
/// a commit writes the batch, the checkpoint and the fence atomically, refuses a fence lower
/// than one seen (by [`claim`](ReadModel::claim) or a write), and readers only ever see the
/// `current` generation.
pub trait ReadModel: Send + Sync + 'static {
    /// What a handler fills.
    type Batch: WriteBatch;
    /// A writer into one generation.
    type Writer: GenerationWriter<Batch = Self::Batch>;

    /// The projection this read model belongs to.
    fn projection(&self) -> &str;

    /// Takes ownership of the projection's metadata for `fence` (later calls with a lower
    /// fence are refused) and returns its generations. Records `store` as the event store
    /// the read model is built from when none is recorded yet; [`Generations::store`] is
    /// what was recorded before.
    ///
    /// # Errors
    /// [`Error::Fenced`] when a newer owner has claimed it; backend errors.
    fn claim(&self, fence: Fence, store: Uuid) -> impl Future<Output = Result<Generations>> + Send;

    /// The generations and the recorded store, read without claiming anything (for a status
    /// read from another process).
    ///
    /// # Errors
    /// Backend errors.
    fn peek_generations(&self) -> impl Future<Output = Result<Generations>> + Send;

    /// The committed checkpoint of `generation`, read without claiming anything (`None`
    /// when it has processed nothing, or does not exist).
    ///
    /// # Errors
    /// Backend errors.
    fn peek_checkpoint(
        &self,
        generation: Generation,
    ) -> impl Future<Output = Result<Option<LogPosition>>> + Send;

    /// Deletes every generation and records `store` as the store the read model is built
    /// from: readers see no model until the next build switches one in. Used when the store
    /// under the read model was replaced.
    ///
    /// # Errors
    /// [`Error::Fenced`]; backend errors.
    fn reset(&self, fence: Fence, store: Uuid) -> impl Future<Output = Result<()>> + Send;

    /// The dead letters of the generation readers use, oldest first.
    ///
    /// # Errors
    /// Backend errors.
    fn dead_letters(&self) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Returns the generation being built, starting a new one (numbered above every earlier
    /// one) when none is.
    ///
    /// # Errors
    /// [`Error::Fenced`]; backend errors.
    fn begin_build(&self, fence: Fence) -> impl Future<Output = Result<Generation>> + Send;

    /// Opens a writer into `generation`, claiming it for `fence`; the writer knows the
    /// generation's stored checkpoint.
    ///
    /// # Errors
    /// [`Error::Fenced`]; backend errors.
    fn open_writer(
        &self,
        generation: Generation,
        fence: Fence,
    ) -> impl Future<Output = Result<Self::Writer>> + Send;

    /// Makes `generation` the one readers use, in one atomic step, and returns the one it
    /// replaces.
    ///
    /// # Errors
    /// [`Error::Fenced`]; backend errors.
    fn switch(
        &self,
        generation: Generation,
        fence: Fence,
    ) -> impl Future<Output = Result<Option<Generation>>> + Send;

    /// Deletes a generation that no reader uses any more (and forgets it as `retired`).
    ///
    /// # Errors
    /// Backend errors.
    fn drop_generation(&self, generation: Generation) -> impl Future<Output = Result<()>> + Send;
}

/// Writes batches into one generation.
pub trait GenerationWriter: Send + 'static {
    /// What a handler fills.
    type Batch: WriteBatch;

    /// The generation's committed checkpoint: the last position it has processed.
    fn checkpoint(&self) -> Option<LogPosition>;

    /// An empty batch.
    fn batch(&self) -> Self::Batch;

    /// The stored values of `keys` (see [`Lookups`]), in order, as of the last write of this
    /// writer (including deferred writes not yet committed); `None` for a key with no value.
    /// One round trip at most.
    ///
    /// # Errors
    /// Backend errors.
    fn load_lookups(
        &mut self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send;

    /// How many dead letters the generation holds, as of the last write of this writer.
    ///
    /// # Errors
    /// Backend errors.
    fn dead_letter_count(&mut self) -> impl Future<Output = Result<u64>> + Send;

    /// Writes `batch` with the checkpoint `through` (the last position the batch covers).
    /// Returns the committed checkpoint after the call: `through` when the write was
    /// committed, an earlier one (or `None`) when it was deferred. A deferred write may fail
    /// later, in a following `write` or `flush`.
    ///
    /// # Errors
    /// [`Error::Fenced`], [`Error::CheckpointMoved`] (nothing written), backend errors.
    fn write(
        &mut self,
        batch: Self::Batch,
        through: LogPosition,
        durability: Durability,
    ) -> impl Future<Output = Result<Option<LogPosition>>> + Send;

    /// Commits deferred writes; returns the committed checkpoint.
    ///
    /// # Errors
    /// As [`GenerationWriter::write`].
    fn flush(&mut self) -> impl Future<Output = Result<Option<LogPosition>>> + Send;

    /// Whether the target still answers, asked by the runner while the worker has had no
    /// event for [`RunnerConfig::idle_check`](crate::RunnerConfig::idle_check), under its
    /// I/O bound. An error ends the worker's run like a failed write (shown as `Retrying`
    /// with the error, then restarted with backoff), so an outage shows in the status even
    /// when nothing is written. The default answers `Ok` without asking: targets that a
    /// failed write reports soon enough need nothing more. A message broker, whose
    /// connection is otherwise used only when an event comes, checks its session.
    ///
    /// # Errors
    /// The target is unreachable, or its connection broke.
    fn check(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// How many dead letters this writer parked by itself in its writes since the last call
    /// (a publisher parks the messages its broker refused), so that the status counts them
    /// with the ones parked by the handler. The default: none.
    fn take_parked(&mut self) -> u64 {
        0
    }
}

/// Encodes a checkpoint as `commit:sequence` ("" for none).
#[cfg_attr(not(any(feature = "redis", feature = "tantivy")), allow(dead_code))]
pub(crate) fn encode_checkpoint(position: Option<LogPosition>) -> String {
    position.map_or_else(String::new, |p| format!("{}:{}", p.commit, p.sequence))
}

/// Parses [`encode_checkpoint`]'s text.
#[cfg_attr(not(any(feature = "redis", feature = "tantivy")), allow(dead_code))]
pub(crate) fn decode_checkpoint(text: &str) -> Result<Option<LogPosition>> {
    if text.is_empty() {
        return Ok(None);
    }
    let corrupt = || Error::Corrupt {
        what: format!("checkpoint {text:?}"),
    };
    let (commit, sequence) = text.split_once(':').ok_or_else(corrupt)?;
    Ok(Some(LogPosition::new(
        commit.parse().map_err(|_| corrupt())?,
        sequence.parse().map_err(|_| corrupt())?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        for p in [None, Some(LogPosition::new(7, 3)), Some(LogPosition::START)] {
            assert_eq!(decode_checkpoint(&encode_checkpoint(p)).unwrap(), p);
        }
        assert!(decode_checkpoint("12").is_err());
        assert!(decode_checkpoint("a:b").is_err());
    }
}
