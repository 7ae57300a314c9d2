//! Aggregate apply and handle: rebuilding an account from 10,000 typed deposits.

use annals::Aggregate;
use annals_bench::ledger::{Account, Deposit, Deposited, LedgerEvent};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn aggregate(c: &mut Criterion) {
    let events: Vec<LedgerEvent> = (0..10_000)
        .map(|n| LedgerEvent::Deposited(Deposited::sample(1, n)))
        .collect();
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("apply_10k_events", |b| {
        b.iter(|| {
            let mut account = Account::default();
            for e in black_box(&events) {
                account.apply(e);
            }
            black_box(account)
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("handle_deposit", |b| {
        let account = Account::default();
        b.iter_batched(
            || Deposit(Deposited::sample(1, 7)),
            |cmd| black_box(account.handle(cmd)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
