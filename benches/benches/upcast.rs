//! The upcaster chain: decoding a `Deposited` stored at v1 (two steps), v2 (one step) and
//! v3 (none, the fast path).

use annals::{DomainEvent, Metadata, Payload};
use annals_bench::ledger::{Deposited, LedgerEvent, deposited_v1_payload};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

mod common;

fn upcast(c: &mut Criterion) {
    let d = Deposited::sample(42, 1_234_567);
    let v1 = common::recorded(1, deposited_v1_payload(&d), Metadata::default());
    let v2_json = serde_json::json!({
        "account": d.account, "amount": d.amount, "currency": d.currency, "memo": d.memo,
    });
    let v2 = common::recorded(
        2,
        Payload::from_stored(v2_json.to_string()),
        Metadata::default(),
    );
    let v3 = common::recorded(
        3,
        common::deposit().to_payload().expect("encodes"),
        Metadata::default(),
    );
    let mut g = c.benchmark_group("upcast");
    g.bench_function("decode_v1_to_v3", |b| {
        b.iter(|| black_box(LedgerEvent::decode(black_box(&v1)).expect("decodes")))
    });
    g.bench_function("decode_v2_to_v3", |b| {
        b.iter(|| black_box(LedgerEvent::decode(black_box(&v2)).expect("decodes")))
    });
    g.bench_function("decode_v3_latest", |b| {
        b.iter(|| black_box(LedgerEvent::decode(black_box(&v3)).expect("decodes")))
    });
    g.bench_function("chain_upcast_v1_only", |b| {
        let chain = LedgerEvent::upcaster_chain();
        b.iter(|| black_box(chain.upcast(black_box(v1.clone())).expect("upcasts")))
    });
    g.finish();
}

criterion_group!(benches, upcast);
criterion_main!(benches);
