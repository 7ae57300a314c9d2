//! The SQL table read models beyond the shared suite: batches that are refused or fail
//! write nothing, placeholders and names are checked, values keep their types, generations
//! own their tables and take them along when dropped, errors are classified.

mod common;

use std::time::{Duration, Instant};

use annals::LogPosition;
use annals_projections::{DeadLetter, Durability, Error, GenerationWriter, ReadModel, WriteBatch};
use annals_projections_sql::{
    PgTables, SqlBatch, SqlError, SqlRow, SqlSchema, SqlValue, SqlView, SqliteTables,
};
use common::{drop_schemas_now, postgres, sqlite, unique};
use uuid::Uuid;

fn schema() -> SqlSchema {
    SqlSchema::new()
        .table(
            "accounts",
            "CREATE TABLE {accounts} (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)",
        )
        .index(
            "accounts_by_balance",
            "CREATE INDEX {accounts_by_balance} ON {accounts} (balance)",
        )
}

fn deposit(batch: &mut SqlBatch, id: &str, amount: i64) {
    batch
        .execute(
            "INSERT INTO {accounts} (id, balance) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET balance = {accounts}.balance + excluded.balance",
            [SqlValue::from(id), amount.into()],
        )
        .unwrap();
}

fn letter(sequence: u64) -> DeadLetter {
    DeadLetter {
        projection: "bank".into(),
        position: LogPosition::serial(sequence),
        event_id: Uuid::new_v4(),
        event_type: "Deposited".into(),
        stream_id: "acct-1".into(),
        stream_version: 1,
        error: "boom".into(),
        attempts: 1,
        parked_at: time::OffsetDateTime::now_utc(),
    }
}

/// What the tests need of a backend beyond the [`ReadModel`] contract.
trait Backend {
    type Model: ReadModel<Batch = SqlBatch> + Clone;
    async fn model(&self, projection: &str) -> Self::Model;
    async fn view(&self, model: &Self::Model) -> Option<SqlView>;
    /// `(id, balance)` of every account readers see.
    async fn accounts(&self, model: &Self::Model) -> Vec<(String, i64)>;
    /// The tables and schemas that exist for generation `n`'s.
    async fn objects_of(&self, projection: &str, n: u64) -> usize;
}

struct Pg {
    pool: sqlx::PgPool,
    namespace: String,
}

