//! Runs every scenario in quick mode against the real services and checks the JSON report:
//! every scenario is there, measured, with positive events/s on both sides. No speed is
//! asserted.

use std::{net::TcpStream, process::Command, time::Duration};

use serde_json::Value;

const SCENARIOS: &[&str] = &[
    "memory.append.batched",
    "memory.replay",
    "memory.command",
    "pg.append.batched",
    "pg.command.1",
    "pg.command.8",
    "pg.command.64",
    "pg.command.uncached.1",
    "pg.command.uncached.8",
    "pg.command.uncached.64",
    "pg.reactor",
    "pg.replay",
    "pg.load",
    "pg.load.snapshot",
    "sqlite.append.batched",
    "sqlite.replay",
    "projection.memory.rebuild",
    "projection.redis.rebuild",
    "projection.tantivy.rebuild",
    "projection.sql.rebuild",
    "projection.sql.entries.rebuild",
    "nats.publish",
    "rabbit.publish",
];

/// `host:port` of a URL like `scheme://user@host:port/db`.
fn address(url: &str, default_port: u16) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

fn reachable(url: &str, default_port: u16) -> bool {
    let addr = address(url, default_port);
    addr.parse()
        .ok()
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some()
        || TcpStream::connect(&addr).is_ok()
}

fn services_up() -> bool {
    let pg = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let up = reachable(&pg, 5432)
        && reachable(&redis, 6379)
        && reachable(&nats, 4222)
        && reachable(&amqp, 5672);
    if !up {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL ({pg}), Redis ({redis}), NATS ({nats}) or RabbitMQ is unreachable; start them with scripts/services.sh"
        );
        eprintln!(
            "notice: PostgreSQL, Redis, NATS or RabbitMQ is unreachable; skipping the quick benchmark run"
        );
    }
    up
}

fn rate(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(0.0)
}

#[test]
fn quick_mode_reports_every_scenario() {
    if !services_up() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let json = dir.path().join("results.json");
    let output = Command::new(env!("CARGO_BIN_EXE_annals-bench"))
        .args(["all", "--quick", "--json"])
        .arg(&json)
        .output()
        .expect("the runner starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quick run failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON was written"))
            .expect("valid JSON");
    let rows = report["scenarios"].as_array().expect("a scenario list");
    for name in SCENARIOS {
        let row = rows
            .iter()
            .find(|r| r["scenario"] == *name)
            .unwrap_or_else(|| panic!("{name} is missing from the report"));
        assert_eq!(row["status"], "ok", "{name} was not measured: {row}");
        assert!(rate(&row["events_per_sec"]) > 0.0, "{name}: {row}");
        assert!(
            rate(&row["baseline"]["events_per_sec"]) > 0.0,
            "{name}: {row}"
        );
        assert!(
            row["ratio"].as_f64().is_some_and(|r| r > 0.0),
            "{name}: {row}"
        );
        assert!(stdout.contains(name), "{name} is not in the printed table");
    }
    assert_eq!(
        rows.len(),
        SCENARIOS.len(),
        "unexpected scenarios: {rows:?}"
    );
}
