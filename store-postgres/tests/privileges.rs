//! Least privilege (issue 16): an application role made with `grant_app_role` appends and
//! reads through the store's normal paths, and is refused every statement that could change
//! stored events or bypass the append path.

mod common;

use annals::{EventStore, ExpectedVersion, LogRead, StreamId, testing::new_event};
use annals_postgres::{PgConfig, PgEventStore};
use futures::TryStreamExt;
use serde_json::json;

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_role_appends_and_reads_and_is_refused_everything_else() {
    let Some(owner) = common::try_store(common::config()).await else {
        return;
    };
    let role = format!("app_{}", owner.schema());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE \"{role}\" LOGIN")))
        .execute(owner.pool())
        .await
        .expect("create role");
    owner.grant_app_role(&role).await.expect("grant");

    let url = common::database_url().replacen("postgres@", &format!("{role}@"), 1);
    let app = PgEventStore::connect(PgConfig::new(url).with_schema(owner.schema()))
        .await
        .expect("connect as the app role");

    // Every append path: a lone call (direct), a group of calls each to its own stream
    // (batch), several streams in one call (append_group), and a retry of a stored append.
    app.append(
        &sid("one"),
        ExpectedVersion::NoStream,
        vec![new_event("E", json!({}))],
    )
    .await
    .expect("lone append");
    let many: Vec<_> = (0..16)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                app.append(
                    &sid(&format!("s-{i}")),
                    ExpectedVersion::Any,
                    vec![new_event("E", json!({ "i": i }))],
                )
                .await
            })
        })
        .collect();
    for task in many {
        task.await.expect("task").expect("concurrent append");
    }
    let event = new_event("E", json!({ "x": 1 }));
    let multi = vec![
        annals::StreamAppend::new(sid("a"), ExpectedVersion::Any, vec![event.clone()]),
        annals::StreamAppend::new(
            sid("b"),
            ExpectedVersion::Any,
            vec![new_event("E", json!({}))],
        ),
    ];
    let first = app.append_multi(multi.clone()).await.expect("multi append");
    assert_eq!(app.append_multi(multi).await.expect("retry"), first);
    let log: Vec<_> = app
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .expect("read the log");
    assert_eq!(log.len(), 19);
    assert_eq!(app.stream_version(&sid("one")).await.expect("version"), 1);
    assert_eq!(
        app.store_id().await.expect("id"),
        owner.store_id().await.expect("id")
    );

    for forbidden in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
        "ALTER TABLE events DISABLE TRIGGER events_no_update_delete",
        "DROP TRIGGER events_no_truncate ON events",
        "UPDATE streams SET version = 0",
        "INSERT INTO streams (stream_id, version) VALUES ('x', 1)",
        "DELETE FROM streams",
        "INSERT INTO events (tx, stream_id, stream_version, event_id, event_type, \
           schema_version, payload) VALUES (1, 'one', 2, gen_random_uuid(), 'E', 1, '{}')",
        "SELECT grant_app_role('postgres')",
    ] {
        let error = sqlx::query(forbidden)
            .execute(app.pool())
            .await
            .expect_err(forbidden);
        let code = match &error {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        // 42501 insufficient_privilege; 42501 too for "must be owner of table".
        assert_eq!(code.as_deref(), Some("42501"), "{forbidden}: {error}");
    }
    assert_eq!(
        owner
            .read_all(LogRead::from_start())
            .try_collect::<Vec<_>>()
            .await
            .expect("read")
            .len(),
        19
    );

    app.pool().close().await;
    owner.drop_schema().await.expect("drop");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\"")))
        .execute(owner.pool())
        .await
        .expect("drop role");
}
