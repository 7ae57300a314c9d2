//! Idempotent commands against PostgreSQL: a command whose answer was lost with its
//! connection, retried with its id, is stored once and answered from the store.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use annals::testing::{Counter, CounterCommand, CounterEvent, Intercept, Intercepted};
use annals::{
    AppendResult, CommandContext, CommandError, EventStore, RecordedEvent, Repository, Result,
    Retries, StreamAppend, StreamId, StreamRead, derive_event_id,
};
use annals_postgres::{PgConfig, PgEventStore, TestHooks};
use futures::TryStreamExt;
use sqlx::PgPool;
use uuid::Uuid;

/// The next `drops` appends of a PostgreSQL store commit, and then lose every connection of
/// the store (terminated by the server) before the answer reaches the caller, who gets the
/// transient error a dropped connection gives.
#[derive(Debug, Clone)]
struct DropAfterCommit {
    /// A connection outside the store, to terminate the store's.
    admin: PgPool,
    /// The store's connections carry it as their application name.
    name: String,
    drops: Arc<AtomicUsize>,
    terminated: Arc<AtomicUsize>,
}

impl DropAfterCommit {
    async fn terminate_connections(&self) {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_all(&self.admin)
        .await
        .expect("terminate");
        self.terminated.fetch_add(killed.len(), Ordering::SeqCst);
        // Give the server a moment to close them.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Intercept<PgEventStore> for DropAfterCommit {
    async fn append_multi(
        &self,
        inner: &PgEventStore,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>> {
        let results = inner.append_multi(appends).await?;
        let left = self.drops.load(Ordering::SeqCst);
        if left > 0 {
            self.drops.store(left - 1, Ordering::SeqCst);
            self.terminate_connections().await;
            return Err(annals::Error::backend(
                true,
                "connection terminated by the server after COMMIT, before the reply",
            ));
        }
        Ok(results)
    }
}

type DroppedAfterCommit = Intercepted<PgEventStore, DropAfterCommit>;

/// A fresh store whose connections are named after its schema, wrapped; `None` when
/// PostgreSQL is unreachable outside CI.
async fn dropping_store(config: PgConfig, name: String) -> Option<DroppedAfterCommit> {
    let inner = common::try_store(config).await?;
    let admin = PgEventStore::connect(PgConfig::new(common::database_url()))
        .await
        .expect("admin connection")
        .pool()
        .clone();
    Some(Intercepted::new(
        inner,
        DropAfterCommit {
            admin,
            name,
            drops: Arc::new(AtomicUsize::new(0)),
            terminated: Arc::new(AtomicUsize::new(0)),
        },
    ))
}

/// Runs `command` again while it fails transiently, as a caller does after a dropped
/// connection: reads on the pool's terminated connections fail once each (57P01) before the
/// pool replaces them.
async fn retry_while_transient<T, E, F, Fut>(mut command: F) -> std::result::Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, CommandError<E>>>,
    E: std::fmt::Debug,
{
    let mut attempts = 0;
    loop {
        match command().await {
            Err(e) if e.is_transient() && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(CommandError::Rejected(e)) => return Err(e),
            Err(e) => panic!("the command failed: {e:?}"),
            Ok(done) => return Ok(done),
        }
    }
}

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

async fn stored(store: &impl EventStore, stream: &str) -> Vec<RecordedEvent> {
    // A read may meet a pooled connection that was terminated: read again, as a caller would.
    let mut attempts = 0;
    loop {
        match store
            .read_stream(&sid(stream), StreamRead::forward())
            .try_collect()
            .await
        {
            Err(e) if e.is_transient() && attempts < 20 => attempts += 1,
            read => return read.expect("read"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_retried_with_its_id_after_a_dropped_connection_is_stored_once() {
    let (config, name) = common::named_config();
    let Some(store) = dropping_store(config, name).await else {
        return;
    };
    let repo = Repository::<Counter, _>::new(store.clone());
    repo.execute("acc", CounterCommand::Add(10), &CommandContext::new())
        .await
        .expect("deposit");

    // Withdraw everything; the connection dies after the commit, the answer is lost.
    let ctx = CommandContext::idempotent(Uuid::now_v7());
    store.intercept.drops.store(1, Ordering::SeqCst);
    let lost = repo
        .execute("acc", CounterCommand::Take(10), &ctx)
        .await
        .expect_err("the answer was lost");
    assert!(lost.is_transient(), "{lost:?}");
    assert!(
        store.intercept.terminated.load(Ordering::SeqCst) >= 1,
        "the store's connections were terminated"
    );

    // The caller retries the same command with the same id. On the new state it would be
    // refused (nothing left to take); it is answered from the stored events instead.
    let retry = retry_while_transient(|| repo.execute("acc", CounterCommand::Take(10), &ctx))
        .await
        .expect("the retry is answered");
    assert!(retry.already_applied);
    assert_eq!(retry.events, vec![CounterEvent::Added { amount: -10 }]);
    assert_eq!((retry.state.total, retry.version), (0, 2));

    let events = stored(&store, "counter-acc").await;
    assert_eq!(events.len(), 2, "the withdrawal is stored once: {events:?}");
    let withdrawal = &events[1];
    assert_eq!(
        withdrawal.event_id,
        derive_event_id(ctx.command_id, &sid("counter-acc"), 0)
    );
    assert_eq!(withdrawal.metadata.causation_id, Some(ctx.command_id));
    assert_eq!(
        retry.append,
        Some(AppendResult {
            stream_version: 2,
            first_position: withdrawal.position,
            last_position: withdrawal.position,
        })
    );

    // A third attempt, through a cache, is answered the same way.
    let cached = Repository::<Counter, _>::new(store.clone()).with_cache(8);
    let again = cached
        .execute("acc", CounterCommand::Take(10), &ctx)
        .await
        .expect("answered");
    assert!(again.already_applied);
    assert_eq!(again.append, retry.append);
    assert_eq!(stored(&store, "counter-acc").await.len(), 2);
    store.inner.drop_schema().await.expect("drop schema");
}

/// The repository's own transient retries resend the same append on a new connection: the
/// store's idempotency answers it, and the events are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repositorys_own_retry_after_a_dropped_connection_stores_once() {
    let hooks = TestHooks::default();
    let lose = hooks.lose_results.clone();
    let (config, name) = common::named_config();
    let Some(store) = dropping_store(config.with_test_hooks(hooks), name).await else {
        return;
    };
    let repo = Repository::<Counter, _>::new(store.clone())
        .with_retries(Retries::none().transient(3))
        .with_cache(8);
    let ctx = CommandContext::idempotent(Uuid::now_v7());

    // The connection is killed after the commit, then the store's own hook loses the next
    // answer too: two resends.
    store.intercept.drops.store(1, Ordering::SeqCst);
    lose.store(1, Ordering::SeqCst);
    let done = repo
        .execute("acc", CounterCommand::Add(5), &ctx)
        .await
        .expect("the resent append gets the original result");
    assert!(!done.already_applied, "one call, answered as the first");
    assert_eq!((done.state.total, done.version), (5, 1));
    let events = stored(&store, "counter-acc").await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        done.append.as_ref().map(|a| a.first_position),
        Some(events[0].position)
    );

    // Past a snapshot (every 5 events), the command's event is no longer among the events
    // a load reads; a retry still finds it, by reading the stream backward.
    for _ in 0..6 {
        repo.execute("acc", CounterCommand::Add(1), &CommandContext::new())
            .await
            .expect("add");
    }
    assert!(
        store
            .load_snapshot(&sid("counter-acc"))
            .await
            .expect("snapshot")
            .is_some_and(|s| s.stream_version == 5)
    );
    let fresh = Repository::<Counter, _>::new(store.clone());
    let retry = fresh
        .execute("acc", CounterCommand::Add(5), &ctx)
        .await
        .expect("answered");
    assert!(retry.already_applied);
    assert_eq!(retry.append, done.append);
    assert_eq!((retry.state.total, retry.version), (11, 7));
    assert_eq!(stored(&store, "counter-acc").await.len(), 7);
    store.inner.drop_schema().await.expect("drop schema");
}