impl Backend for Pg {
    type Model = PgTables;
    async fn model(&self, projection: &str) -> PgTables {
        PgTables::new(self.pool.clone(), &self.namespace, projection, schema()).unwrap()
    }
    async fn view(&self, model: &PgTables) -> Option<SqlView> {
        model.view().await.unwrap()
    }
    async fn accounts(&self, model: &PgTables) -> Vec<(String, i64)> {
        let Some(view) = model.view().await.unwrap() else {
            return Vec::new();
        };
        sqlx::query_as(sqlx::AssertSqlSafe(
            view.sql("SELECT id, balance FROM {accounts} ORDER BY id")
                .unwrap(),
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
    async fn objects_of(&self, projection: &str, n: u64) -> usize {
        let (count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
                .bind(format!("{}_{projection}_g{n}", self.namespace))
                .fetch_one(&self.pool)
                .await
                .unwrap();
        count as usize
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        drop_schemas_now(&self.namespace);
    }
}

struct Lite {
    pool: sqlx::SqlitePool,
    _dir: tempfile::TempDir,
}

impl Backend for Lite {
    type Model = SqliteTables;
    async fn model(&self, projection: &str) -> SqliteTables {
        SqliteTables::new(self.pool.clone(), projection, schema()).unwrap()
    }
    async fn view(&self, model: &SqliteTables) -> Option<SqlView> {
        model.view().await.unwrap()
    }
    async fn accounts(&self, model: &SqliteTables) -> Vec<(String, i64)> {
        let Some(view) = model.view().await.unwrap() else {
            return Vec::new();
        };
        sqlx::query_as(sqlx::AssertSqlSafe(
            view.sql("SELECT id, balance FROM {accounts} ORDER BY id")
                .unwrap(),
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
    async fn objects_of(&self, projection: &str, n: u64) -> usize {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM sqlite_master WHERE substr(name, 1, length(?1)) = ?1",
        )
        .bind(format!("{projection}__g{n}__"))
        .fetch_one(&self.pool)
        .await
        .unwrap();
        count as usize
    }
}

async fn pg() -> Option<Pg> {
    Some(Pg {
        pool: postgres().await?,
        namespace: unique("sqlt"),
    })
}

async fn lite() -> Lite {
    let dir = tempfile::tempdir().unwrap();
    Lite {
        pool: sqlite(&dir.path().join("annals.db"), 4).await,
        _dir: dir,
    }
}

/// A stale expected checkpoint and an old fence are refused, and nothing of the refused
/// batch lands: no row, no lookup, no dead letter.
async fn refused_batches_write_nothing(backend: impl Backend) {
    let model = backend.model("bank").await;
    let store = Uuid::new_v4();
    model.claim(1, store).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    let mut a = model.open_writer(g, 1).await.unwrap();
    let mut b = model.open_writer(g, 1).await.unwrap();
    assert_eq!(a.checkpoint(), None);
    let mut batch = a.batch();
    deposit(&mut batch, "alice", 5);
    batch.lookups_mut().set("owner:alice", "Alice").unwrap();
    batch.park(letter(1));
    assert!(!WriteBatch::is_empty(&batch));
    let done = a
        .write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    assert_eq!(done, Some(LogPosition::serial(1)));
    model.switch(g, 1).await.unwrap();

    // b still expects no checkpoint.
    let mut batch = b.batch();
    deposit(&mut batch, "bob", 7);
    batch.lookups_mut().set("owner:bob", "Bob").unwrap();
    batch.park(letter(2));
    let err = b
        .write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap_err();
    match &err {
        Error::CheckpointMoved {
            expected, stored, ..
        } => {
            assert_eq!(*expected, None);
            assert_eq!(*stored, Some(LogPosition::serial(1)));
        }
        other => panic!("expected CheckpointMoved, got {other:?}"),
    }
    assert!(err.is_transient());
    assert_eq!(backend.accounts(&model).await, [("alice".to_owned(), 5)]);
    assert_eq!(model.dead_letters().await.unwrap().len(), 1);
    let keys = ["owner:alice".to_owned(), "owner:bob".to_owned()];
    assert_eq!(
        a.load_lookups(&keys).await.unwrap(),
        [Some("\"Alice\"".to_owned()), None]
    );
    assert_eq!(a.dead_letter_count().await.unwrap(), 1);

    // A new owner: the old one's write is fenced and writes nothing.
    model.claim(2, store).await.unwrap();
    let mut c = model.open_writer(g, 2).await.unwrap();
    assert_eq!(c.checkpoint(), Some(LogPosition::serial(1)));
    let mut batch = a.batch();
    deposit(&mut batch, "alice", 100);
    let err = a
        .write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap_err();
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
    assert!(err.is_ownership_lost());
    assert_eq!(backend.accounts(&model).await, [("alice".to_owned(), 5)]);
    assert!(
        model
            .open_writer(g, 1)
            .await
            .err()
            .is_some_and(|e| e.is_ownership_lost())
    );
    assert!(model.begin_build(1).await.unwrap_err().is_ownership_lost());
    assert!(model.reset(1, store).await.unwrap_err().is_ownership_lost());

    // The new owner writes, unparks the letter in the same write, removes a lookup.
    let parked = model.dead_letters().await.unwrap()[0].event_id;
    let mut batch = c.batch();
    deposit(&mut batch, "alice", 1);
    batch.unpark(parked);
    batch.lookups_mut().remove("owner:alice");
    c.write(batch, LogPosition::serial(3), Durability::Deferred)
        .await
        .unwrap();
    assert_eq!(c.flush().await.unwrap(), Some(LogPosition::serial(3)));
    assert_eq!(backend.accounts(&model).await, [("alice".to_owned(), 6)]);
    assert!(model.dead_letters().await.unwrap().is_empty());
    assert_eq!(c.load_lookups(&keys).await.unwrap(), [None, None]);
}

/// A statement the database refuses fails the whole batch: the checkpoint stays, and the
/// batch's other statements, lookups and letters are rolled back.
async fn a_failing_statement_fails_the_whole_batch(backend: impl Backend) {
    let model = backend.model("bank").await;
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    model.switch(g, 1).await.unwrap();
    let mut w = model.open_writer(g, 1).await.unwrap();
    let mut batch = w.batch();
    deposit(&mut batch, "alice", 5);
    batch.lookups_mut().set("k", &1).unwrap();
    batch.park(letter(1));
    batch
        .execute(
            "INSERT INTO {accounts} (id, balance) VALUES ($1, NULL)",
            ["bob".into()],
        )
        .unwrap();
    let err = w
        .write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(backend.accounts(&model).await.is_empty());
    assert!(model.dead_letters().await.unwrap().is_empty());
    let mut w = model.open_writer(g, 1).await.unwrap();
    assert_eq!(w.checkpoint(), None);
    assert_eq!(w.load_lookups(&["k".into()]).await.unwrap(), [None]);
    // The writer still works afterwards.
    let mut batch = w.batch();
    deposit(&mut batch, "alice", 5);
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    assert_eq!(backend.accounts(&model).await, [("alice".to_owned(), 5)]);
}

/// Each generation has its own tables (indexes included); a switch moves readers; dropping
/// a generation drops its tables; a reset drops them all.
async fn generations_own_their_tables(backend: impl Backend) {
    let model = backend.model("bank").await;
    let store = Uuid::new_v4();
    assert!(backend.view(&model).await.is_none());
    model.claim(1, store).await.unwrap();
    let g1 = model.begin_build(1).await.unwrap();
    assert_eq!(
        model.begin_build(1).await.unwrap(),
        g1,
        "one build at a time"
    );
    let mut w = model.open_writer(g1, 1).await.unwrap();
    let mut batch = w.batch();
    deposit(&mut batch, "alice", 1);
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    assert!(backend.view(&model).await.is_none(), "not switched in yet");
    assert_eq!(model.switch(g1, 1).await.unwrap(), None);
    let v1 = backend.view(&model).await.unwrap();
    assert_eq!(v1.generation(), g1);

    let g2 = model.begin_build(1).await.unwrap();
    assert!(g2 > g1);
    let mut w = model.open_writer(g2, 1).await.unwrap();
    let mut batch = w.batch();
    deposit(&mut batch, "bob", 2);
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    assert_eq!(backend.accounts(&model).await, [("alice".to_owned(), 1)]);
    assert_eq!(model.switch(g2, 1).await.unwrap(), Some(g1));
    let v2 = backend.view(&model).await.unwrap();
    assert_ne!(v1.table("accounts").unwrap(), v2.table("accounts").unwrap());
    assert!(v2.table("nope").is_err());
    assert_eq!(backend.accounts(&model).await, [("bob".to_owned(), 2)]);
    let claimed = model.claim(1, Uuid::new_v4()).await.unwrap();
    assert_eq!(claimed.current, Some(g2));
    assert_eq!(claimed.retired, Some(g1));
    assert_eq!(claimed.store, Some(store), "the first store stays recorded");

    assert!(backend.objects_of("bank", g1.0).await > 0);
    model.drop_generation(g1).await.unwrap();
    assert_eq!(backend.objects_of("bank", g1.0).await, 0);
    assert_eq!(model.claim(1, store).await.unwrap().retired, None);

    let other = Uuid::new_v4();
    model.reset(1, other).await.unwrap();
    assert_eq!(backend.objects_of("bank", g2.0).await, 0);
    assert!(backend.view(&model).await.is_none());
    let after = model.claim(1, store).await.unwrap();
    assert_eq!((after.current, after.store), (None, Some(other)));
    let g3 = model.begin_build(1).await.unwrap();
    assert!(g3 > g2, "numbers are never reused");
}

fn add(batch: &mut SqlBatch, id: &str, amount: i64) {
    batch
        .upsert(
            "accounts",
            SqlRow::new().key("id", id).add("balance", amount),
        )
        .unwrap();
}

fn set(batch: &mut SqlBatch, id: &str, balance: i64) {
    batch
        .upsert(
            "accounts",
            SqlRow::new().key("id", id).set("balance", balance),
        )
        .unwrap();
}

fn delete(batch: &mut SqlBatch, id: &str) {
    batch
        .delete_row("accounts", [("id", SqlValue::from(id))])
        .unwrap();
}

fn rows(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Row writes coalesce per key and apply in order with statements; a rolled-back handler's
/// rows are gone; a write to a column the table lacks fails the whole batch.
async fn row_writes_apply_in_order(backend: impl Backend) {
    let model = backend.model("bank").await;
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    model.switch(g, 1).await.unwrap();
    let mut w = model.open_writer(g, 1).await.unwrap();

    let mut batch = w.batch();
    add(&mut batch, "alice", 5);
    set(&mut batch, "bob", 7);
    add(&mut batch, "alice", 2);
    // A statement sees the rows written before it and precedes those after it.
    batch
        .execute(
            "INSERT INTO {accounts} (id, balance) SELECT 'carol', balance FROM {accounts} WHERE id = 'alice'",
            [],
        )
        .unwrap();
    add(&mut batch, "carol", 10);
    delete(&mut batch, "bob");
    add(&mut batch, "dave", 1);
    delete(&mut batch, "dave");
    add(&mut batch, "dave", 3);
    // A handler that failed: its rows are discarded.
    let mark = batch.savepoint();
    add(&mut batch, "alice", 1000);
    delete(&mut batch, "carol");
    set(&mut batch, "mallory", 1);
    batch.rollback_to(mark);
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    assert_eq!(
        backend.accounts(&model).await,
        rows(&[("alice", 7), ("carol", 17), ("dave", 3)])
    );

    let mut batch = w.batch();
    add(&mut batch, "alice", 1);
    set(&mut batch, "erin", 0);
    add(&mut batch, "erin", 4);
    delete(&mut batch, "carol");
    // Deleting a row that does not exist is no error.
    delete(&mut batch, "nobody");
    // More rows than one SQLite statement takes.
    for i in 0..2_500 {
        add(&mut batch, &format!("z{i:04}"), i);
    }
    w.write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap();
    let all = backend.accounts(&model).await;
    assert_eq!(all.len(), 3 + 2_500);
    assert_eq!(
        all[..3],
        rows(&[("alice", 8), ("dave", 3), ("erin", 4)])[..]
    );
    assert_eq!(all[3 + 1_234], ("z1234".to_owned(), 1_234));

    // A column the table does not have (or a value it refuses) fails the whole batch.
    let mut batch = w.batch();
    add(&mut batch, "alice", 1);
    batch
        .upsert("accounts", SqlRow::new().key("id", "x").set("nope", 1))
        .unwrap();
    let err = w
        .write(batch, LogPosition::serial(3), Durability::Now)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    let mut batch = w.batch();
    add(&mut batch, "alice", 1);
    set(&mut batch, "nobody", 1);
    batch
        .upsert(
            "accounts",
            SqlRow::new().key("id", "x").set("balance", SqlValue::Null),
        )
        .unwrap();
    let err = w
        .write(batch, LogPosition::serial(3), Durability::Now)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert_eq!(backend.accounts(&model).await[..3], all[..3]);
    let w = model.open_writer(g, 1).await.unwrap();
    assert_eq!(w.checkpoint(), Some(LogPosition::serial(2)));
}

/// A batch of row writes into one table only (PostgreSQL writes it in the checkpoint's
/// statement): refused by a moved checkpoint or an old fence, it writes nothing; failing
/// in the database, it fails whole, checkpoint and lookups with it.
async fn refused_and_failing_row_writes_write_nothing(backend: impl Backend) {
    let model = backend.model("rows").await;
    let store = Uuid::new_v4();
    model.claim(1, store).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    let mut a = model.open_writer(g, 1).await.unwrap();
    let mut b = model.open_writer(g, 1).await.unwrap();
    let mut batch = a.batch();
    add(&mut batch, "alice", 5);
    add(&mut batch, "alice", 2);
    batch.lookups_mut().set("owner:alice", "Alice").unwrap();
    a.write(batch, LogPosition::serial(1), Durability::Deferred)
        .await
        .unwrap();
    assert_eq!(a.flush().await.unwrap(), Some(LogPosition::serial(1)));
    model.switch(g, 1).await.unwrap();
    assert_eq!(backend.accounts(&model).await, rows(&[("alice", 7)]));

    // b still expects no checkpoint.
    let mut batch = b.batch();
    add(&mut batch, "bob", 7);
    batch.lookups_mut().set("owner:bob", "Bob").unwrap();
    let err = b
        .write(batch, LogPosition::serial(2), Durability::Deferred)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CheckpointMoved { .. }), "{err:?}");

    // A new owner: the old one's row writes are fenced.
    model.claim(2, store).await.unwrap();
    let mut c = model.open_writer(g, 2).await.unwrap();
    let mut batch = a.batch();
    add(&mut batch, "alice", 100);
    let err = a
        .write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap_err();
    assert!(err.is_ownership_lost(), "{err:?}");
    assert_eq!(backend.accounts(&model).await, rows(&[("alice", 7)]));

    // A row the table refuses (NOT NULL) fails the batch: nothing of it lands.
    let mut batch = c.batch();
    add(&mut batch, "carol", 1);
    batch
        .upsert(
            "accounts",
            SqlRow::new()
                .key("id", "dave")
                .add("balance", SqlValue::Null),
        )
        .unwrap();
    batch.lookups_mut().set("owner:carol", "Carol").unwrap();
    assert!(
        c.write(batch, LogPosition::serial(2), Durability::Now)
            .await
            .is_err()
    );
    assert_eq!(c.checkpoint(), Some(LogPosition::serial(1)));
    assert_eq!(backend.accounts(&model).await, rows(&[("alice", 7)]));
    let keys = ["owner:bob".to_owned(), "owner:carol".to_owned()];
    assert_eq!(c.load_lookups(&keys).await.unwrap(), [None, None]);

    // The same writer goes on from its checkpoint.
    let mut batch = c.batch();
    add(&mut batch, "carol", 1);
    c.write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap();
    assert_eq!(
        backend.accounts(&model).await,
        rows(&[("alice", 7), ("carol", 1)])
    );
    let reopened = model.open_writer(g, 2).await.unwrap();
    assert_eq!(reopened.checkpoint(), Some(LogPosition::serial(2)));
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::pg().await else { return };
                    super::$name(backend).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::lite().await).await;
                }
            )*
        }
    };
}

