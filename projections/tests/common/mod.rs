//! Fixtures shared by the integration tests: events, projections, service connections.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use annals::{
    BoxError, EventStore, EventType, ExpectedVersion, InMemoryEventStore, LogPosition, NewEvent,
    Payload, RecordedEvent, StreamId,
};
use annals_projections::{
    Error, EventFilter, Generation, Projection, ProjectionConfig, ProjectionRunner,
    ProjectionState, ReadModel, RedisBatch, RedisConnection, RedisReadModel, RunnerConfig,
    TantivyBatch, TantivyConfig, TantivyReadModel,
};
use serde::Deserialize;
use tantivy::{
    TantivyDocument,
    schema::{Field, STORED, STRING, Schema, TEXT, Value},
};

/// A random name for a Redis namespace or schema.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Connects to REDIS_URL, or `None` (with a notice) when Redis is down and CI is unset.
pub async fn redis() -> Option<RedisConnection> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match tokio::time::timeout(Duration::from_secs(5), RedisConnection::single(&url)).await {
        Ok(Ok(c)) => Some(c),
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "Redis is unreachable at {url} ({other:?}); start it with scripts/services.sh"
            );
            eprintln!("notice: Redis unreachable at {url}, skipping");
            None
        }
    }
}

/// Deletes every key of a test namespace.
pub async fn cleanup_redis(connection: &RedisConnection, namespace: &str) {
    let mut c = connection.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{namespace}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
    }
}

#[derive(Deserialize)]
pub struct Deposit {
    pub account: String,
    pub amount: i64,
    pub memo: String,
}

/// A `Deposited` event, or a `Poison` one, or `Noise` (filtered out).
pub fn deposit(account: &str, amount: i64, memo: &str) -> NewEvent {
    let json = serde_json::json!({ "account": account, "amount": amount, "memo": memo });
    NewEvent::new(
        EventType::new("Deposited").unwrap(),
        1,
        Payload::from_serialize(&json).unwrap(),
    )
}

pub fn typed(event_type: &str) -> NewEvent {
    NewEvent::new(
        EventType::new(event_type).unwrap(),
        1,
        Payload::from_json("{}").unwrap(),
    )
}

/// Appends `n` deposits over 37 accounts, one event per append, with a `Noise` event every
/// tenth. Returns the last position.
pub async fn seed(store: &InMemoryEventStore, from: usize, n: usize) -> LogPosition {
    let mut last = LogPosition::START;
    for i in from..from + n {
        let account = format!("acc-{}", i % 37);
        let stream = StreamId::new(&account).unwrap();
        let mut events = vec![deposit(
            &account,
            (i % 11) as i64 + 1,
            &format!("memo word{} number{i}", i % 5),
        )];
        if i % 10 == 0 {
            events.push(typed("Noise"));
        }
        last = store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap()
            .last_position;
    }
    last
}

/// A new store holding `n` deposits, as [`seed`] appends them.
pub async fn seeded_store(n: usize) -> InMemoryEventStore {
    let store = InMemoryEventStore::new();
    seed(&store, 0, n).await;
    store
}

/// Appends one event of type `event_type` (empty payload) to `stream`; returns its position.
pub async fn append_typed(
    store: &InMemoryEventStore,
    stream: &str,
    event_type: &str,
) -> LogPosition {
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![typed(event_type)],
        )
        .await
        .unwrap()
        .last_position
}

/// A new store with one odd event between deposits: `before` deposits, one `event_type`
/// event on `stream` (a `Poison`, `Panic`, `Flaky` … for the handler to trip over), then
/// `after` more. Returns the store, the odd event's position and the last position.
pub async fn store_with_odd_event(
    before: usize,
    stream: &str,
    event_type: &str,
    after: usize,
) -> (InMemoryEventStore, LogPosition, LogPosition) {
    let store = seeded_store(before).await;
    let odd = append_typed(&store, stream, event_type).await;
    let last = if after == 0 {
        odd
    } else {
        seed(&store, before, after).await
    };
    (store, odd, last)
}

/// A runner over `store` with `config` that already runs `projection` into `model`.
pub fn runner_with<S: EventStore + Clone + 'static, P: Projection>(
    store: &S,
    config: RunnerConfig,
    projection: P,
    model: P::Model,
    projection_config: ProjectionConfig,
) -> ProjectionRunner<S> {
    let runner = ProjectionRunner::new(store.clone()).with_config(config);
    runner.add(projection, model, projection_config).unwrap();
    runner
}

