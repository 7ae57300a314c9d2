//! [`PgConfig`]: where the store lives and how it behaves.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use annals::Limits;
use sqlx::postgres::PgConnectOptions;

use crate::{Error, Result};

/// The longest schema name accepted: the notification channel `annals_<schema>` must fit
/// PostgreSQL's 63-byte identifiers.
pub const MAX_SCHEMA_NAME_BYTES: usize = 56;

/// Checks that `name` is a plain lower-case identifier: `[a-z_][a-z0-9_]*`, at most
/// [`MAX_SCHEMA_NAME_BYTES`] bytes, not starting with `pg_` (reserved by PostgreSQL).
///
/// This is the only identifier the store ever writes into SQL text.
///
/// # Errors
/// [`Error::InvalidSchemaName`] when a rule is broken.
pub fn validate_schema_name(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_SCHEMA_NAME_BYTES
        && (bytes[0].is_ascii_lowercase() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSchemaName {
            name: name.to_owned(),
        })
    }
}

#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Options(Box<PgConnectOptions>),
}

/// The application name of the store's connections when the caller sets none.
const DEFAULT_APPLICATION_NAME: &str = "annals-postgres";

/// How to connect a [`PgEventStore`](crate::PgEventStore) and how it behaves.
///
/// ```
/// use std::time::Duration;
/// use annals_postgres::PgConfig;
///
/// let config = PgConfig::new("postgres://postgres@127.0.0.1:5432/test")
///     .with_schema("billing")
///     .with_max_connections(8)
///     .with_poll_interval(Duration::from_millis(250));
/// assert_eq!(config.schema(), "billing");
/// ```
#[derive(Clone)]
pub struct PgConfig {
    source: Source,
    pub(crate) schema: String,
    pub(crate) limits: Limits,
    pub(crate) max_connections: u32,
    pub(crate) writers: usize,
    pub(crate) direct_connections: usize,
    pub(crate) max_group_requests: usize,
    pub(crate) max_group_events: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) visibility_wait: Duration,
    pub(crate) notify: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) acquire_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) listener_check: Duration,
    pub(crate) hooks: TestHooks,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: show only where it points to.
        let source = match &self.source {
            Source::Url(_) => "url",
            Source::Options(_) => "options",
        };
        f.debug_struct("PgConfig")
            .field("source", &source)
            .field("schema", &self.schema)
            .field("limits", &self.limits)
            .field("max_connections", &self.max_connections)
            .field("writers", &self.writers)
            .field("direct_connections", &self.direct_connections)
            .field("max_group_requests", &self.max_group_requests)
            .field("max_group_events", &self.max_group_events)
            .field("poll_interval", &self.poll_interval)
            .field("visibility_wait", &self.visibility_wait)
            .field("notify", &self.notify)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("listener_check", &self.listener_check)
            .finish_non_exhaustive()
    }
}