both!(
    refused_batches_write_nothing,
    refused_and_failing_row_writes_write_nothing,
    row_writes_apply_in_order,
    a_failing_statement_fails_the_whole_batch,
    generations_own_their_tables,
);

#[tokio::test]
async fn placeholders_and_names_are_checked_before_io() {
    let backend = lite().await;
    let model = backend.model("bank").await;
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    let w = model.open_writer(g, 1).await.unwrap();
    let mut batch = w.batch();
    let err = batch.execute("DELETE FROM {users}", []).unwrap_err();
    assert!(
        matches!(&err, SqlError::UnknownTable { name } if name == "users"),
        "{err:?}"
    );
    assert!(matches!(
        batch.execute("SELECT '{\"a\": 1}'", []),
        Err(SqlError::Placeholder { .. })
    ));
    assert!(batch.execute("SELECT '{{\"a\": 1}}'", []).is_ok());
    assert_eq!(batch.len(), 1);
    assert_eq!(batch.table("accounts").unwrap(), "\"bank__g1__accounts\"");
    let mapped = Error::from(err);
    assert!(matches!(mapped, Error::Schema { .. }), "{mapped:?}");

    let pool = backend.pool.clone();
    for bad in ["Bank", "a__b", "", "a/b"] {
        let err = SqliteTables::new(pool.clone(), bad, schema()).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{bad}: {err:?}");
    }
    let unknown = SqlSchema::new().table("a", "CREATE TABLE {b} (x INT)");
    assert!(matches!(
        SqliteTables::new(pool.clone(), "p", unknown).unwrap_err(),
        Error::Schema { .. }
    ));
    let upper = SqlSchema::new().table("A", "CREATE TABLE {A} (x INT)");
    assert!(matches!(
        SqliteTables::new(pool, "p", upper).unwrap_err(),
        Error::InvalidName { .. }
    ));

    let lazy = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:5432/test")
        .unwrap();
    for (ns, projection) in [
        ("x; drop", "p"),
        ("1x", "p"),
        ("ns", "a\"b"),
        ("ns", &"p".repeat(60)),
    ] {
        let err = PgTables::new(lazy.clone(), ns, projection, schema()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { .. }),
            "{ns} {projection}: {err:?}"
        );
    }
}