/// The usual Redis setup: a `balances` read model in namespace `ns` and a runner with
/// `config` running [`Balances`] (named `balances`) into it with `projection_config`.
pub fn run_balances<S: EventStore + Clone + 'static>(
    store: &S,
    redis: &RedisConnection,
    ns: &str,
    config: RunnerConfig,
    projection_config: ProjectionConfig,
) -> (ProjectionRunner<S>, RedisReadModel) {
    let model = RedisReadModel::with_namespace(redis.clone(), ns, "balances").unwrap();
    let runner = runner_with(
        store,
        config,
        Balances::new("balances"),
        model.clone(),
        projection_config,
    );
    (runner, model)
}

/// Begins generation 1 of `model` for fence 1 and opens a writer into it, as a first owner
/// would.
pub async fn begin_writing<M: ReadModel>(model: &M) -> (Generation, M::Writer) {
    let generation = model.begin_build(1).await.unwrap();
    let writer = model.open_writer(generation, 1).await.unwrap();
    (generation, writer)
}

/// Asserts that the owner with fence 1 is locked out of `model` once fence 2 holds
/// `generation`: `err` (what its last call returned) is `Fenced { fence: 1, stored: 2 }`,
/// and its switch and claim are refused as ownership lost.
pub async fn assert_fenced_out<M: ReadModel>(model: &M, generation: Generation, err: Error) {
    assert!(
        matches!(
            err,
            Error::Fenced {
                fence: 1,
                stored: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        model
            .switch(generation, 1)
            .await
            .unwrap_err()
            .is_ownership_lost()
    );
    assert!(
        model
            .claim(1, uuid::Uuid::nil())
            .await
            .unwrap_err()
            .is_ownership_lost()
    );
}

/// Balances in Redis: a hash per account with counters, a ranking, a capped recent list, a
/// global counter, a set of accounts. Everything non-idempotent, so doubles would show.
#[derive(Clone, Default)]
pub struct Balances {
    pub name: String,
    /// Handler calls for events of type `Flaky` so far; fails while below `flaky_failures`.
    pub flaky_calls: Arc<AtomicU32>,
    pub flaky_failures: u32,
}

impl Balances {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }
}

impl Projection for Balances {
    type Model = RedisReadModel;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        EventFilter::types(["Deposited", "Poison", "Panic", "Flaky"])
    }

    fn handle(&self, event: &RecordedEvent, batch: &mut RedisBatch) -> Result<(), BoxError> {
        match event.event_type.as_str() {
            "Deposited" => {
                let d: Deposit = event.payload.deserialize()?;
                let key = format!("account:{}", d.account);
                batch.hincrby(&key, "balance", d.amount);
                batch.hincrby(&key, "deposits", 1);
                batch.zincrby("ranking", &d.account, d.amount as f64);
                batch.push_recent("recent", event.event_id.to_string(), 25);
                batch.incrby("total", d.amount);
                batch.sadd("accounts", &d.account);
                Ok(())
            }
            "Poison" => {
                batch.incrby("total", 1_000_000);
                Err("poison event".into())
            }
            "Panic" => panic!("handler exploded"),
            "Flaky" => {
                let n = self.flaky_calls.fetch_add(1, Ordering::SeqCst);
                if n < self.flaky_failures {
                    Err(format!("flaky failure {n}").into())
                } else {
                    batch.incrby("flaky", 1);
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

/// Every key of the current generation with its contents, as text.
pub async fn dump_redis(model: &RedisReadModel) -> BTreeMap<String, String> {
    let view = model.view().await.unwrap().expect("a current generation");
    let mut c = view.connection();
    let mut out = BTreeMap::new();
    for key in model.keys(&view).await.unwrap() {
        let full = view.key(&key);
        let kind: String = redis::cmd("TYPE")
            .arg(&full)
            .query_async(&mut c)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "hash" => {
                let mut v: Vec<(String, String)> = view.hash(&key).await.unwrap();
                v.sort();
                format!("{v:?}")
            }
            "zset" => format!("{:?}", view.top(&key, 10_000).await.unwrap()),
            "list" => format!("{:?}", view.list(&key).await.unwrap()),
            "set" => format!("{:?}", view.members(&key).await.unwrap()),
            _ => format!("{:?}", view.get(&key).await.unwrap()),
        };
        out.insert(key, value);
    }
    out
}

/// What `Balances` should hold for the deposits in `store`: account -> (balance, deposits).
pub async fn expected_balances(store: &InMemoryEventStore) -> BTreeMap<String, (i64, i64)> {
    use futures::TryStreamExt;
    let events: Vec<RecordedEvent> = store
        .read_all(annals::LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.event_type.as_str() == "Deposited")
    {
        let d: Deposit = e.payload.deserialize().unwrap();
        let entry = out.entry(d.account).or_insert((0, 0));
        entry.0 += d.amount;
        entry.1 += 1;
    }
    out
}

/// The sum of all deposits in `store`: what `Balances` should hold under `total`.
pub async fn expected_total(store: &InMemoryEventStore) -> i64 {
    expected_balances(store)
        .await
        .values()
        .map(|(b, _)| b)
        .sum()
}

/// Checks the balances hashes against the store.
pub async fn assert_balances(model: &RedisReadModel, store: &InMemoryEventStore) {
    let view = model.view().await.unwrap().expect("a current generation");
    for (account, (balance, deposits)) in expected_balances(store).await {
        let key = format!("account:{account}");
        assert_eq!(
            view.field(&key, "balance").await.unwrap(),
            Some(balance.to_string()),
            "{key}"
        );
        assert_eq!(
            view.field(&key, "deposits").await.unwrap(),
            Some(deposits.to_string()),
            "{key}"
        );
    }
}

/// Search documents in tantivy: one per deposit (id = event id) and one per account holding
/// its latest memo.
#[derive(Clone)]
pub struct Search {
    pub name: String,
    pub id: Field,
    pub account: Field,
    pub memo: Field,
    pub kind: Field,
}

impl Search {
    pub fn new(name: &str) -> (Self, Schema) {
        let mut builder = Schema::builder();
        let id = builder.add_text_field("id", STRING | STORED);
        let account = builder.add_text_field("account", STRING | STORED);
        let memo = builder.add_text_field("memo", TEXT | STORED);
        let kind = builder.add_text_field("kind", STRING | STORED);
        let schema = builder.build();
        (
            Self {
                name: name.to_owned(),
                id,
                account,
                memo,
                kind,
            },
            schema,
        )
    }

    pub fn open(&self, root: &std::path::Path, schema: Schema) -> TantivyReadModel {
        let config = TantivyConfig::new()
            .with_memory_budget(50 << 20)
            .with_threads(1)
            .with_commit_interval(Duration::from_millis(20));
        TantivyReadModel::open(root, &self.name, schema, self.id, config).unwrap()
    }
}

impl Projection for Search {
    type Model = TantivyReadModel;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        EventFilter::types(["Deposited", "Poison"])
    }

    fn handle(&self, event: &RecordedEvent, batch: &mut TantivyBatch) -> Result<(), BoxError> {
        if event.event_type.as_str() == "Poison" {
            return Err("poison event".into());
        }
        let d: Deposit = event.payload.deserialize()?;
        let mut doc = TantivyDocument::new();
        doc.add_text(self.account, &d.account);
        doc.add_text(self.memo, &d.memo);
        doc.add_text(self.kind, "deposit");
        batch.upsert(event.event_id.to_string(), doc);
        let mut latest = TantivyDocument::new();
        latest.add_text(self.account, &d.account);
        latest.add_text(self.memo, &d.memo);
        latest.add_text(self.kind, "account");
        batch.upsert(format!("account:{}", d.account), latest);
        Ok(())
    }
}

/// Every document of the current tantivy generation: id -> (kind, account, memo).
pub fn dump_tantivy(
    model: &TantivyReadModel,
    search: &Search,
) -> BTreeMap<String, (String, String, String)> {
    let view = model.view().unwrap().expect("a current generation");
    let hits = view.search(&tantivy::query::AllQuery, 1_000_000).unwrap();
    let text = |doc: &TantivyDocument, f: Field| {
        doc.get_first(f)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut out = BTreeMap::new();
    for hit in hits {
        let id = text(&hit.document, search.id);
        let previous = out.insert(
            id.clone(),
            (
                text(&hit.document, search.kind),
                text(&hit.document, search.account),
                text(&hit.document, search.memo),
            ),
        );
        assert!(previous.is_none(), "document {id} is in the index twice");
    }
    out
}

/// Waits (up to a minute) until `check` holds for the projection's status.
pub async fn wait_status<S: EventStore + Clone + 'static>(
    runner: &ProjectionRunner<S>,
    name: &str,
    check: impl Fn(&annals_projections::ProjectionStatus) -> bool,
) -> annals_projections::ProjectionStatus {
    let mut rx = runner.watch(name).unwrap();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if check(&s) {
                    return s.clone();
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    match found {
        Ok(s) => s,
        Err(_) => panic!("status never matched; last: {:?}", runner.status(name)),
    }
}

pub fn is_stopped(s: &annals_projections::ProjectionStatus) -> bool {
    matches!(s.state, ProjectionState::Stopped(_))
}
