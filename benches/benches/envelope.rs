//! Envelope encode/decode: typed event to `NewEvent`, stored `RecordedEvent` to typed event,
//! and the JSON of `RecordedEvent` and `Metadata`.

use annals::{DomainEvent, Metadata, RecordedEvent};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

mod common;

fn envelope(c: &mut Criterion) {
    let event = common::deposit();
    let metadata = common::metadata();
    let payload = event.to_payload().expect("encodes");
    let stored = common::recorded(3, payload, metadata.clone());
    let stored_json = serde_json::to_string(&stored).expect("encodes");
    let metadata_json = metadata.to_json().expect("encodes");

    let mut g = c.benchmark_group("envelope");
    g.bench_function("encode_new_event", |b| {
        b.iter(|| {
            let new = black_box(&event)
                .to_new_event()
                .expect("encodes")
                .with_metadata(metadata.clone());
            black_box(new.metadata.to_json().expect("encodes"))
        })
    });
    g.bench_function("decode_typed_event", |b| {
        b.iter(|| {
            black_box(annals_bench::ledger::LedgerEvent::decode(black_box(
                &stored,
            )))
        })
    });
    g.bench_function("recorded_event_to_json", |b| {
        b.iter(|| black_box(serde_json::to_string(black_box(&stored))))
    });
    g.bench_function("recorded_event_from_json", |b| {
        b.iter(|| {
            black_box(serde_json::from_str::<RecordedEvent>(black_box(
                &stored_json,
            )))
        })
    });
    g.bench_function("metadata_from_json", |b| {
        b.iter(|| black_box(Metadata::from_json(black_box(&metadata_json))))
    });
    g.finish();
}

criterion_group!(benches, envelope);
criterion_main!(benches);
