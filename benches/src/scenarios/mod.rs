//! Every scenario, in the order they run.

mod broker;
mod memory;
mod pg;
mod pg_raw;
mod pg_store;
mod projection;
mod projection_run;
mod projection_sql;
mod reactor;
mod sqlite;
mod sqlite_store;

use annals::{DomainEvent, EventStore, LogRead};
use futures::TryStreamExt;

use crate::{
    BenchResult,
    ledger::LedgerEvent,
    report::Target,
    runner::{Scenario, Spec, timed},
};

/// One timed replay of a store's whole log of `events` deposits, each decoded into its typed
/// event; events/s. The framework side of every replay scenario.
async fn typed_replay<S: EventStore>(store: &S, events: u64) -> BenchResult<f64> {
    timed(events, async {
        let mut read = store.read_all(LogRead::from_start());
        let mut seen = 0;
        while let Some(recorded) = read.try_next().await? {
            let LedgerEvent::Deposited(d) = LedgerEvent::decode(&recorded)?;
            std::hint::black_box(d);
            seen += 1;
        }
        pg_raw::check_count(seen, events)
    })
    .await
}

const ISSUE3: &str = "issue 3 (PostgreSQL store)";
const ISSUE15: &str = "issue 15 (read models)";
const ISSUE19: &str = "issue 19 (the command path at every concurrency)";
const REACTORS: &str = "reactor issue (one command per event)";
const BROKERS: &str = "broker issue (publishing 1,000,000 events)";

const fn target(min_ratio: f64, source: &'static str) -> Option<Target> {
    Some(Target { min_ratio, source })
}

macro_rules! scenario {
    ($name:literal, $group:literal, $run:path, $target:expr, $what:literal, $baseline:literal) => {
        Scenario {
            spec: Spec {
                name: $name,
                group: $group,
                description: $what,
                baseline: $baseline,
                target: $target,
            },
            run: $run,
        }
    };
}

