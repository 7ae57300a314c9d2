//! The inbox conformance suite on PostgreSQL, SQLite and Redis, and the checks particular
//! to each backend. Each test has its own schema, file or key prefix.

mod common;
mod suite;

use std::time::Duration;

use annals_inbox::{
    EffectScript, InboxError, PgInbox, Processed, RedisCommands, RedisEffect, RedisInbox,
    Retention, SqliteInbox,
};
use sqlx::{AssertSqlSafe, PgPool, SqlitePool};
use suite::{Backend, Effect};
use uuid::Uuid;

/// How long [`Effect::Slow`] holds the transaction.
const SLOW: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// A schema of its own; the effect log is the table `effects` beside the inbox's.
struct Postgres {
    pool: PgPool,
    schema: String,
}

async fn postgres() -> Option<Postgres> {
    let pool = common::postgres(12).await?;
    let schema = common::unique("inbox_t_");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA \"{schema}\";
         CREATE TABLE \"{schema}\".effects (consumer text NOT NULL, message_id uuid NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    Some(Postgres { pool, schema })
}

impl Backend for Postgres {
    type Inbox = PgInbox;

    async fn inbox(&self, consumer: &str) -> PgInbox {
        let inbox = PgInbox::new(self.pool.clone(), &self.schema, consumer).unwrap();
        inbox.migrate().await.unwrap();
        inbox
    }

    fn try_inbox(&self, consumer: &str) -> Result<(), InboxError> {
        PgInbox::new(self.pool.clone(), &self.schema, consumer).map(drop)
    }

    async fn deliver(
        &self,
        inbox: &PgInbox,
        id: Uuid,
        effect: Effect,
    ) -> Result<Processed<()>, InboxError> {
        let insert = format!(
            "INSERT INTO \"{}\".effects (consumer, message_id) VALUES ($1, $2)",
            self.schema
        );
        let consumer = inbox.consumer().to_owned();
        inbox
            .process(id, move |tx| {
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(insert))
                        .bind(consumer)
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                    match effect {
                        Effect::Fail => return Err(InboxError::effect("the effect refused")),
                        Effect::Slow => tokio::time::sleep(SLOW).await,
                        Effect::Succeed => {}
                    }
                    Ok(())
                })
            })
            .await
    }

    async fn is_processed(&self, inbox: &PgInbox, id: Uuid) -> bool {
        inbox.is_processed(id).await.unwrap()
    }

    async fn effects(&self, consumer: &str) -> Vec<Uuid> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT message_id FROM \"{}\".effects WHERE consumer = $1 ORDER BY message_id",
            self.schema
        )))
        .bind(consumer)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn prune(&self, inbox: &PgInbox, older_than: Duration) -> Option<u64> {
        Some(inbox.prune(older_than).await.unwrap())
    }

    async fn cleanup(&self) {
        common::drop_schema(&self.pool, &self.schema).await;
    }
}

