//! The ledger's events on NATS: `ledger work` publishes them, `ledger notify` (a second
//! process, with a store of its own) consumes them into each account's notification feed.
//! Both are killed with SIGKILL at random points again and again while events are recorded;
//! then both finish, and every account's feed holds each of its events exactly once, in the
//! account's order.
//!
//! Each test has a JetStream stream and subject prefix of its own (deleted afterwards).
//! Without `CI`, an unreachable NATS (`NATS_URL`, default `nats://127.0.0.1:4222`) skips the
//! tests with a notice; with `CI` set they fail.

use std::{
    collections::BTreeMap,
    net::{TcpStream, ToSocketAddrs},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use account_ledger::{domain::account_of, embedded_app};
use annals::{EventStore, LogRead, RecordedEvent};
use futures::TryStreamExt;
use rand::Rng;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn reachable(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split(['/', '?', ',']).next().unwrap_or(rest);
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// A stream and prefix of the test's own, or `None` (a panic under CI) without NATS.
fn nats() -> Option<Nats> {
    let url = nats_url();
    if !reachable(&url) {
        assert!(
            std::env::var_os("CI").is_none(),
            "NATS is unreachable at {url} and CI is set"
        );
        eprintln!("skipping: NATS is unreachable at {url}");
        return None;
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    Some(Nats {
        url,
        stream: format!("LEDGER_T{}", &tag[..12]),
        prefix: format!("ledger-t{}", &tag[..12]),
    })
}

struct Nats {
    url: String,
    stream: String,
    prefix: String,
}

impl Drop for Nats {
    /// Deletes the test's streams (the events and the consumer's dead letters).
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(client) = async_nats::connect(&self.url).await {
                let js = async_nats::jetstream::new(client);
                let _ = js.delete_stream(&self.stream).await;
                let _ = js.delete_stream(format!("{}_DEAD", self.stream)).await;
            }
        });
    }
}

/// `ledger` in the embedded mode over `dir`, with the test's stream.
fn ledger(dir: &Path, nats: &Nats, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledger"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["--nats-url", &nats.url])
        .args(["--nats-stream", &nats.stream])
        .args(["--nats-prefix", &nats.prefix])
        .args(args)
        .env_remove("LEDGER_DATA_DIR")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    cmd
}

fn ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill(mut child: Child) {
    // SIGKILL: no destructor, no lease release, no ack.
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The stream versions of an account's feed, oldest first, as `ledger notifications`
/// prints them (newest first, `#<version>` at the start of each line).
fn feed(dir: &Path, nats: &Nats, account: &str) -> Vec<u64> {
    let out = ok(ledger(
        dir,
        nats,
        &["notifications", account, "--limit", "100000"],
    ));
    let mut versions: Vec<u64> = out
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix('#'))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    versions.reverse();
    versions
}

/// Each account's event versions in the store, in order.
fn accounts(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = embedded_app(dir).await.unwrap();
        let events: Vec<RecordedEvent> = app
            .ledger()
            .store()
            .read_all(LogRead::from_start())
            .try_collect()
            .await
            .unwrap();
        app.shutdown().await;
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| e.stream_id.category() == "account")
        {
            out.entry(account_of(&e.stream_id))
                .or_default()
                .push(e.stream_version);
        }
        out
    })
}

