//! End-to-end: the built `ledger` binary, one process per command as a person would run it,
//! against the embedded default (a temp data directory) and against PostgreSQL + Redis (own
//! schema and key prefix per test). A test that needs a service panics when it is
//! unreachable and `CI` is set; otherwise it prints a notice and returns.

use std::{
    io::Write as _,
    net::{TcpStream, ToSocketAddrs},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

struct Ledger {
    dir: TempDir,
    server: Option<Server>,
}

#[derive(Clone)]
struct Server {
    database_url: String,
    redis_url: String,
    schema: String,
    prefix: String,
}

impl Ledger {
    fn embedded() -> Self {
        Self {
            dir: TempDir::new().unwrap(),
            server: None,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The `ledger` command with this ledger's data directory and environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledger"));
        cmd.arg("--data-dir").arg(self.dir.path()).args(args);
        cmd.env_remove("LEDGER_DATA_DIR");
        match &self.server {
            None => {
                cmd.env_remove("DATABASE_URL").env_remove("REDIS_URL");
            }
            Some(s) => {
                cmd.env("DATABASE_URL", &s.database_url)
                    .env("REDIS_URL", &s.redis_url)
                    .env("LEDGER_PG_SCHEMA", &s.schema)
                    .env("LEDGER_REDIS_PREFIX", &s.prefix);
            }
        }
        cmd
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "ledger {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "ledger {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    fn head(&self) -> String {
        let status = self.ok(&["status"]);
        status
            .lines()
            .find(|l| l.starts_with("store head"))
            .unwrap_or_default()
            .to_owned()
    }
}

/// The scenario every backend runs: open, deposit, refusals that store nothing, transfer,
/// balances, search, seed, rebuild, and the same answers after the rebuild.
fn scenario(ledger: &Ledger) {
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    ledger.ok(&["open", "bob", "Bob Chen", "EUR"]);
    ledger.ok(&["open", "carol", "Carol Diaz", "USD"]);
    let out = ledger.ok(&[
        "deposit",
        "alice",
        "120.00",
        "--from",
        "ACME payroll",
        "--memo",
        "salary november",
    ]);
    assert!(out.contains("balance 120.00 EUR"), "{out}");

    // Refusals a person can act on, and nothing appended.
    let head = ledger.head();
    let cases: [(&[&str], &str); 6] = [
        (
            &["withdraw", "alice", "500.00"],
            "insufficient funds: balance 120.00 EUR, requested 500.00 EUR",
        ),
        (&["deposit", "dave", "1.00"], "unknown account \"dave\""),
        (&["deposit", "alice", "12.505"], "bad amount \"12.505\""),
        (&["deposit", "alice", "-3"], "bad amount"),
        (&["transfer", "alice", "carol", "1.00"], "currency mismatch"),
        (&["open", "alice", "Alice Again", "EUR"], "already open"),
    ];
    for (args, message) in cases {
        let err = ledger.fails(args);
        assert!(err.contains(message), "ledger {args:?}: {err}");
    }
    assert_eq!(ledger.head(), head, "a refused command appended events");

    let out = ledger.ok(&["transfer", "alice", "bob", "20.50", "--memo", "rent share"]);
    assert!(out.contains("one atomic append"), "{out}");
    assert!(ledger.ok(&["balance", "alice"]).contains("99.50 EUR"));
    assert!(ledger.ok(&["balance", "bob"]).contains("20.50 EUR"));

    let found = ledger.ok(&["search", "rent"]);
    assert!(found.starts_with("2 hit(s)"), "{found}");
    assert!(found.contains("alice") && found.contains("bob"), "{found}");
    let found = ledger.ok(&["search", "salary", "--account", "bob"]);
    assert!(found.starts_with("0 hit(s)"), "{found}");
    let found = ledger.ok(&["search", "*", "--min", "100"]);
    assert!(
        found.starts_with("1 hit(s)") && found.contains("ACME"),
        "{found}"
    );
    let found = ledger.ok(&["search", "owner:alice"]);
    assert!(found.starts_with("2 hit(s)"), "{found}");

    let history = ledger.ok(&["history", "alice"]);
    assert!(
        history.contains("transfer out") && history.contains("-20.50"),
        "{history}"
    );

    ledger.ok(&["seed", "--accounts", "12", "--events", "150"]);
    let top_before = ledger.ok(&["top", "1000"]);
    let search_before = ledger.ok(&["search", "rent", "--limit", "1000"]);
    let alice_before = ledger.ok(&["balance", "alice"]);

    let out = ledger.ok(&["rebuild", "balances"]);
    assert!(out.contains("switched generation 1 -> 2"), "{out}");
    let out = ledger.ok(&["rebuild", "search"]);
    assert!(out.contains("switched generation 1 -> 2"), "{out}");

    assert_eq!(ledger.ok(&["top", "1000"]), top_before);
    let sorted = |s: String| {
        let mut lines: Vec<String> = s.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        sorted(ledger.ok(&["search", "rent", "--limit", "1000"])),
        sorted(search_before)
    );
    assert_eq!(ledger.ok(&["balance", "alice"]), alice_before);

    let status = ledger.ok(&["status"]);
    // In embedded mode the balances live in each process and start again at generation 1.
    let balances = if ledger.server.is_some() { 2 } else { 1 };
    assert!(
        status.contains(&format!("balances: running, generation {balances}, ")),
        "{status}"
    );
    assert!(
        status.contains("search: running, generation 2, "),
        "{status}"
    );
    assert_eq!(status.matches("lag 0 event(s)").count(), 2, "{status}");
}

#[test]
fn embedded_end_to_end() {
    let ledger = Ledger::embedded();
    scenario(&ledger);
    assert!(ledger.dir.path().join("events.sqlite").exists());
    // Read models are rebuilt in process by replay, and say so.
    let out = ledger.run(&["balance", "alice"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rebuilt the in-process read models"),
        "{out:?}"
    );
}

#[test]
fn the_search_index_catches_up_across_processes() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "dora", "Dora Weiss", "EUR"]);
    ledger.ok(&["deposit", "dora", "10", "--memo", "first"]);
    assert!(ledger.ok(&["search", "first"]).starts_with("1 hit(s)"));
    ledger.ok(&["deposit", "dora", "10", "--memo", "second"]);
    // The index (on disk) was written by the process before; this one brings it up to the
    // head before it answers.
    assert!(ledger.ok(&["search", "second"]).starts_with("1 hit(s)"));
    ledger.ok(&["deposit", "dora", "10", "--memo", "third"]);
    let status = ledger.ok(&["status"]);
    assert!(status.starts_with("store head: position 4\n"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("search: running, generation 1, at position 4, lag 0 event(s)")),
        "{status}"
    );
}

#[test]
fn the_demo_runs_in_a_fresh_directory() {
    let dir = TempDir::new().unwrap();
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_ledger"))
            .arg("demo")
            .arg("--data-dir")
            .arg(dir.path())
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            "$ ledger open alice \"Alice Martin\" EUR",
            "insufficient funds: balance 120.00 EUR, requested 500.00 EUR",
            "compensated with PayoutReversed",
            "the account is frozen",
            "switched generation 1 -> 2",
        ] {
            assert!(
                stdout.contains(expected),
                "missing {expected:?} in\n{stdout}"
            );
        }
    }
    assert!(dir.path().join("demo").join("events.sqlite").exists());
}

