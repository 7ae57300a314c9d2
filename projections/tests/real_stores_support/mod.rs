//! What the real-store tests append and how they check the read models against it: a
//! ledger of every deposit, writers that fill it, and the two read models of a test.

use std::collections::{BTreeMap, BTreeSet};

use annals::{EventStore, ExpectedVersion, LogPosition, StreamAppend, StreamId};
use annals_projections::{
    ProgressDisplay, ProjectionConfig, ProjectionRunner, RedisConnection, RedisReadModel,
    TantivyReadModel,
};
use rand::Rng;

use crate::common::{Balances, Search, deposit, dump_tantivy, typed};

/// The accounts (streams) of one prefix.
const ACCOUNTS: usize = 23;

/// What a test appended, to check the read models against.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    /// account -> (sum of its deposits, number of deposits).
    pub(crate) balances: BTreeMap<String, (i64, i64)>,
    /// The event id of every deposit.
    pub(crate) ids: BTreeSet<String>,
    /// The lowest `first_position` and the highest `last_position` of the appends.
    pub(crate) first: Option<LogPosition>,
    pub(crate) last: LogPosition,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self {
            balances: BTreeMap::new(),
            ids: BTreeSet::new(),
            first: None,
            last: LogPosition::START,
        }
    }

    pub(crate) fn merge(&mut self, other: Ledger) {
        for (account, (sum, count)) in other.balances {
            let entry = self.balances.entry(account).or_insert((0, 0));
            entry.0 += sum;
            entry.1 += count;
        }
        self.ids.extend(other.ids);
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(other.last);
    }
}

/// Makes `appends` appends of `deposits` random deposits each (and a `Noise` event now and
/// then, which the projections filter out). Every third append is an `append_multi` over
/// three streams; the others go to one stream. The streams are `<prefix><n>` for 23 values of
/// `n`, shared with other writers of the same prefix.
pub(crate) async fn write<S: EventStore>(
    store: S,
    prefix: &str,
    appends: usize,
    deposits: usize,
) -> Ledger {
    let mut ledger = Ledger::new();
    for i in 0..appends {
        let streams = if i % 3 == 0 { 3 } else { 1 };
        let mut batch = Vec::new();
        let start = rand::rng().random_range(0..ACCOUNTS);
        for s in 0..streams {
            let account = format!("{prefix}{}", (start + s) % ACCOUNTS);
            let mut events = Vec::new();
            for _ in 0..deposits.div_ceil(streams) {
                let amount = rand::rng().random_range(1..=1000i64);
                let event = deposit(&account, amount, &format!("memo word{}", amount % 7));
                ledger.ids.insert(event.event_id.to_string());
                let entry = ledger.balances.entry(account.clone()).or_insert((0, 0));
                entry.0 += amount;
                entry.1 += 1;
                events.push(event);
            }
            if rand::rng().random_ratio(1, 4) {
                events.push(typed("Noise"));
            }
            let stream = StreamId::new(&account).unwrap();
            batch.push(StreamAppend::new(stream, ExpectedVersion::Any, events));
        }
        for done in store.append_multi(batch).await.unwrap() {
            ledger.first = Some(
                ledger
                    .first
                    .map_or(done.first_position, |f| f.min(done.first_position)),
            );
            ledger.last = ledger.last.max(done.last_position);
        }
    }
    ledger
}

/// Runs `writers` concurrent writers and gathers what they appended.
pub(crate) async fn write_concurrently<S: EventStore + Clone + 'static>(
    store: &S,
    writers: usize,
    appends: usize,
) -> Ledger {
    let tasks: Vec<_> = (0..writers)
        .map(|_| tokio::spawn(write(store.clone(), "acc-", appends, 4)))
        .collect();
    let mut ledger = Ledger::new();
    for task in tasks {
        ledger.merge(task.await.unwrap());
    }
    ledger
}

pub(crate) fn projection_config() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(500)
        .with_page_size(500)
        .with_progress(ProgressDisplay::Silent)
}

/// The two read models of a test: `Balances` in Redis, `Search` in tantivy.
pub(crate) struct Models {
    pub(crate) redis: RedisReadModel,
    pub(crate) search: Search,
    pub(crate) index: TantivyReadModel,
    _dir: tempfile::TempDir,
}

impl Models {
    pub(crate) fn new(redis: &RedisConnection, namespace: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (search, schema) = Search::new("search");
        let index = search.open(dir.path(), schema);
        let redis = RedisReadModel::with_namespace(redis.clone(), namespace, "balances").unwrap();
        Self {
            redis,
            search,
            index,
            _dir: dir,
        }
    }

    pub(crate) fn runner<S: EventStore + Clone + 'static>(&self, store: &S) -> ProjectionRunner<S> {
        let runner = ProjectionRunner::new(store.clone());
        let balances = Balances::new("balances");
        runner
            .add(balances, self.redis.clone(), projection_config())
            .unwrap();
        runner
            .add(self.search.clone(), self.index.clone(), projection_config())
            .unwrap();
        runner
    }

    /// Checks both read models exactly against what was appended.
    pub(crate) async fn check(&self, ledger: &Ledger) {
        let view = self
            .redis
            .view()
            .await
            .unwrap()
            .expect("a current generation");
        for (account, (sum, count)) in &ledger.balances {
            let key = format!("account:{account}");
            let balance = view.field(&key, "balance").await.unwrap();
            let deposits = view.field(&key, "deposits").await.unwrap();
            assert_eq!(balance, Some(sum.to_string()), "balance of {key}");
            assert_eq!(deposits, Some(count.to_string()), "deposits of {key}");
        }
        let total: i64 = ledger.balances.values().map(|(sum, _)| sum).sum();
        assert_eq!(view.get("total").await.unwrap(), Some(total.to_string()));
        let accounts: BTreeSet<String> = self
            .redis
            .keys(&view)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|k| k.strip_prefix("account:").map(str::to_owned))
            .collect();
        assert!(accounts.iter().eq(ledger.balances.keys()), "{accounts:?}");

        // dump_tantivy panics on an id found twice.
        let docs = dump_tantivy(&self.index, &self.search);
        let of_kind = |kind: &str| -> BTreeSet<String> {
            docs.iter()
                .filter(|(_, (k, _, _))| k == kind)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let deposits = of_kind("deposit");
        assert_eq!(deposits.len(), ledger.ids.len(), "one document per deposit");
        assert!(
            deposits == ledger.ids,
            "the documents are the deposits' ids"
        );
        let expected: BTreeSet<String> = ledger
            .balances
            .keys()
            .map(|a| format!("account:{a}"))
            .collect();
        assert_eq!(of_kind("account"), expected);
        assert_eq!(docs.len(), ledger.ids.len() + ledger.balances.len());
    }
}