/// Every kind of value is bound with its type: NULL into any column, integers, floats,
/// booleans, text (cast to uuid in SQL), JSON, bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_values_keep_their_types() {
    let Some(backend) = pg().await else { return };
    let schema = SqlSchema::new().table(
        "vals",
        "CREATE TABLE {vals} (id uuid PRIMARY KEY, n bigint, i integer, b boolean,
             f double precision, t text, j jsonb, y bytea, ts timestamptz)",
    );
    let model = PgTables::new(backend.pool.clone(), &backend.namespace, "vals", schema).unwrap();
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    model.switch(g, 1).await.unwrap();
    let mut w = model.open_writer(g, 1).await.unwrap();
    let id = Uuid::new_v4();
    let mut batch = w.batch();
    batch
        .execute(
            "INSERT INTO {vals} VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                id.into(),
                SqlValue::Null,
                7.into(),
                true.into(),
                1.5.into(),
                "héllo".into(),
                serde_json::json!({"a": [1, 2]}).into(),
                vec![0u8, 1, 255].into(),
                SqlValue::Null,
            ],
        )
        .unwrap();
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    let view = model.view().await.unwrap().unwrap();
    type Row = (
        Option<i64>,
        i32,
        bool,
        f64,
        String,
        sqlx::types::Json<serde_json::Value>,
        Vec<u8>,
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(
        view.sql("SELECT n, i, b, f, t, j, y FROM {vals} WHERE id = $1")
            .unwrap(),
    ))
    .bind(id)
    .fetch_one(&backend.pool)
    .await
    .unwrap();
    assert_eq!(row.0, None);
    assert_eq!((row.1, row.2, row.3), (7, true, 1.5));
    assert_eq!(row.4, "héllo");
    assert_eq!(row.5.0, serde_json::json!({"a": [1, 2]}));
    assert_eq!(row.6, [0, 1, 255]);

    // A NUL byte is refused before anything is sent, as a permanent error.
    let mut batch = w.batch();
    batch
        .execute(
            "INSERT INTO {vals} (id, t) VALUES (gen_random_uuid(), $1)",
            ["a\0b".into()],
        )
        .unwrap();
    let err = w
        .write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    let source = std::error::Error::source(&err)
        .and_then(std::error::Error::source)
        .and_then(|s| s.downcast_ref::<SqlError>());
    assert!(matches!(source, Some(SqlError::NulByte)), "{err:?}");
}

