//! Fixtures of the publisher tests: events, checks of order and completeness, servers and
//! proxies the tests start themselves.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use annals::{
    EventStore, EventType, ExpectedVersion, InMemoryEventStore, LogPosition, LogRead, Metadata,
    NewEvent, Payload, RecordedEvent, StreamId,
};
use annals_projections::{
    Backoff, EventFilter, ProjectionRunner, ProjectionState, ProjectionStatus, RunnerConfig,
};
use futures::TryStreamExt;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};
use uuid::Uuid;

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", Uuid::new_v4().simple())
}

/// Whether tests must find their servers (CI) rather than skip.
pub fn required() -> bool {
    std::env::var_os("CI").is_some()
}

/// Panics under CI, prints a notice otherwise; the caller then skips.
pub fn unreachable(what: &str, detail: &str) {
    assert!(
        !required(),
        "{what} is unreachable ({detail}); start it with scripts/services.sh"
    );
    eprintln!("notice: {what} unreachable ({detail}), skipping");
}

/// The filter every publisher test uses: orders' `Placed` and `Paid`, not their `Noted`, not
/// other categories.
pub fn filter() -> EventFilter {
    EventFilter::categories(["order"]).and_types(["Placed", "Paid"])
}

/// The trace context some events carry.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Appends `n` events from index `from` over 17 order streams, with `Noted` (filtered out by
/// type) and `audit` events (filtered out by category) among them; every 5th carries a
/// correlation id, a causation id and a trace context in its custom metadata, every 5th
/// after those a trace context in the metadata's own field. Returns the last position.
pub async fn seed(store: &InMemoryEventStore, from: usize, n: usize) -> LogPosition {
    let mut last = LogPosition::START;
    for i in from..from + n {
        let (stream, kind) = match i % 11 {
            3 => (format!("audit-{}", i % 5), "Placed"),
            7 => (format!("order-{}", i % 17), "Noted"),
            k if k % 2 == 0 => (format!("order-{}", i % 17), "Placed"),
            _ => (format!("order-{}", i % 17), "Paid"),
        };
        let mut metadata = Metadata::default();
        if i % 5 == 0 {
            metadata.correlation_id = Some(Uuid::now_v7());
            metadata.causation_id = Some(Uuid::now_v7());
            metadata
                .custom
                .insert("traceparent".into(), TRACEPARENT.into());
        } else if i % 5 == 2 {
            metadata.trace = Some(annals::TraceContext::new_root());
        }
        let event = NewEvent::new(
            EventType::new(kind).unwrap(),
            1,
            Payload::from_serialize(&serde_json::json!({ "i": i, "memo": "x".repeat(i % 40) }))
                .unwrap(),
        )
        .with_metadata(metadata);
        last = store
            .append(
                &StreamId::new(stream).unwrap(),
                ExpectedVersion::Any,
                vec![event],
            )
            .await
            .unwrap()
            .last_position;
    }
    last
}

/// The events of `store` that [`filter`] accepts, in log order.
pub async fn chosen(store: &InMemoryEventStore) -> Vec<RecordedEvent> {
    let filter = filter();
    let all: Vec<RecordedEvent> = store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap();
    all.into_iter().filter(|e| filter.wants(e)).collect()
}

/// One delivered message, as a test reads it back from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub event_id: Uuid,
    pub stream: String,
    pub version: u64,
}

