//! Opening: missing and impossible directories, a read-only directory, a file from a newer
//! version, many handles creating one file at once.

mod common;

use std::path::Path;

use annals::{EventStore, ExpectedVersion, testing::new_event};
use annals_sqlite::{Error, SqliteConfig, SqliteEventStore};
use common::{assert_names, config, log_ids, raw_connection, seeded, sid, sqlite_error, temp_dir};
use serde_json::json;
use sqlx::Connection;

/// Makes a directory read-only, for root too (`chattr +i`), and undoes it on drop.
struct ReadOnlyDir<'a> {
    path: &'a Path,
    immutable: bool,
}

impl<'a> ReadOnlyDir<'a> {
    /// `None` when this machine cannot make a directory read-only for us.
    fn new(path: &'a Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).ok()?;
        let mut guard = Self {
            path,
            immutable: false,
        };
        if !guard.is_read_only() {
            // Root ignores permission bits; the immutable attribute binds root too.
            guard.immutable = std::process::Command::new("chattr")
                .arg("+i")
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
        }
        guard.is_read_only().then_some(guard)
    }

    fn is_read_only(&self) -> bool {
        let probe = self.path.join("probe");
        let created = std::fs::write(&probe, b"x").is_ok();
        let _ = std::fs::remove_file(&probe);
        !created
    }
}

impl Drop for ReadOnlyDir<'_> {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(self.path)
                .status();
        }
        let _ = std::fs::set_permissions(self.path, std::fs::Permissions::from_mode(0o755));
    }
}

#[tokio::test]
async fn a_read_only_directory_is_an_unwritable_error() {
    let dir = temp_dir();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    let existing = ro.join("existing.db");
    let (store, _) = seeded(&existing, 2).await;
    store.close().await;
    let Some(_guard) = ReadOnlyDir::new(&ro) else {
        eprintln!("notice: cannot make a directory read-only here (root without chattr); skipped");
        return;
    };

    let fresh = ro.join("events.db");
    let error = SqliteEventStore::open(config(&fresh)).await.unwrap_err();
    assert!(matches!(error, Error::Unwritable { .. }), "{error:?}");
    assert_names(&error, &fresh);
    assert!(!fresh.exists());

    // An existing file in WAL mode needs its -wal and -shm files beside it.
    match SqliteEventStore::open(config(&existing)).await {
        Err(error) => {
            assert!(matches!(error, Error::Unwritable { .. }), "{error:?}");
            assert_names(&error, &existing);
        }
        Ok(store) => {
            let r = store
                .append(
                    &sid("kept"),
                    ExpectedVersion::Any,
                    vec![new_event("X", json!({}))],
                )
                .await
                .unwrap_err();
            assert!(
                matches!(sqlite_error(&r), Error::Unwritable { .. }),
                "{r:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_file_from_a_newer_version_is_refused() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let (store, _) = seeded(&path, 1).await;
    store.close().await;
    let mut raw = raw_connection(&path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut raw)
    .await
    .expect("pretend a newer version migrated the file");
    raw.close().await.expect("close");

    let error = SqliteEventStore::open(config(&path)).await.unwrap_err();
    assert!(matches!(error, Error::Migrate { .. }), "{error:?}");
    assert_names(&error, &path);
}

#[tokio::test]
async fn missing_directories_are_created_and_impossible_ones_reported() {
    let dir = temp_dir();
    let nested = dir.path().join("a/b/c/events.db");
    let store = SqliteEventStore::open(config(&nested)).await.expect("open");
    assert!(nested.is_file());
    assert_eq!(store.path(), nested);

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let inside = file.join("events.db");
    let error = SqliteEventStore::open(config(&inside)).await.unwrap_err();
    assert!(matches!(error, Error::CreateDir { .. }), "{error:?}");
    assert_names(&error, &inside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_handles_opening_one_new_file_at_once_all_succeed() {
    let dir = temp_dir();
    let path = dir.path().join("events.db");
    let opens = (0..6).map(|_| SqliteEventStore::open(SqliteConfig::new(&path)));
    let stores: Vec<SqliteEventStore> = futures::future::join_all(opens)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every concurrent open succeeds");
    for (i, store) in stores.iter().enumerate() {
        store
            .append(
                &sid("shared"),
                ExpectedVersion::Any,
                vec![new_event("Opened", json!({ "by": i }))],
            )
            .await
            .expect("append");
    }
    assert_eq!(log_ids(&stores[0]).await.len(), 6);
}

/// Fifty rounds of eight handles opening one new file at once: every open succeeds, and all
/// eight handles share one store (issue 16: switching a new file to WAL mode lost races with
/// "database is locked" now and then, however long the busy timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_rounds_of_concurrent_opens_of_a_new_file_all_succeed() {
    for round in 0..50 {
        let dir = temp_dir();
        let path = dir.path().join("events.db");
        let opens = (0..8).map(|_| SqliteEventStore::open(SqliteConfig::new(&path)));
        let mut stores = Vec::new();
        for open in futures::future::join_all(opens).await {
            stores.push(
                open.unwrap_or_else(|e| panic!("round {round}: a concurrent open failed: {e:?}")),
            );
        }
        let id = stores[0].store_id().await.expect("store id");
        for store in &stores {
            assert_eq!(
                store.store_id().await.expect("store id"),
                id,
                "round {round}"
            );
            store.close().await;
        }
    }
}