#[test]
fn every_feed_has_each_event_once_in_order_after_publisher_and_consumer_were_killed() {
    let Some(nats) = nats() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    ok(ledger(
        dir,
        &nats,
        &["seed", "--accounts", "6", "--events", "300"],
    ));
    ok(ledger(
        dir,
        &nats,
        &["payout", "c00000", "1.00", "--to", "DE89 3704"],
    ));

    let mut rng = rand::rng();
    for round in 0..10 {
        // Both at once, each killed at its own random moment: before it starts, mid-batch,
        // between a commit and its ack.
        let worker = spawn(ledger(
            dir,
            &nats,
            &["work", "--lease-ttl", "0.3", "--bank-latency-ms", "5"],
        ));
        let consumer = spawn(ledger(dir, &nats, &["notify", "--ack-wait", "0.5"]));
        let (a, b) = (rng.random_range(0..1_200), rng.random_range(0..1_500));
        let (first, second, gap) = if a <= b {
            (worker, consumer, b - a)
        } else {
            (consumer, worker, a - b)
        };
        std::thread::sleep(Duration::from_millis(a.min(b)));
        kill(first);
        // More events while one of them is down.
        if round % 2 == 0 {
            let seed = (100 + round).to_string();
            ok(ledger(
                dir,
                &nats,
                &["seed", "--accounts", "6", "--events", "30", "--seed", &seed],
            ));
        }
        std::thread::sleep(Duration::from_millis(gap));
        kill(second);
    }
    let progress: usize = ["c00000", "c00001", "c00002"]
        .iter()
        .map(|a| feed(dir, &nats, a).len())
        .sum();
    eprintln!("the killed processes fed {progress} notifications to three accounts");
    // Events neither has seen yet.
    ok(ledger(
        dir,
        &nats,
        &["seed", "--accounts", "6", "--events", "30", "--seed", "99"],
    ));

    // Then both finish: the publisher up to the store's head, the consumer up to the
    // stream's end.
    let worked = ok(ledger(
        dir,
        &nats,
        &["work", "--once", "--lease-ttl", "0.3"],
    ));
    let publisher = format!("publish-{}", nats.stream.to_lowercase().replace('_', "-"));
    assert!(
        worked.contains(&format!("{publisher}: running")),
        "{worked}"
    );
    let consumed = ok(ledger(
        dir,
        &nats,
        &["notify", "--once", "--ack-wait", "0.5"],
    ));
    eprintln!("{consumed}");

    let store = accounts(dir);
    assert_eq!(store.len(), 6, "{store:?}");
    for (account, versions) in &store {
        assert_eq!(versions, &(1..=versions.len() as u64).collect::<Vec<_>>());
        let fed = feed(dir, &nats, account);
        assert_eq!(
            &fed, versions,
            "the feed of {account} (oldest first) must hold each of its events once, in order"
        );
    }
    // Nothing more comes, and nothing changes when everything is consumed again.
    let again = ok(ledger(
        dir,
        &nats,
        &["notify", "--once", "--ack-wait", "0.5"],
    ));
    assert!(again.starts_with("consumed 0 message(s)"), "{again}");
    let alice = feed(dir, &nats, "c00000");
    assert_eq!(alice, store["c00000"]);
}

#[test]
fn the_feed_speaks_of_money_in_the_accounts_currency() {
    let Some(nats) = nats() else { return };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The consumer may start before anything is published: it waits for the stream.
    let consumer = spawn(ledger(dir, &nats, &["notify", "--ack-wait", "1"]));
    ok(ledger(
        dir,
        &nats,
        &["open", "alice", "Alice Martin", "EUR"],
    ));
    ok(ledger(dir, &nats, &["open", "bob", "Bob Chen", "EUR"]));
    ok(ledger(
        dir,
        &nats,
        &[
            "deposit", "alice", "1200", "--from", "ACME", "--memo", "salary",
        ],
    ));
    ok(ledger(
        dir,
        &nats,
        &["transfer", "alice", "bob", "450", "--memo", "rent"],
    ));
    ok(ledger(
        dir,
        &nats,
        &["freeze", "bob", "--reason", "card stolen"],
    ));
    ok(ledger(dir, &nats, &["work", "--once"]));
    // Give the running consumer a moment, then stop it and let a second one finish.
    std::thread::sleep(Duration::from_millis(500));
    kill(consumer);
    ok(ledger(dir, &nats, &["notify", "--once", "--ack-wait", "1"]));
    let alice = ok(ledger(dir, &nats, &["notifications", "alice"]));
    let lines: Vec<&str> = alice.lines().collect();
    assert_eq!(lines[0], "notifications for alice, newest first (3 of 3):");
    assert!(lines[1].starts_with("  #3 "), "{alice}");
    assert!(
        lines[1].ends_with("-450.00 EUR sent to bob: rent"),
        "{alice}"
    );
    assert!(
        lines[2].ends_with("+1200.00 EUR deposited from ACME: salary"),
        "{alice}"
    );
    assert!(
        lines[3].ends_with("account opened for Alice Martin in EUR"),
        "{alice}"
    );
    let bob = ok(ledger(
        dir,
        &nats,
        &["notifications", "bob", "--limit", "1"],
    ));
    assert!(bob.contains("(1 of 3)"), "{bob}");
    assert!(bob.contains("account frozen: card stolen"), "{bob}");
    let carol = ok(ledger(dir, &nats, &["notifications", "carol"]));
    assert!(
        carol.starts_with("no notifications for carol yet"),
        "{carol}"
    );
}

#[test]
fn without_a_broker_work_publishes_nothing_and_notify_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let bare = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledger"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .env_remove("LEDGER_DATA_DIR")
            .env_remove("LEDGER_NATS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL");
        cmd
    };
    ok(bare(&["open", "alice", "Alice", "EUR"]));
    let worked = ok(bare(&["work", "--once"]));
    assert!(worked.contains("payouts: running"), "{worked}");
    assert!(!worked.contains("publish-"), "{worked}");
    let out = bare(&["notify", "--once"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--nats-url"), "{stderr}");
    let feed = ok(bare(&["notifications", "alice"]));
    assert!(feed.starts_with("no notifications for alice yet"), "{feed}");
}