impl PgConfig {
    /// A configuration for the database at `url` (`postgres://user@host:port/db`), in the
    /// schema `annals`, with default limits. Connections show `annals-postgres` as their
    /// application name (in `pg_stat_activity`) unless the URL sets one
    /// (`?application_name=billing`).
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_source(Source::Url(url.into()))
    }

    /// A configuration from sqlx connect options (host, credentials, TLS, ...). The store adds
    /// its own `search_path` to them.
    pub fn from_options(options: PgConnectOptions) -> Self {
        Self::with_source(Source::Options(Box::new(options)))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            schema: "annals".to_owned(),
            limits: Limits::default(),
            max_connections: 10,
            writers: 2,
            direct_connections: 4,
            max_group_requests: 256,
            max_group_events: 20_000,
            poll_interval: Duration::from_millis(500),
            visibility_wait: Duration::from_secs(5),
            notify: true,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
            listener_check: Duration::from_secs(15),
            hooks: TestHooks::default(),
        }
    }

    /// Keeps the store's tables in this schema (created by
    /// [`PgEventStore::migrate`](crate::PgEventStore::migrate)), so several stores can share
    /// a database. Validated on connect, see [`validate_schema_name`].
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Sets the limits checked before any append reaches the database.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The most pooled connections (default 10). The group-commit writers use up to
    /// [`with_writers`](Self::with_writers) of them while they write, and each running read
    /// uses one at a time. Two kinds of connection are held outside the pool's count: the
    /// direct path's ([`with_direct_connections`](Self::with_direct_connections), four by
    /// default), and one per live subscription, on which it listens for notifications. So a
    /// store holds at most `max + direct` connections at a time, plus its live
    /// subscriptions', and one brief connection that names the cause when the pool cannot
    /// reach the server.
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How many group-commit writers run at once (default 2; it was 4, which measured the
    /// same at 8 and 64 tasks with one connection less busy: BENCHMARKS.md, "the command
    /// path at every concurrency"): while one group commits, the next one gathers
    /// and starts. Each holds a pooled connection while it writes.
    pub fn with_writers(mut self, writers: usize) -> Self {
        self.writers = writers.max(1);
        self
    }

    /// How many connections the direct path may hold (default 4; it was 1). While at most
    /// this many calls (appends and loads of aggregates) are in the store, each runs on the
    /// caller's task, over a direct connection, as its own statement: a one-stream append as
    /// its own transaction instead of waiting to be grouped by a writer, a load alone instead
    /// of waiting to be read in a batch. Beyond that, concurrency is up, and calls go to the
    /// writers' group commits and the load batches, which serve many callers better. At 2 and
    /// 4 tasks of uncached commands, 4 measured 0.87-0.96 and 0.96-1.08 of the hand-written
    /// path against 0.59-0.67 and 0.76-0.93 with 1 (store-postgres/PERFORMANCE.md, "Few
    /// callers go direct"). A direct connection is taken from the pool only when one is idle
    /// there, and is then held aside, outside the pool's count
    /// ([`with_max_connections`](Self::with_max_connections)): the pool may open another in
    /// its place.
    pub fn with_direct_connections(mut self, connections: usize) -> Self {
        self.direct_connections = connections.max(1);
        self
    }

    /// The most append calls, and events, one group commit may carry (default 256 calls,
    /// 20,000 events; a bigger single call still goes alone).
    pub fn with_max_group(mut self, requests: usize, events: usize) -> Self {
        self.max_group_requests = requests.max(1);
        self.max_group_events = events.max(1);
        self
    }

    /// How often a live subscription polls when no notification arrives (default 500 ms).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long a read of the log's end, or `head_position`, waits for events that are
    /// committed but still behind an older transaction in flight (default 5 s). After it, the
    /// read ends at the safe horizon: it never skips, it is only less fresh.
    pub fn with_visibility_wait(mut self, wait: Duration) -> Self {
        self.visibility_wait = wait;
        self
    }

    /// Whether appends send a notification that wakes live subscriptions (default true;
    /// without it subscriptions rely on polling).
    pub fn with_notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// How long opening one connection may take before the server counts as unreachable
    /// (default 5 s). [`PgEventStore::connect`](crate::PgEventStore::connect) tries one
    /// connection at once and fails with [`Error::Unreachable`] ("cannot connect to PostgreSQL
    /// at HOST:PORT: connection refused") instead of waiting.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a call waits for a pooled connection (default 10 s): while every connection
    /// is busy, or while the server cannot be reached (the pool keeps trying to connect
    /// meanwhile). After it the call fails with a transient error; an append names the
    /// unreachable server ([`Error::Unreachable`]) when that is why.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The longest wait for the server's answer (default 10 s): a statement's answer (an
    /// append, a page, a version), the next rows of a long read, a subscription's poll and its
    /// listener's health check. A database behind a network that drops packets without a reset
    /// is otherwise noticed only by the kernel's TCP timeout, about 15 minutes later. What runs
    /// out fails with [`Error::TimedOut`], transient, and the connection is closed, never
    /// pooled again. A timed-out append may have been stored (the error says so): retry it with
    /// the same event ids, which answers with the stored result. Keep it above the longest
    /// append (lock waits included) and the slowest page the server may take.
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a subscription's notification listener may stay quiet before it is checked
    /// with a round trip (default 15 s, bounded by the I/O timeout); a listener that does not
    /// answer is closed and replaced, so notifications do not stop silently.
    pub fn with_listener_check(mut self, interval: Duration) -> Self {
        self.listener_check = interval.max(Duration::from_millis(1));
        self
    }

    /// Test-only hooks that make transactions slow, fail or lose their result.
    #[doc(hidden)]
    pub fn with_test_hooks(mut self, hooks: TestHooks) -> Self {
        self.hooks = hooks;
        self
    }

    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions> {
        let options = match &self.source {
            Source::Url(url) => url.parse::<PgConnectOptions>().map_err(Error::InvalidUrl)?,
            Source::Options(options) => (**options).clone(),
        };
        // The caller's application name, if the URL or the options set one.
        let name = options
            .get_application_name()
            .unwrap_or(DEFAULT_APPLICATION_NAME)
            .to_owned();
        // Validated: a plain identifier, safe to send as the search_path startup option.
        Ok(options
            .options([("search_path", self.schema.as_str())])
            .application_name(&name))
    }

    /// Where the store connects to, for messages: `host:port`, or the socket path.
    pub(crate) fn address(options: &PgConnectOptions) -> String {
        let host = options.get_host();
        if host.starts_with('/') {
            format!("{host}/.s.PGSQL.{}", options.get_port())
        } else if host.contains(':') {
            format!("[{host}]:{}", options.get_port())
        } else {
            format!("{host}:{}", options.get_port())
        }
    }

    /// The notification channel of this schema.
    pub(crate) fn channel(&self) -> String {
        format!("annals_{}", self.schema)
    }
}