#[test]
fn the_demo_says_where_its_data_is_and_how_to_query_it() {
    let dir = TempDir::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .arg("demo")
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("#   ledger "))
        .unwrap_or_else(|| panic!("no query hint in\n{stdout}"));
    let demo_dir = dir.path().join("demo").display().to_string();
    assert_eq!(hint, format!("--data-dir {demo_dir} balance alice"));
    // The command it prints answers from the demo's data.
    let out = Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["--data-dir", &demo_dir, "balance", "alice"])
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let balance = String::from_utf8_lossy(&out.stdout);
    assert!(balance.contains("650.10 EUR"), "{out:?}");
}

#[test]
fn a_closed_pipe_ends_a_query_quietly() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    ledger.ok(&["deposit", "alice", "10", "--memo", "first"]);
    // `ledger history alice | head -0`: the reader is gone before the first line.
    let mut child = ledger
        .command(&["history", "alice"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
    // And through a shell, as a person types it.
    let ledger_bin = env!("CARGO_BIN_EXE_ledger");
    let dir = ledger.dir.path().display().to_string();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{ledger_bin}' --data-dir '{dir}' history alice | head -1; echo \"exit ${{PIPESTATUS[0]}}\""
        ))
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("alice (Alice Martin)"), "{stdout}");
    assert!(stdout.ends_with("exit 0\n"), "{stdout}");
}