mod pg {
    crate::inbox_suite!(super::postgres());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_schema_names_are_checked_and_migrate_races() {
    let Some(backend) = postgres().await else {
        return;
    };
    for schema in [
        "",
        "1x",
        "a-b",
        "x\"; DROP SCHEMA public CASCADE; --",
        "pg catalog",
    ] {
        assert!(
            matches!(
                PgInbox::new(backend.pool.clone(), schema, "c"),
                Err(InboxError::InvalidName { what: "schema", .. })
            ),
            "{schema:?}"
        );
    }
    // A schema of its own, created by eight concurrent migrations.
    let schema = common::unique("inbox_m_");
    let migrations: Vec<_> = (0..8)
        .map(|i| {
            let inbox =
                PgInbox::new(backend.pool.clone(), &schema, &format!("consumer-{i}")).unwrap();
            tokio::spawn(async move { inbox.migrate().await })
        })
        .collect();
    for migration in migrations {
        migration.await.unwrap().unwrap();
    }
    let inbox = PgInbox::new(backend.pool.clone(), &schema, "c").unwrap();
    let value = inbox
        .process(Uuid::new_v4(), |tx| {
            Box::pin(async move {
                let (n,): (i64,) = sqlx::query_as("SELECT 41::bigint + 1")
                    .fetch_one(&mut **tx)
                    .await?;
                Ok(n)
            })
        })
        .await
        .unwrap();
    assert_eq!(value, Processed::Done(42));
    common::drop_schema(&backend.pool, &schema).await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_effect_errors_keep_their_type_and_database_errors_their_class() {
    #[derive(Debug, thiserror::Error)]
    #[error("insufficient funds")]
    struct InsufficientFunds;

    let Some(backend) = postgres().await else {
        return;
    };
    let inbox = backend.inbox("typed").await;
    let id = Uuid::new_v4();
    let error = inbox
        .process(id, |_tx| {
            Box::pin(async move { Err::<(), _>(InboxError::effect(InsufficientFunds)) })
        })
        .await
        .unwrap_err();
    assert!(error.effect_error::<InsufficientFunds>().is_some());
    assert!(!error.is_transient());
    // The effect's own SQL error is a database error, rolled back with the id.
    let error = inbox
        .process(id, |tx| {
            Box::pin(async move {
                sqlx::query("SELECT * FROM no_such_table")
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(error, InboxError::Database(_)), "{error:?}");
    assert!(!error.is_transient());
    assert!(!inbox.is_processed(id).await.unwrap());
    // A serialization failure raised by the effect is transient.
    let error = inbox
        .process(id, |tx| {
            Box::pin(async move {
                sqlx::query(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                )
                .execute(&mut **tx)
                .await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(!inbox.is_processed(id).await.unwrap());
    backend.cleanup().await;
}

// ---------------------------------------------------------------------------------------
// SQLite

/// A file of its own; the effect log is the table `effects` beside the inbox's.
struct Sqlite {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pool: SqlitePool,
}

async fn sqlite() -> Option<Sqlite> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let pool = common::sqlite(&path, 8).await;
    sqlx::raw_sql("CREATE TABLE effects (consumer TEXT NOT NULL, message_id BLOB NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    Some(Sqlite {
        _dir: dir,
        path,
        pool,
    })
}

/// The test effect on a SQLite inbox.
async fn sqlite_deliver(
    inbox: &SqliteInbox,
    id: Uuid,
    effect: Effect,
) -> Result<Processed<()>, InboxError> {
    let consumer = inbox.consumer().to_owned();
    inbox
        .process(id, move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO effects (consumer, message_id) VALUES (?1, ?2)")
                    .bind(consumer)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                match effect {
                    Effect::Fail => return Err(InboxError::effect("the effect refused")),
                    Effect::Slow => tokio::time::sleep(SLOW).await,
                    Effect::Succeed => {}
                }
                Ok(())
            })
        })
        .await
}

impl Backend for Sqlite {
    type Inbox = SqliteInbox;

    async fn inbox(&self, consumer: &str) -> SqliteInbox {
        let inbox = SqliteInbox::new(self.pool.clone(), consumer).unwrap();
        inbox.migrate().await.unwrap();
        inbox
    }

    fn try_inbox(&self, consumer: &str) -> Result<(), InboxError> {
        SqliteInbox::new(self.pool.clone(), consumer).map(drop)
    }

    async fn deliver(
        &self,
        inbox: &SqliteInbox,
        id: Uuid,
        effect: Effect,
    ) -> Result<Processed<()>, InboxError> {
        sqlite_deliver(inbox, id, effect).await
    }

    async fn is_processed(&self, inbox: &SqliteInbox, id: Uuid) -> bool {
        inbox.is_processed(id).await.unwrap()
    }

    async fn effects(&self, consumer: &str) -> Vec<Uuid> {
        sqlx::query_scalar("SELECT message_id FROM effects WHERE consumer = ?1 ORDER BY message_id")
            .bind(consumer)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn prune(&self, inbox: &SqliteInbox, older_than: Duration) -> Option<u64> {
        Some(inbox.prune(older_than).await.unwrap())
    }

    async fn cleanup(&self) {
        self.pool.close().await;
    }
}

mod sqlite {
    crate::inbox_suite!(super::sqlite());
}

/// Two pools on one file, as two processes: 40 deliveries of one id racing across them
/// give one effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deliveries_from_two_processes_have_one_effect() {
    let backend = sqlite().await.unwrap();
    let first = backend.inbox("shared").await;
    let other_pool = common::sqlite(&backend.path, 4).await;
    let second = SqliteInbox::new(other_pool.clone(), "shared").unwrap();
    second.migrate().await.unwrap();
    let id = Uuid::new_v4();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let inbox = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move { sqlite_deliver(&inbox, id, Effect::Slow).await })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == Processed::Done(()) {
            done += 1;
        }
    }
    assert_eq!(done, 1);
    assert_eq!(backend.effects("shared").await, vec![id]);
    other_pool.close().await;
}

// ---------------------------------------------------------------------------------------
// Redis

/// The test effect: append the id to the consumer's effect list, or refuse before writing.
const LOG_EFFECT: &str = r"
if ARGV[2] == 'fail' then
  return redis.error_reply('the effect refused')
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
";

/// A key prefix of its own; the effect log is a list per consumer under it.
struct Redis {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    script: EffectScript,
}

async fn redis() -> Option<Redis> {
    Some(Redis {
        connection: common::redis().await?,
        prefix: common::unique("inbox-t-"),
        script: EffectScript::new(LOG_EFFECT),
    })
}

impl Backend for Redis {
    type Inbox = RedisInbox;

    async fn inbox(&self, consumer: &str) -> RedisInbox {
        RedisInbox::new(self.connection.clone(), &self.prefix, consumer).unwrap()
    }

    fn try_inbox(&self, consumer: &str) -> Result<(), InboxError> {
        RedisInbox::new(self.connection.clone(), &self.prefix, consumer).map(drop)
    }

    async fn deliver(
        &self,
        inbox: &RedisInbox,
        id: Uuid,
        effect: Effect,
    ) -> Result<Processed<()>, InboxError> {
        let effect = RedisEffect::new(&self.script)
            .key(inbox.key(&format!("effects:{}", inbox.consumer())))
            .arg(id.to_string())
            .arg(if effect == Effect::Fail { "fail" } else { "ok" });
        Ok(inbox.process(id, effect).await?.map(drop))
    }

    async fn is_processed(&self, inbox: &RedisInbox, id: Uuid) -> bool {
        inbox.is_processed(id).await.unwrap()
    }

    async fn effects(&self, consumer: &str) -> Vec<Uuid> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{{{}}}:effects:{consumer}", self.prefix))
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .unwrap();
        let mut ids: Vec<Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
        ids.sort();
        ids
    }

    async fn prune(&self, _inbox: &RedisInbox, _older_than: Duration) -> Option<u64> {
        None
    }

    async fn cleanup(&self) {
        common::delete_prefix(&self.connection, &self.prefix).await;
    }
}

mod redis_suite {
    crate::inbox_suite!(super::redis());
}

/// Ids with a retention expire: a redelivery within it is a duplicate, after it a new
/// message; the id key carries the time to live, ids kept forever none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ids_expire_after_the_retention() {
    let Some(backend) = redis().await else {
        return;
    };
    let retention = Duration::from_secs(3);
    let inbox = backend
        .inbox("short-memory")
        .await
        .with_retention(Retention::For(retention));
    let id = Uuid::new_v4();
    let processed_at = std::time::Instant::now();
    assert_eq!(
        backend.deliver(&inbox, id, Effect::Succeed).await.unwrap(),
        Processed::Done(())
    );
    let mut connection = backend.connection.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(inbox.id_key(id))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((1..=3000).contains(&ttl), "PTTL {ttl}");
    let duplicate = backend.deliver(&inbox, id, Effect::Succeed).await.unwrap();
    // (Unless this machine took longer than the retention to get here.)
    let late = processed_at.elapsed() >= retention;
    assert!(duplicate.is_duplicate() || late);
    // Expired by Redis's clock within a few seconds of the retention.
    let deadline = processed_at + retention + Duration::from_secs(10);
    while backend.is_processed(&inbox, id).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the id did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        backend.deliver(&inbox, id, Effect::Succeed).await.unwrap(),
        Processed::Done(()),
        "an expired id is new again"
    );
    let expected = if duplicate.is_duplicate() { 2 } else { 3 };
    assert_eq!(backend.effects("short-memory").await, vec![id; expected]);

    let forever = backend.inbox("long-memory").await;
    backend
        .deliver(&forever, id, Effect::Succeed)
        .await
        .unwrap()
        .done()
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(forever.id_key(id))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "an id kept forever has no time to live");
    backend.cleanup().await;
}