/// Upserted values are cast to their columns' types: text into `uuid` and `timestamptz`,
/// integers into `integer`; NULLs fit any column; a column with values of two types is
/// written by two statements; composite keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upserts_keep_their_types() {
    let Some(backend) = pg().await else { return };
    let schema = SqlSchema::new().table(
        "vals",
        "CREATE TABLE {vals} (id uuid, part integer, n bigint, i integer, b boolean,
             f double precision, t text, j jsonb, y bytea, ts timestamptz,
             PRIMARY KEY (id, part))",
    );
    let model = PgTables::new(backend.pool.clone(), &backend.namespace, "vals", schema).unwrap();
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    model.switch(g, 1).await.unwrap();
    let mut w = model.open_writer(g, 1).await.unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut batch = w.batch();
    batch
        .upsert(
            "vals",
            SqlRow::new()
                .key("id", a)
                .key("part", 1)
                .add("n", 5)
                .set("i", 7)
                .set("b", true)
                .add("f", 1.5)
                .set("t", "héllo")
                .set("j", serde_json::json!({"a": [1, 2]}))
                .set("y", vec![0u8, 1, 255])
                .set("ts", "2024-01-02T03:04:05Z"),
        )
        .unwrap();
    batch
        .upsert(
            "vals",
            SqlRow::new()
                .key("id", b)
                .key("part", 1)
                .add("n", SqlValue::Null)
                .set("i", SqlValue::Null)
                .set("b", SqlValue::Null)
                .add("f", SqlValue::Null)
                .set("t", 42)
                .set("j", SqlValue::Null)
                .set("y", SqlValue::Null)
                .set("ts", SqlValue::Null),
        )
        .unwrap();
    batch
        .upsert(
            "vals",
            SqlRow::new().key("part", 1).key("id", a).add("n", 2),
        )
        .unwrap();
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    let mut batch = w.batch();
    batch
        .upsert(
            "vals",
            SqlRow::new()
                .key("id", a)
                .key("part", 1)
                .add("n", 10)
                .add("f", 1.0),
        )
        .unwrap();
    batch
        .upsert("vals", SqlRow::new().key("id", b).key("part", 2))
        .unwrap();
    w.write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap();
    let view = model.view().await.unwrap().unwrap();
    type Row = (
        Uuid,
        i32,
        Option<i64>,
        Option<i32>,
        Option<bool>,
        Option<f64>,
        Option<String>,
        Option<sqlx::types::Json<serde_json::Value>>,
        Option<Vec<u8>>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(
        view.sql(
            "SELECT id, part, n, i, b, f, t, j, y, extract(epoch FROM ts)::bigint
             FROM {vals} ORDER BY id = $1 DESC, part",
        )
        .unwrap(),
    ))
    .bind(a)
    .fetch_all(&backend.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let r = &rows[0];
    assert_eq!(
        (r.0, r.1, r.2, r.3, r.4, r.5),
        (a, 1, Some(17), Some(7), Some(true), Some(2.5))
    );
    assert_eq!(r.6.as_deref(), Some("héllo"));
    assert_eq!(r.7.as_ref().unwrap().0, serde_json::json!({"a": [1, 2]}));
    assert_eq!(r.8.as_deref(), Some(&[0u8, 1, 255][..]));
    assert_eq!(r.9, Some(1_704_164_645));
    let r = &rows[1];
    assert_eq!(
        (r.0, r.1, r.2, r.3, r.4, r.5),
        (b, 1, None, None, None, None)
    );
    assert_eq!(r.6.as_deref(), Some("42"));
    assert!(r.7.is_none() && r.8.is_none() && r.9.is_none());
    assert_eq!((rows[2].0, rows[2].1, rows[2].2), (b, 2, None));

    // A NUL byte is refused before anything is sent.
    let mut batch = w.batch();
    batch
        .upsert(
            "vals",
            SqlRow::new().key("id", a).key("part", 3).set("t", "a\0b"),
        )
        .unwrap();
    let err = w
        .write(batch, LogPosition::serial(3), Durability::Now)
        .await
        .unwrap_err();
    assert!(!err.is_transient());
}

