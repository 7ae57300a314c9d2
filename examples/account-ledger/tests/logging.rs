//! `ledger` logs to stderr through a `tracing` subscriber: quiet by default, `-v`/`-vv` and
//! `RUST_LOG` for more, with Annals' spans (the command, its load and append) and their W3C
//! trace ids.

use std::process::{Command, Output};

use tempfile::TempDir;

fn ledger(dir: &TempDir, args: &[&str], rust_log: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledger"));
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("LEDGER_DATA_DIR")
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "ledger {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn quiet_by_default() {
    let dir = TempDir::new().unwrap();
    let out = ledger(&dir, &["open", "alice", "Alice Martin", "EUR"], None);
    let err = stderr(&out);
    assert!(!err.contains("annals.command"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("alice"),
        "{out:?}"
    );
}

#[test]
fn double_v_shows_the_commands_span_with_its_trace_id() {
    let dir = TempDir::new().unwrap();
    let out = ledger(&dir, &["-vv", "open", "alice", "Alice Martin", "EUR"], None);
    let err = stderr(&out);
    // The debug event of the append, inside the command's span, and the span's close line.
    let line = err
        .lines()
        .find(|l| l.contains("annals.command{") && l.contains("appended"))
        .unwrap_or_else(|| panic!("no appended line in the command span:\n{err}"));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("stream=account-alice"), "{line}");
    let trace_id = line
        .split("trace_id=")
        .nth(1)
        .and_then(|rest| rest.get(..32))
        .unwrap_or_else(|| panic!("no trace id: {line}"));
    assert!(
        trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace_id}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("annals.command{") && l.contains("close")),
        "{err}"
    );
    assert!(err.contains("annals.load"), "{err}");
}

#[test]
fn rust_log_is_honoured() {
    let dir = TempDir::new().unwrap();
    ledger(&dir, &["open", "bob", "Bob Chen", "EUR"], None);
    let out = ledger(&dir, &["deposit", "bob", "12.50"], Some("annals=debug"));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.contains("annals.command{") && l.contains("appended")),
        "{err}"
    );
    // Only what RUST_LOG asked for: no close lines without -vv, no other crate's debug.
    assert!(!err.contains("close"), "{err}");
    assert!(!err.contains("sqlx"), "{err}");
    // A RUST_LOG that makes no sense is not fatal.
    ledger(&dir, &["balance", "bob"], Some("=,not a directive["));
}