/// Commands run in order and their replies come back; a redelivery runs none of them; a
/// command that fails records no id (the commands before it stay: Redis has no rollback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_run_once_and_a_failing_command_records_no_id() {
    let Some(backend) = redis().await else {
        return;
    };
    let inbox = backend.inbox("points").await;
    let points = inbox.key("points");
    let journal = inbox.key("journal");
    let effect = || {
        RedisCommands::new()
            .cmd("HINCRBY")
            .key(&points)
            .arg("alice")
            .arg(10)
            .cmd("RPUSH")
            .key(&journal)
            .arg(vec!["alice +10", "checked"])
            .cmd("GET")
            .key(inbox.key("missing"))
    };
    let id = Uuid::new_v4();
    let done = inbox.process(id, effect()).await.unwrap();
    assert_eq!(
        done,
        Processed::Done(redis::Value::Array(vec![
            redis::Value::Int(10),
            redis::Value::Int(2),
            redis::Value::Nil,
        ]))
    );
    assert!(inbox.process(id, effect()).await.unwrap().is_duplicate());
    let mut connection = backend.connection.clone();
    let balance: i64 = redis::cmd("HGET")
        .arg(&points)
        .arg("alice")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(balance, 10);

    // INCR on a hash fails after the RPUSH before it ran.
    let failing = Uuid::new_v4();
    let error = inbox
        .process(
            failing,
            RedisCommands::new()
                .cmd("RPUSH")
                .key(&journal)
                .arg("partial")
                .cmd("INCR")
                .key(&points),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, InboxError::Redis(_)), "{error:?}");
    assert!(!error.is_transient());
    assert!(!inbox.is_processed(failing).await.unwrap());
    let journal_length: i64 = redis::cmd("LLEN")
        .arg(&journal)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        journal_length, 3,
        "the command before the failing one stays"
    );
    backend.cleanup().await;
}

