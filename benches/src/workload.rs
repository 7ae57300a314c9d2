//! The events the scenarios write: the same values for the framework and its baseline.

use annals::{Aggregate, ExpectedVersion, Metadata, NewEvent, StreamId};
use uuid::Uuid;

use crate::ledger::{Account, Deposited, LedgerEvent};

/// The stream of account number `n` (`account-acct-000000n`).
///
/// # Panics
/// Never: the id is always valid.
pub fn stream_of(n: u64) -> StreamId {
    StreamId::for_aggregate(Account::TYPE, &crate::ledger::account_id(n)).expect("a valid id")
}

/// Events for one append call: a stream, the version of its first event, the events.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The stream appended to.
    pub stream: StreamId,
    /// The stream version of the first event (1 for a new stream).
    pub first_version: u64,
    /// The events, with fresh ids and empty metadata.
    pub events: Vec<NewEvent>,
}

impl Batch {
    /// The version the stream must be at before this batch.
    pub fn expected(&self) -> ExpectedVersion {
        ExpectedVersion::Exact(self.first_version - 1)
    }
}

/// One batch of the batched append: `size` deposits into the stream of account `k`,
/// versions `1..=size`.
pub fn batch(k: u64, size: usize) -> Batch {
    let events = (0..size as u64)
        .map(|i| LedgerEvent::Deposited(Deposited::sample(k, k * size as u64 + i)).new_event())
        .collect();
    Batch {
        stream: stream_of(k),
        first_version: 1,
        events,
    }
}

/// `events` events in batches of `size`, each batch a new stream (as the batched append and
/// the log fills write them).
pub fn many_streams(events: u64, size: usize) -> Vec<Batch> {
    let size = size.max(1);
    (0..batches(events, size))
        .map(|k| {
            let mut b = batch(k, size);
            b.events
                .truncate((events - k * size as u64).min(size as u64) as usize);
            b
        })
        .collect()
}

/// One stream (account `account`) of `events` events, in batches of `size`.
pub fn one_stream(account: u64, events: u64, size: usize) -> Vec<Batch> {
    let size = size.max(1) as u64;
    let mut out = Vec::new();
    let mut version = 1;
    while version <= events {
        let n = size.min(events - version + 1);
        out.push(Batch {
            stream: stream_of(account),
            first_version: version,
            events: (version..version + n)
                .map(|v| LedgerEvent::Deposited(Deposited::sample(account, v)).new_event())
                .collect(),
        });
        version += n;
    }
    out
}

/// Total events of some batches.
pub fn count(batches: &[Batch]) -> u64 {
    batches.iter().map(|b| b.events.len() as u64).sum()
}

/// The deposits of some batches with their event ids, decoded, as the baselines write them.
///
/// # Errors
/// A payload that is not a deposit.
pub fn deposits(batches: &[Batch]) -> crate::BenchResult<Vec<(Uuid, Deposited)>> {
    let mut out = Vec::with_capacity(count(batches) as usize);
    for b in batches {
        for e in &b.events {
            out.push((e.event_id, e.payload.deserialize()?));
        }
    }
    Ok(out)
}

/// The number of batches of `size` that hold `events` events (rounded up).
pub fn batches(events: u64, size: usize) -> u64 {
    events.div_ceil(size.max(1) as u64)
}

/// A row as the raw baselines store it.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// Stream id text.
    pub stream_id: String,
    /// Version in the stream.
    pub stream_version: i64,
    /// Event id.
    pub event_id: Uuid,
    /// Type name.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: i32,
    /// Payload JSON text.
    pub payload: String,
    /// Metadata JSON text.
    pub metadata: String,
}

impl RawRow {
    /// The row of `event` at `version` in `stream`.
    pub fn of(stream: &StreamId, version: u64, event: &NewEvent) -> Self {
        Self {
            stream_id: stream.as_str().to_owned(),
            stream_version: version as i64,
            event_id: event.event_id,
            event_type: event.event_type.as_str().to_owned(),
            schema_version: event.schema_version as i32,
            payload: event.payload.as_str().to_owned(),
            metadata: metadata_json(&event.metadata),
        }
    }

    /// The rows of a batch.
    pub fn of_batch(batch: &Batch) -> Vec<Self> {
        batch
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| Self::of(&batch.stream, batch.first_version + i as u64, e))
            .collect()
    }
}

fn metadata_json(metadata: &Metadata) -> String {
    metadata.to_json().unwrap_or_else(|_| "{}".to_owned())
}