/// Checks deliveries against the chosen events: every one delivered, in each stream's order
/// (the first delivery of each event, when `repeats` are allowed; exactly once otherwise),
/// nothing else. Returns how many deliveries were repeats.
pub fn check_deliveries(seen: &[Seen], chosen: &[RecordedEvent], repeats: bool) -> usize {
    let want: HashSet<Uuid> = chosen.iter().map(|e| e.event_id).collect();
    let mut first = HashSet::new();
    let mut last_version: HashMap<&str, u64> = HashMap::new();
    let mut repeated = 0;
    for s in seen {
        assert!(
            want.contains(&s.event_id),
            "delivered an event not chosen: {s:?}"
        );
        if !first.insert(s.event_id) {
            assert!(repeats, "event {} delivered twice", s.event_id);
            repeated += 1;
            continue;
        }
        let last = last_version.entry(&s.stream).or_default();
        assert!(
            s.version > *last,
            "stream {} out of order: version {} first delivered after version {last}",
            s.stream,
            s.version
        );
        *last = s.version;
    }
    let missing: Vec<_> = chosen
        .iter()
        .filter(|e| !first.contains(&e.event_id))
        .map(|e| (e.stream_id.to_string(), e.stream_version))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never delivered, e.g. {:?}",
        missing.len(),
        chosen.len(),
        &missing[..missing.len().min(5)]
    );
    repeated
}

/// A runner configuration for tests: short leases, quick retries, bounded I/O.
pub fn fast() -> RunnerConfig {
    RunnerConfig::new()
        .with_lease_ttl(Duration::from_millis(150))
        .with_lease_poll(Duration::from_millis(10))
        .with_backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .with_retire_grace(Duration::from_millis(50))
        .with_status_interval(Duration::from_millis(50))
        .with_io_timeout(Duration::from_secs(10))
}

/// Waits (up to 60 s) until the status of `name` passes `check`; panics with the last status
/// otherwise.
pub async fn wait_status<S: EventStore + Clone + 'static>(
    runner: &ProjectionRunner<S>,
    name: &str,
    check: impl Fn(&ProjectionStatus) -> bool,
) -> ProjectionStatus {
    let mut rx = runner.watch(name).unwrap();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if check(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("status never matched; last: {:?}", runner.status(name)))
}

/// Whether the state is a retry after a failure.
pub fn retrying(status: &ProjectionStatus) -> bool {
    matches!(status.state, ProjectionState::Retrying { .. })
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the nats-server binary is, if installed.
pub fn nats_server_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")]);
    candidates
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
}

/// A nats-server with JetStream that a test runs itself, on a loopback port of its own, with
/// its store in a directory of its own: it can be killed and started again.
pub struct OwnNats {
    binary: PathBuf,
    pub port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnNats {
    /// Starts one, or `None` (with a notice; a panic under CI) when nats-server is not
    /// installed.
    pub async fn start(dir: &Path) -> Option<Self> {
        let Some(binary) = nats_server_binary() else {
            unreachable("nats-server", "no binary on PATH or in /usr/sbin");
            return None;
        };
        let mut own = Self {
            binary,
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        own.restart().await;
        Some(own)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("own nats-server did not start on port {}", self.port);
    }

    /// Stops the server (SIGTERM: it closes its connections and its store) and waits until
    /// it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(_) => {}
                Err(_) => child.kill().await.unwrap(),
            }
        }
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

/// A TCP proxy on a loopback port in front of a server, that a test can cut (every
/// connection closed, new ones closed at once) and restore.
pub struct Proxy {
    pub port: u16,
    up: watch::Sender<bool>,
    _tasks: JoinSet<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = watch::channel(true);
        let mut tasks = JoinSet::new();
        let state = up.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut alive = state.subscribe();
                if !*alive.borrow_and_update() {
                    drop(client);
                    continue;
                }
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                        _ = tokio::io::copy(&mut server_read, &mut client_write) => {}
                        _ = alive.wait_for(|up| !*up) => {}
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            port,
            up,
            _tasks: tasks,
        }
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// A flag a test sets when it is done, for helper tasks.
pub fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

pub fn is_set(flag: &AtomicBool) -> bool {
    flag.load(Ordering::SeqCst)
}

/// Counts deliveries per stream (for messages in failure output).
pub fn per_stream(seen: &[Seen]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in seen {
        *out.entry(s.stream.clone()).or_default() += 1;
    }
    out
}