/// A script that refuses the message with an error reply records no id; its message is
/// the error's; the value a script returns comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_scripts_refuse_and_return() {
    let Some(backend) = redis().await else {
        return;
    };
    let inbox = backend.inbox("withdrawals").await;
    let withdraw = EffectScript::new(
        r"
        local balance = tonumber(redis.call('GET', KEYS[1]) or '0')
        local amount = tonumber(ARGV[1])
        if balance < amount then
          return redis.error_reply('insufficient funds: ' .. balance)
        end
        return redis.call('DECRBY', KEYS[1], amount)
        ",
    );
    let account = inbox.key("account:bob");
    let mut connection = backend.connection.clone();
    let _: () = redis::cmd("SET")
        .arg(&account)
        .arg(50)
        .query_async(&mut connection)
        .await
        .unwrap();
    let (big, small) = (Uuid::new_v4(), Uuid::new_v4());
    let error = inbox
        .process(big, RedisEffect::new(&withdraw).key(&account).arg(80))
        .await
        .unwrap_err();
    match &error {
        InboxError::Refused(message) => assert!(message.contains("insufficient funds: 50")),
        other => panic!("{other:?}"),
    }
    assert!(!error.is_transient());
    assert!(!inbox.is_processed(big).await.unwrap());
    let done = inbox
        .process(small, RedisEffect::new(&withdraw).key(&account).arg(20))
        .await
        .unwrap();
    assert_eq!(done, Processed::Done(redis::Value::Int(30)));
    assert!(
        inbox
            .process(small, RedisEffect::new(&withdraw).key(&account).arg(20))
            .await
            .unwrap()
            .is_duplicate()
    );
    // A script that returns nothing.
    let nothing = EffectScript::new("redis.call('SET', KEYS[1], 'x')");
    assert_eq!(
        inbox
            .process(
                Uuid::new_v4(),
                RedisEffect::new(&nothing).key(inbox.key("x"))
            )
            .await
            .unwrap(),
        Processed::Done(redis::Value::Nil)
    );
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_prefixes_are_checked() {
    let Some(backend) = redis().await else {
        return;
    };
    for prefix in ["", "a:b", "{a}", "a}b", "a b", "*", "x\r\nFLUSHALL"] {
        assert!(
            matches!(
                RedisInbox::new(backend.connection.clone(), prefix, "c"),
                Err(InboxError::InvalidName {
                    what: "key prefix",
                    ..
                })
            ),
            "{prefix:?}"
        );
    }
    // Prefixes that share a beginning do not share ids.
    let (short, long) = (
        RedisInbox::new(backend.connection.clone(), &backend.prefix, "c").unwrap(),
        RedisInbox::new(
            backend.connection.clone(),
            &format!("{}-x", backend.prefix),
            "c",
        )
        .unwrap(),
    );
    let id = Uuid::new_v4();
    let effect = RedisCommands::new().cmd("PING");
    assert!(
        !short
            .process(id, effect.clone())
            .await
            .unwrap()
            .is_duplicate()
    );
    assert!(!long.process(id, effect).await.unwrap().is_duplicate());
    common::delete_prefix(&backend.connection, &format!("{}-x", backend.prefix)).await;
    backend.cleanup().await;
}