#[test]
fn a_memo_can_come_from_a_file_or_stdin() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    ledger.ok(&["open", "bob", "Bob Chen", "EUR"]);
    let file = ledger.dir.path().join("memo.txt");
    std::fs::write(&file, "a long story about a bicycle\n").unwrap();
    let path = file.display().to_string();
    ledger.ok(&["deposit", "alice", "10", "--memo-file", &path]);
    let mut child = ledger
        .command(&["transfer", "alice", "bob", "1", "--memo-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"lunch with the unicorn\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let history = ledger.ok(&["history", "alice"]);
    assert!(
        history.contains("\"a long story about a bicycle\"")
            && history.contains("\"lunch with the unicorn\""),
        "{history}"
    );
    assert!(ledger.ok(&["search", "unicorn"]).starts_with("2 hit(s)"));
    let err = ledger.fails(&["deposit", "alice", "1", "--memo", "x", "--memo-file", &path]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = ledger.fails(&["deposit", "alice", "1", "--memo-file", "/nonexistent/memo"]);
    assert!(
        err.contains("cannot read the memo from /nonexistent/memo"),
        "{err}"
    );
}

#[test]
fn an_event_over_the_store_limit_is_refused_with_the_limit() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    let file = ledger.dir.path().join("memo.txt");
    std::fs::write(&file, "x".repeat(2 << 20)).unwrap();
    let head = ledger.head();
    let err = ledger.fails(&[
        "deposit",
        "alice",
        "10",
        "--memo-file",
        &file.display().to_string(),
    ]);
    assert!(
        err.contains("the store takes at most 1048576 bytes per event"),
        "{err}"
    );
    assert_eq!(ledger.head(), head, "a refused command appended events");
}

#[test]
fn arguments_that_cannot_mean_anything_are_refused() {
    let ledger = Ledger::embedded();
    for id in ["..", ".", ".hidden", "_x", "a/b", ""] {
        let err = ledger.fails(&["open", id, "Someone", "EUR"]);
        assert!(err.contains("bad account id"), "{id:?}: {err}");
    }
    ledger.ok(&["open", "a.b-c_1", "Someone", "EUR"]);
    let err = ledger.fails(&["search", "*", "--limit", "0"]);
    assert!(err.contains("bad --limit 0"), "{err}");
    let err = ledger.fails(&["search", "*", "--min", "5", "--max", "1"]);
    assert!(
        err.contains("bad range: --min 5.00 is more than --max 1.00"),
        "{err}"
    );
    assert!(
        ledger
            .ok(&["search", "*", "--min", "5", "--max", "5"])
            .starts_with("0 hit(s)")
    );
}

#[test]
fn recreating_the_store_rebuilds_the_search_index() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    ledger.ok(&["deposit", "alice", "10", "--memo", "oldstore"]);
    assert!(ledger.ok(&["search", "oldstore"]).starts_with("1 hit(s)"));
    for entry in std::fs::read_dir(ledger.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.sqlite")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    // A new store, positions from 1 again, fewer events than the index has seen.
    ledger.ok(&["open", "bob", "Bob Chen", "EUR"]);
    ledger.ok(&["deposit", "bob", "20", "--memo", "newstore"]);
    let found = ledger.ok(&["search", "newstore"]);
    assert!(
        found.starts_with("1 hit(s)") && found.contains("Bob Chen"),
        "{found}"
    );
    assert!(ledger.ok(&["search", "oldstore"]).starts_with("0 hit(s)"));
    assert!(ledger.ok(&["search", "*"]).starts_with("1 hit(s)"));
}

#[test]
fn rebuild_search_repairs_a_damaged_index() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    ledger.ok(&["deposit", "alice", "10", "--memo", "salary"]);
    assert!(ledger.ok(&["search", "salary"]).starts_with("1 hit(s)"));
    // Damage every stored-document file of the serving generation.
    let generation = ledger.dir.path().join("search").join("gen-1");
    let mut damaged = 0;
    for entry in std::fs::read_dir(&generation).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "store") {
            std::fs::write(path, "not a tantivy file").unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let err = ledger.fails(&["search", "salary"]);
    assert!(err.contains("`ledger rebuild search`"), "{err}");
    let out = ledger.ok(&["rebuild", "search"]);
    assert!(out.contains("switched generation 1 -> 2"), "{out}");
    assert!(ledger.ok(&["search", "salary"]).starts_with("1 hit(s)"));
}