#[tokio::test]
async fn sqlite_upserts_keep_their_types() {
    let backend = lite().await;
    let schema = SqlSchema::new().table(
        "vals",
        "CREATE TABLE {vals} (id TEXT, part INTEGER, n INTEGER, b BOOLEAN, f REAL, j TEXT,
             y BLOB, PRIMARY KEY (id, part))",
    );
    let model = SqliteTables::new(backend.pool.clone(), "vals", schema).unwrap();
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    model.switch(g, 1).await.unwrap();
    let mut w = model.open_writer(g, 1).await.unwrap();
    let mut batch = w.batch();
    batch
        .upsert(
            "vals",
            SqlRow::new()
                .key("id", "x")
                .key("part", 1)
                .add("n", 1)
                .set("b", true)
                .add("f", 1.5)
                .set("j", serde_json::json!([1]))
                .set("y", vec![0u8, 255]),
        )
        .unwrap();
    batch
        .upsert(
            "vals",
            SqlRow::new()
                .key("id", "y")
                .key("part", 1)
                .add("n", SqlValue::Null)
                .set("b", SqlValue::Null),
        )
        .unwrap();
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    let mut batch = w.batch();
    batch
        .upsert(
            "vals",
            SqlRow::new()
                .key("part", 1)
                .key("id", "x")
                .add("n", 2)
                .add("f", 1.0),
        )
        .unwrap();
    batch
        .upsert(
            "vals",
            SqlRow::new().key("id", "y").key("part", 1).add("n", 5),
        )
        .unwrap();
    w.write(batch, LogPosition::serial(2), Durability::Now)
        .await
        .unwrap();
    let view = model.view().await.unwrap().unwrap();
    type Row = (
        String,
        Option<i64>,
        Option<bool>,
        Option<f64>,
        Option<String>,
        Option<Vec<u8>>,
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(
        view.sql("SELECT id, n, b, f, j, y FROM {vals} ORDER BY id")
            .unwrap(),
    ))
    .fetch_all(&backend.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "x".to_owned(),
                Some(3),
                Some(true),
                Some(2.5),
                Some("[1]".to_owned()),
                Some(vec![0, 255])
            ),
            // NULL + 5 is NULL, as in SQL.
            ("y".to_owned(), None, None, None, None, None),
        ]
    );
}

