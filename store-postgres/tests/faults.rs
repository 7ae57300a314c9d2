//! Faults an operator meets (issue 16): the server down, a forgotten migration, pooled
//! connections killed by the server.

mod common;

use std::time::{Duration, Instant};

use annals::{EventStore, ExpectedVersion, StreamId, testing::new_event};
use annals_postgres::{ConnectFailure, Error, PgConfig, PgEventStore};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use tokio::{net::TcpListener, task::JoinSet};

fn sid(name: &str) -> StreamId {
    StreamId::new(name).expect("a stream id")
}

/// The crate error inside a backend error.
fn pg_error(error: &annals::Error) -> &Error {
    match error {
        annals::Error::Backend { source, .. } => source
            .downcast_ref::<Error>()
            .unwrap_or_else(|| panic!("an annals-postgres error, got {source:?}")),
        other => panic!("a backend error, got {other:?}"),
    }
}

/// A port on which nothing listens (bound once, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn connecting_to_a_server_that_is_down_says_so_at_once() {
    let port = closed_port().await;
    let started = Instant::now();
    let error = PgEventStore::connect(PgConfig::new(format!(
        "postgres://postgres@127.0.0.1:{port}/test"
    )))
    .await
    .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        error.to_string(),
        format!("cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused")
    );
    assert!(matches!(
        error,
        Error::Unreachable {
            reason: ConnectFailure::Refused,
            ..
        }
    ));
    assert!(error.is_transient());
}

/// Forwards TCP connections to PostgreSQL until stopped; stopping closes every forwarded
/// connection and the listening port, as a server that went down.
struct Proxy {
    port: u16,
    tasks: JoinSet<()>,
}

impl Proxy {
    async fn start(upstream: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, tasks }
    }

    /// Drops the listener and every forwarded connection.
    async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

#[tokio::test]
async fn an_append_while_the_server_is_down_names_it_within_seconds() {
    let options: PgConnectOptions = common::database_url().parse().expect("url");
    let proxy = Proxy::start((options.get_host().to_owned(), options.get_port())).await;
    let config = PgConfig::from_options(options.clone().host("127.0.0.1").port(proxy.port))
        .with_schema(common::unique_schema())
        .with_acquire_timeout(Duration::from_secs(2));
    let Some(store) = common::try_store(config).await else {
        return;
    };
    store
        .append(
            &sid("s"),
            ExpectedVersion::Any,
            vec![new_event("E", json!({}))],
        )
        .await
        .expect("append through the proxy");
    let port = proxy.port;
    proxy.stop().await;

    let started = Instant::now();
    let error = store
        .append(
            &sid("s"),
            ExpectedVersion::Any,
            vec![new_event("E", json!({}))],
        )
        .await
        .expect_err("the server is gone");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(
        pg_error(&error).to_string(),
        format!("cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused")
    );
}

#[tokio::test]
async fn a_store_that_was_never_migrated_says_what_is_missing() {
    let config = common::config();
    let store = match PgEventStore::connect(config).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("skipping: PostgreSQL unreachable: {error}");
            return;
        }
    };
    let error = store
        .append(
            &sid("s"),
            ExpectedVersion::Any,
            vec![new_event("E", json!({}))],
        )
        .await
        .expect_err("no tables yet");
    assert!(!error.is_transient(), "{error:?}");
    let missing = pg_error(&error);
    assert!(matches!(missing, Error::NotMigrated { .. }), "{missing:?}");
    assert!(missing.to_string().contains("migrate()"), "{missing}");

    let error = store
        .stream_version(&sid("s"))
        .await
        .expect_err("no tables");
    let missing = pg_error(&error).to_string();
    assert!(
        missing.contains(r#"relation "events" does not exist"#) && missing.contains("migrate()"),
        "{missing}"
    );
    assert!(!error.is_transient());
}

/// Every idle connection of the store's pool (and its direct connection) is terminated by the
/// server; the next appends, sixteen at once that the writers group, all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_succeed_after_every_idle_connection_was_terminated() {
    let (config, name) = common::named_config();
    let Some(store) = common::try_store(config).await else {
        return;
    };
    // Warm the pool: concurrent appends open several connections, a lone one the direct one.
    let warm: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &sid(&format!("warm-{i}")),
                        ExpectedVersion::Any,
                        vec![new_event("E", json!({ "i": i }))],
                    )
                    .await
            })
        })
        .collect();
    for task in warm {
        task.await.expect("task").expect("warm-up append");
    }
    store
        .append(
            &sid("lone"),
            ExpectedVersion::Any,
            vec![new_event("E", json!({}))],
        )
        .await
        .expect("lone append");

    let admin = PgEventStore::connect(PgConfig::new(common::database_url()))
        .await
        .expect("admin connection");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_all(admin.pool())
    .await
    .expect("terminate");
    assert!(
        killed.len() >= 2,
        "the pool held several connections: {killed:?}"
    );
    // Give the server a moment to close them.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let appends: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &sid(&format!("after-{i}")),
                        ExpectedVersion::NoStream,
                        vec![
                            new_event("E", json!({ "i": i })),
                            new_event("E", json!({ "i": i })),
                        ],
                    )
                    .await
            })
        })
        .collect();
    for task in appends {
        let result = task
            .await
            .expect("task")
            .expect("an append after the terminations");
        assert_eq!(result.stream_version, 2);
    }
    // And a lone one, on the direct path.
    store
        .append(
            &sid("lone"),
            ExpectedVersion::Exact(1),
            vec![new_event("E", json!({}))],
        )
        .await
        .expect("lone append after the terminations");
    assert_eq!(
        store
            .stream_version(&sid("after-3"))
            .await
            .expect("version"),
        2
    );
    store.drop_schema().await.expect("drop");
}