/// A function the hooks call once per group commit.
#[doc(hidden)]
pub type HookFn<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// Hooks for tests that try to break the store: not part of the stable API.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct TestHooks {
    /// Sleep this long inside each append transaction, after the insert, before the commit.
    pub in_transaction_delay: Option<HookFn<Duration>>,
    /// Roll back the append transaction after the insert (and the delay) when it returns true.
    pub fail_after_insert: Option<HookFn<bool>>,
    /// Commit this many successful appends, then report a transient error instead of their
    /// result, as if the connection broke after COMMIT was sent.
    pub lose_results: Arc<AtomicUsize>,
    /// Counts the groups of several one-stream calls that the one-statement path stored
    /// (`batch.rs`), so a test can tell that it ran.
    pub batched_groups: Arc<AtomicUsize>,
    /// Counts those of them stored by the statement for groups whose every version was known
    /// before it ran (no read, no judging: `batch.rs`).
    pub known_groups: Arc<AtomicUsize>,
    /// Counts the appends stored on the direct path (`direct.rs`), on the caller's task.
    pub direct_appends: Arc<AtomicUsize>,
}

impl TestHooks {
    /// Whether a hook changes what a transaction does (the fast path then stays unused).
    pub(crate) fn active(&self) -> bool {
        self.in_transaction_delay.is_some() || self.fail_after_insert.is_some()
    }

    pub(crate) fn delay(&self) -> f64 {
        self.in_transaction_delay
            .as_ref()
            .map_or(0.0, |f| f().as_secs_f64())
    }

    pub(crate) fn fail(&self) -> bool {
        self.fail_after_insert.as_ref().is_some_and(|f| f())
    }

    pub(crate) fn lose_result(&self) -> bool {
        self.lose_results
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl fmt::Debug for TestHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHooks")
            .field("in_transaction_delay", &self.in_transaction_delay.is_some())
            .field("fail_after_insert", &self.fail_after_insert.is_some())
            .field("lose_results", &self.lose_results)
            .field("batched_groups", &self.batched_groups)
            .field("known_groups", &self.known_groups)
            .field("direct_appends", &self.direct_appends)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever is accepted is a plain identifier: safe between double quotes, in a
        /// search_path and as part of a channel name.
        #[test]
        fn accepted_names_are_plain_identifiers(name in "\\PC{0,70}|[a-z_][a-z0-9_]{0,60}") {
            if validate_schema_name(&name).is_ok() {
                prop_assert!(name.len() <= MAX_SCHEMA_NAME_BYTES);
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                prop_assert!(!name.as_bytes()[0].is_ascii_digit());
                prop_assert!(!name.starts_with("pg_"));
            } else {
                let plain = !name.is_empty()
                    && name.len() <= MAX_SCHEMA_NAME_BYTES
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !name.as_bytes()[0].is_ascii_digit()
                    && !name.starts_with("pg_");
                prop_assert!(!plain, "{name:?} was refused");
            }
        }
    }

    #[test]
    fn schema_names() {
        for good in ["annals", "_x", "a1_b2", &"a".repeat(MAX_SCHEMA_NAME_BYTES)] {
            assert!(validate_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Upper",
            "a-b",
            "a\"b",
            "a;drop",
            "pg_temp",
            "é",
            &"a".repeat(MAX_SCHEMA_NAME_BYTES + 1),
        ] {
            assert!(
                matches!(
                    validate_schema_name(bad),
                    Err(Error::InvalidSchemaName { .. })
                ),
                "{bad}"
            );
        }
    }
}