/// On a Redis Cluster the id key and the effect's keys (named with `RedisInbox::key`) are
/// in one slot, so the script runs; concurrent deliveries give one effect there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_runs_the_inbox_script_in_one_slot() {
    let Some(cluster) = common::redis_cluster().await else {
        return;
    };
    let prefix = common::unique("inbox-c-");
    let inbox = RedisInbox::new(cluster.clone(), &prefix, "cluster").unwrap();
    let counter = inbox.key("counter");
    let id = Uuid::new_v4();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (inbox, counter) = (inbox.clone(), counter.clone());
            tokio::spawn(async move {
                inbox
                    .process(id, RedisCommands::new().cmd("INCR").key(&counter))
                    .await
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        if !task.await.unwrap().unwrap().is_duplicate() {
            done += 1;
        }
    }
    assert_eq!(done, 1);
    let mut connection = cluster.clone();
    let count: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let _: i64 = redis::cmd("DEL")
        .arg(&[counter, inbox.id_key(id)])
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// `RedisInbox::connect` checks names before connecting and gives a usable inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connect() {
    assert!(matches!(
        RedisInbox::connect("redis://127.0.0.1:1", "a:b", "c").await,
        Err(InboxError::InvalidName { .. })
    ));
    let Some(backend) = redis().await else {
        return;
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let inbox = RedisInbox::connect(&url, &backend.prefix, "connected")
        .await
        .unwrap();
    let id = Uuid::new_v4();
    let effect = RedisCommands::new().cmd("SET").key(inbox.key("k")).arg(1);
    assert!(
        !inbox
            .process(id, effect.clone())
            .await
            .unwrap()
            .is_duplicate()
    );
    assert!(inbox.process(id, effect).await.unwrap().is_duplicate());
    backend.cleanup().await;
}

/// A dead server is a transient error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_transient() {
    let error = RedisInbox::connect("redis://127.0.0.1:1", "p", "c")
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let inbox = PgInbox::new(pool, "s", "c").unwrap();
    let error = inbox
        .process(Uuid::new_v4(), |_tx| Box::pin(async { Ok(()) }))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
}