#[test]
fn rebuild_search_repairs_an_index_whose_meta_is_garbage() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    ledger.ok(&["deposit", "alice", "10", "--memo", "salary"]);
    assert!(ledger.ok(&["search", "salary"]).starts_with("1 hit(s)"));
    // The serving generation cannot even be opened any more.
    let meta = ledger
        .dir
        .path()
        .join("search")
        .join("gen-1")
        .join("meta.json");
    std::fs::write(&meta, "{ not json").unwrap();
    let err = ledger.fails(&["search", "salary"]);
    assert!(err.contains("`ledger rebuild search`"), "{err}");
    let out = ledger.ok(&["rebuild", "search"]);
    assert!(out.contains("switched generation 1 -> 2"), "{out}");
    assert!(ledger.ok(&["search", "salary"]).starts_with("1 hit(s)"));
    // And it stays repaired for the next process.
    ledger.ok(&["deposit", "alice", "5", "--memo", "bonus"]);
    assert!(ledger.ok(&["search", "bonus"]).starts_with("1 hit(s)"));
}

fn reachable(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

fn server() -> Option<Server> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    for (name, url) in [("PostgreSQL", &database_url), ("Redis", &redis_url)] {
        if !reachable(url) {
            if std::env::var_os("CI").is_some() {
                panic!("{name} is unreachable at {url} and CI is set");
            }
            eprintln!("skipping: {name} is unreachable at {url}");
            return None;
        }
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    Some(Server {
        database_url,
        redis_url,
        schema: format!("ledger_e2e_{}", &tag[..12]),
        prefix: format!("ledger-e2e-{}", &tag[..12]),
    })
}

/// Drops the test's schema and Redis keys, even when the test failed.
struct Cleanup(Server);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let s = self.0.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let config = annals_postgres::PgConfig::new(s.database_url.clone())
                .with_schema(s.schema.clone());
            if let Ok(store) = annals_postgres::PgEventStore::connect(config).await {
                let _ = store.drop_schema().await;
            }
            if let Ok(client) = redis::Client::open(s.redis_url.as_str())
                && let Ok(mut con) = client.get_multiplexed_async_connection().await
            {
                // Every key of the test's namespace: `{prefix:projection}:meta` and
                // `{prefix:projection:generation}:...`.
                let pattern = format!("{{{}:*", s.prefix);
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut con)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: redis::RedisResult<i64> =
                        redis::cmd("UNLINK").arg(&keys).query_async(&mut con).await;
                }
            }
        });
    }
}

#[test]
fn postgres_and_redis_end_to_end() {
    let Some(server) = server() else { return };
    let _cleanup = Cleanup(server.clone());
    let ledger = Ledger {
        dir: TempDir::new().unwrap(),
        server: Some(server),
    };
    scenario(&ledger);
    // Nothing of the server mode went to the embedded store.
    assert!(!Path::new(&ledger.dir.path().join("events.sqlite")).exists());
}

#[test]
fn writes_need_no_read_model_and_queries_say_at_once_that_redis_is_down() {
    let Some(mut server) = server() else { return };
    let _cleanup = Cleanup(server.clone());
    // Nothing listens on port 1: Redis refuses at once.
    server.redis_url = "redis://127.0.0.1:1".to_owned();
    let ledger = Ledger {
        dir: TempDir::new().unwrap(),
        server: Some(server),
    };
    let started = Instant::now();
    ledger.ok(&["open", "alice", "Alice Martin", "EUR"]);
    ledger.ok(&["deposit", "alice", "10", "--memo", "salary"]);
    ledger.ok(&["open", "bob", "Bob Chen", "EUR"]);
    ledger.ok(&["transfer", "alice", "bob", "1"]);
    let started_query = Instant::now();
    let err = ledger.fails(&["balance", "alice"]);
    assert!(
        err.contains(
            "the balances read model is unavailable: cannot reach Redis at redis://127.0.0.1:1"
        ),
        "{err}"
    );
    assert!(
        started_query.elapsed() < Duration::from_secs(5),
        "the query took {:?}",
        started_query.elapsed()
    );
    // The search index does not live in Redis: it still answers.
    assert!(ledger.ok(&["search", "salary"]).starts_with("1 hit(s)"));
    let status = ledger.ok(&["status"]);
    assert!(
        status.contains("balances: the balances read model is unavailable"),
        "{status}"
    );
    assert!(status.contains("search: running"), "{status}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn concurrent_processes_lose_no_deposit() {
    let ledger = Ledger::embedded();
    ledger.ok(&["open", "shared", "Shared Pot", "EUR"]);
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_ledger"))
                .arg("--data-dir")
                .arg(ledger.dir.path())
                .args(["--backend", "embedded", "deposit", "shared", "1.25"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert!(ledger.ok(&["balance", "shared"]).contains("7.50 EUR"));
}