#[tokio::test]
async fn sqlite_values_keep_their_types() {
    let backend = lite().await;
    let schema = SqlSchema::new().table(
        "vals",
        "CREATE TABLE {vals} (id TEXT PRIMARY KEY, n INTEGER, b BOOLEAN, f REAL, j TEXT, y BLOB)",
    );
    let model = SqliteTables::new(backend.pool.clone(), "vals", schema).unwrap();
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    model.switch(g, 1).await.unwrap();
    let mut w = model.open_writer(g, 1).await.unwrap();
    let mut batch = w.batch();
    batch
        .execute(
            "INSERT INTO {vals} VALUES ($1, $2, $3, $4, $5, $6)",
            [
                "x".into(),
                SqlValue::Null,
                true.into(),
                1.5.into(),
                serde_json::json!([1]).into(),
                vec![0u8, 255].into(),
            ],
        )
        .unwrap();
    // Parameters may come in any order and repeat.
    batch
        .execute(
            "INSERT INTO {vals} (id, n, f) VALUES ($2, $1, $1)",
            [3.into(), "y".into()],
        )
        .unwrap();
    w.write(batch, LogPosition::serial(1), Durability::Now)
        .await
        .unwrap();
    let view = model.view().await.unwrap().unwrap();
    type Row = (
        String,
        Option<i64>,
        Option<bool>,
        f64,
        Option<String>,
        Option<Vec<u8>>,
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(
        view.sql("SELECT id, n, b, f, j, y FROM {vals} ORDER BY id")
            .unwrap(),
    ))
    .fetch_all(&backend.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "x".to_owned(),
                None,
                Some(true),
                1.5,
                Some("[1]".to_owned()),
                Some(vec![0, 255])
            ),
            ("y".to_owned(), Some(3), None, 3.0, None, None),
        ]
    );
}

