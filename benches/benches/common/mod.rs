//! Shared fixtures of the micro-benchmarks.
#![allow(dead_code, reason = "each micro-benchmark uses a part of these")]

use annals::{EventType, LogPosition, Metadata, Payload, RecordedEvent, StreamId};
use annals_bench::ledger::{Deposited, LedgerEvent};
use time::OffsetDateTime;

/// A stored deposit with the given schema version and payload.
pub(crate) fn recorded(schema_version: u32, payload: Payload, metadata: Metadata) -> RecordedEvent {
    RecordedEvent {
        position: LogPosition::new(1_042, 1_042),
        stream_id: StreamId::new("account-acct-0000042").expect("a valid stream id"),
        stream_version: 7,
        event_id: uuid::Uuid::now_v7(),
        event_type: EventType::new("Deposited").expect("a valid type"),
        schema_version,
        payload,
        metadata,
        recorded_at: OffsetDateTime::now_utc(),
    }
}

/// A sample deposit.
pub(crate) fn deposit() -> LedgerEvent {
    LedgerEvent::Deposited(Deposited::sample(42, 1_234_567))
}

/// Metadata as a command writes it.
pub(crate) fn metadata() -> Metadata {
    annals::CommandContext::new().metadata()
}
