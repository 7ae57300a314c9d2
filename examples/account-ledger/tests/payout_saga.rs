//! The payout saga survives `kill -9`: payouts are recorded by `ledger payout`, the bank is
//! asked by `ledger work`, which is killed at random points again and again; at the end every
//! payout is settled or compensated exactly once, and the balances add up.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use account_ledger::{domain::pending_payouts, embedded_app};
use annals::{EventStore, LogRead, RecordedEvent};
use futures::TryStreamExt;
use rand::Rng;

fn ledger(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledger"));
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("LEDGER_DATA_DIR")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL");
    cmd
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = ledger(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "ledger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pending_count(dir: &Path) -> usize {
    let status = ok(dir, &["status"]);
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("payouts waiting for the bank: "))
        .expect("a pending-payouts line");
    line.parse().unwrap_or(0)
}

#[test]
fn payouts_are_settled_or_compensated_exactly_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    ok(dir, &["open", "alice", "Alice", "EUR"]);
    ok(dir, &["deposit", "alice", "1000.00"]);
    let payouts = 24;
    for i in 0..payouts {
        let mut args = vec!["payout", "alice", "10.00", "--to", "DE89 3704 0044 0532"];
        if i % 3 == 0 {
            args.push("--bank-fails");
        }
        let out = ok(dir, &args);
        assert!(out.contains("waits for the bank"), "{out}");
    }
    let status = ok(dir, &["status"]);
    assert!(
        status.contains(&format!("payouts waiting for the bank: {payouts}")),
        "{status}"
    );

    // Kill the worker at random points: before it starts, while the bank works, between
    // the bank's answer and the record of it.
    let mut rng = rand::rng();
    for _ in 0..10 {
        // A killed worker's lease lets the next one in after 0.3 s.
        let mut child = ledger(
            dir,
            &["work", "--lease-ttl", "0.3", "--bank-latency-ms", "60"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..600)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let answered = payouts - pending_count(dir);
    eprintln!("the killed workers answered {answered} of {payouts} payouts");
    let out = ok(dir, &["work", "--once", "--lease-ttl", "0.3"]);
    assert!(out.contains("payouts"), "{out}");
    let status = ok(dir, &["status"]);
    assert!(
        status.contains("payouts waiting for the bank: none"),
        "{status}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = embedded_app(dir).await.unwrap();
        let store = app.ledger().store().clone();
        assert!(pending_payouts(&store).await.unwrap().is_empty());
        let events: Vec<RecordedEvent> = store
            .read_all(LogRead::from_start())
            .try_collect()
            .await
            .unwrap();
        let mut answers: HashMap<uuid::Uuid, Vec<&str>> = HashMap::new();
        for e in &events {
            if matches!(e.event_type.as_str(), "PayoutSettled" | "PayoutReversed") {
                let started = e.metadata.causation_id.expect("caused by the start");
                answers
                    .entry(started)
                    .or_default()
                    .push(e.event_type.as_str());
            }
        }
        let started: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "PayoutStarted")
            .collect();
        assert_eq!(started.len(), payouts);
        for (i, start) in started.iter().enumerate() {
            let expected = if i % 3 == 0 {
                "PayoutReversed"
            } else {
                "PayoutSettled"
            };
            assert_eq!(
                answers.get(&start.event_id).map(Vec::as_slice),
                Some(&[expected][..]),
                "payout {i} answered exactly once"
            );
        }
        let alice = app.ledger().account("alice").await.unwrap();
        // 16 paid of 10.00 each; the 8 refused came back.
        assert_eq!(alice.balance, 100_000 - 16 * 1_000);
        assert!(alice.pending_payouts.is_empty());
        app.shutdown().await;
    });
}