/// Connection failures and a busy SQLite file are transient; the runner retries them.
#[tokio::test]
async fn failures_are_classified() {
    let down = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let model = PgTables::new(down, "ns", "p", schema()).unwrap();
    let err = model.claim(1, Uuid::new_v4()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let holder = sqlite(&path, 1).await;
    let model = SqliteTables::new(holder.clone(), "p", schema()).unwrap();
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_millis(100));
    let impatient = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut lock = holder.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE annals_read_models SET fence = fence")
        .execute(&mut *lock)
        .await
        .unwrap();
    let other = SqliteTables::new(impatient, "p", schema()).unwrap();
    let err = other.claim(2, Uuid::new_v4()).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    lock.rollback().await.unwrap();
    other.claim(2, Uuid::new_v4()).await.unwrap();
}

/// Prints what a write costs beside the same statements in a plain transaction (run with
/// `--nocapture`); asserts only that the overhead is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_write_cost_beside_a_plain_transaction() {
    let Some(backend) = pg().await else { return };
    let model = backend.model("cost").await;
    model.claim(1, Uuid::new_v4()).await.unwrap();
    let g = model.begin_build(1).await.unwrap();
    model.switch(g, 1).await.unwrap();
    let mut w = model.open_writer(g, 1).await.unwrap();
    let table = backend
        .view(&model)
        .await
        .unwrap()
        .table("accounts")
        .unwrap()
        .to_owned();
    let mut position = 0;
    for (statements, batches) in [(1usize, 200usize), (10, 100), (100, 20)] {
        // Warm the statement caches.
        for _ in 0..3 {
            position += 1;
            let mut batch = w.batch();
            deposit(&mut batch, "warm", 1);
            w.write(batch, LogPosition::serial(position), Durability::Now)
                .await
                .unwrap();
        }
        let started = Instant::now();
        for b in 0..batches {
            position += 1;
            let mut batch = w.batch();
            for s in 0..statements {
                deposit(&mut batch, &format!("a{}", (b * statements + s) % 50), 1);
            }
            batch.lookups_mut().set(format!("k{b}"), &b).unwrap();
            w.write(batch, LogPosition::serial(position), Durability::Now)
                .await
                .unwrap();
        }
        let ours = started.elapsed() / batches as u32;
        let sql = format!(
            "INSERT INTO {table} (id, balance) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET balance = {table}.balance + excluded.balance"
        );
        let started = Instant::now();
        for b in 0..batches {
            let mut tx = backend.pool.begin().await.unwrap();
            for s in 0..statements {
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(format!("a{}", (b * statements + s) % 50))
                    .bind(1i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        let raw = started.elapsed() / batches as u32;
        println!(
            "{statements:>3} statements per batch: write {ours:?}, plain transaction {raw:?} ({:.2}x)",
            ours.as_secs_f64() / raw.as_secs_f64()
        );
        assert!(
            ours < raw * 4 + Duration::from_millis(5),
            "{ours:?} vs {raw:?}"
        );
    }
}