/// All scenarios.
pub(crate) fn all() -> Vec<Scenario> {
    vec![
        scenario!(
            "memory.append.batched",
            "memory",
            memory::append_batched,
            None,
            "in-memory store: append calls of 1,000 events, 1 writer",
            "pushing the same events into a locked Vec"
        ),
        scenario!(
            "memory.replay",
            "memory",
            memory::replay,
            None,
            "in-memory store: read_all from 0 + decode into typed events",
            "serde decode of the same payload texts"
        ),
        scenario!(
            "memory.command",
            "memory",
            memory::command,
            None,
            "Repository (cached) over the in-memory store: 1 command per stream, 1 task",
            "handle + apply + encode on a HashMap of states"
        ),
        scenario!(
            "pg.append.batched",
            "postgres",
            pg::append_batched,
            target(0.6, ISSUE3),
            "PgEventStore: append calls of 1,000 events (a new stream each), 1 writer",
            "raw COPY of the same rows, 1,000 per statement"
        ),
        scenario!(
            "pg.command.1",
            "postgres",
            pg::command_1,
            target(0.8, ISSUE3),
            "Repository (cached) over PgEventStore: load+handle+append 1 event per command, 10,000 streams, 1 task",
            "raw single-row INSERT transactions, 1 connection"
        ),
        scenario!(
            "pg.command.8",
            "postgres",
            pg::command_8,
            target(1.0, ISSUE19),
            "the same, 8 concurrent tasks",
            "raw single-row INSERT transactions, 8 connections"
        ),
        scenario!(
            "pg.command.64",
            "postgres",
            pg::command_64,
            target(2.0, ISSUE3),
            "the same, 64 concurrent tasks",
            "raw single-row INSERT transactions, 64 connections"
        ),
        scenario!(
            "pg.command.uncached.1",
            "postgres",
            pg::uncached_1,
            target(1.0, ISSUE19),
            "Repository (no cache) over PgEventStore: load+handle+append 1 event per command, 10 commands on each of 1,000 aggregates from empty, 1 task",
            "hand-written sqlx command path: SELECT of the aggregate's events (jsonb), fold, decide, one INSERT (unique stream+version), 1 connection"
        ),
        scenario!(
            "pg.command.uncached.8",
            "postgres",
            pg::uncached_8,
            target(1.0, ISSUE19),
            "the same, 8 concurrent tasks",
            "the same hand-written path, 8 connections"
        ),
        scenario!(
            "pg.command.uncached.64",
            "postgres",
            pg::uncached_64,
            target(1.5, ISSUE19),
            "the same, 64 concurrent tasks",
            "the same hand-written path, 64 connections"
        ),
        scenario!(
            "pg.reactor",
            "postgres",
            reactor::reactor,
            target(0.5, REACTORS),
            "a reactor (PgTables checkpoint, default batch) answering each of 10,000 trigger events by one idempotent command on another aggregate (load+decide+append), from add_reactor until catch_up returns",
            "the same commands by Repository::execute (uncached, plain context), 1 task"
        ),
        scenario!(
            "pg.replay",
            "postgres",
            pg::replay,
            target(1.6, ISSUE19),
            "PgEventStore: read_all from 0 + decode into typed events",
            "raw sqlx scan of a jsonb table with the same events, decoded into the same types"
        ),
        scenario!(
            "pg.load",
            "postgres",
            pg::load_plain,
            target(1.5, ISSUE3),
            "Repository::load of one 10,000-event aggregate, no snapshot (30 loads per run)",
            "raw jsonb scan of the one stream, applied to the aggregate"
        ),
        scenario!(
            "pg.load.snapshot",
            "postgres",
            pg::load_snapshot,
            None,
            "the same with a snapshot 100 events before the end",
            "raw jsonb scan of the one stream, applied to the aggregate"
        ),
        scenario!(
            "sqlite.append.batched",
            "sqlite",
            sqlite::append_batched,
            None,
            "SqliteEventStore: append calls of 1,000 events, 1 writer",
            "raw SQLite transaction of one 1,000-row INSERT (WAL, synchronous=FULL)"
        ),
        scenario!(
            "sqlite.replay",
            "sqlite",
            sqlite::replay,
            None,
            "SqliteEventStore: read_all from 0 + decode into typed events",
            "raw SQLite scan of the same rows, decoded with serde"
        ),
        scenario!(
            "projection.memory.rebuild",
            "projections",
            memory::projection_rebuild,
            None,
            "ledger balances rebuilt from 0 into the in-process model over the in-memory store, one lookup per event (issue 15: at least 1,000,000 events/s)",
            "the same folding into a HashMap of the same events, read and decoded from the same store"
        ),
        scenario!(
            "projection.redis.rebuild",
            "projections",
            projection::redis,
            target(0.7, ISSUE15),
            "ledger projection rebuilt from 0 into Redis (balances hash + ranking), one lookup per event",
            "the same Redis commands pipelined directly, same batch size, one HMGET of the lookups per batch"
        ),
        scenario!(
            "projection.tantivy.rebuild",
            "projections",
            projection::tantivy,
            target(0.6, ISSUE15),
            "ledger search projection rebuilt from 0 into a new tantivy index, one lookup per event",
            "the same documents indexed directly by one writer, one commit, the lookup in a HashMap"
        ),
        scenario!(
            "projection.sql.rebuild",
            "projections",
            projection_sql::rebuild,
            target(0.5, ISSUE15),
            "ledger balances rebuilt from 0 into PgTables in the store's database (one upsert per event, coalesced per batch), one lookup per event",
            "the same rows upserted directly: per batch one SELECT of the lookups, one INSERT ... SELECT FROM unnest ... ON CONFLICT DO UPDATE, one transaction"
        ),
        scenario!(
            "projection.sql.entries.rebuild",
            "projections",
            projection_sql::entries,
            None,
            "ledger entries (one row per event, keyed by event id) rebuilt from 0 into PgTables in the store's database, one lookup per event",
            "the same rows upserted directly: per batch one SELECT of the lookups, one INSERT ... SELECT FROM unnest ... ON CONFLICT DO UPDATE, one transaction"
        ),
        scenario!(
            "nats.publish",
            "brokers",
            broker::nats,
            target(0.5, BROKERS),
            "Publisher (annals-brokers) to NATS JetStream on a ProjectionRunner over the in-memory store: every event, Nats-Msg-Id + Annals-* + traceparent headers, window of 2,048 acks, checkpoint after each batch's acks",
            "bare async-nats: the same subjects and payloads with Nats-Msg-Id, the same window of acks"
        ),
        scenario!(
            "rabbit.publish",
            "brokers",
            broker::rabbit,
            target(0.5, BROKERS),
            "Publisher (annals-brokers) to a RabbitMQ topic exchange (durable queue bound) on a ProjectionRunner over the in-memory store: persistent, mandatory, message_id + Annals-* + traceparent headers, window of 1,024 confirms",
            "bare lapin: the same routing keys and payloads, persistent, mandatory, message_id, the same window of confirms"
        ),
    ]
}
