//! The ledger's events on a broker, and a second service that consumes them.
//!
//! - **Publishing.** With `--nats-url` (or `LEDGER_NATS_URL`), `ledger work` also runs a
//!   `Publisher` of `annals-brokers`: every account event goes to the JetStream stream
//!   `--nats-stream` (`LEDGER`, created when missing) under `<prefix>.account.<Type>`
//!   (`--nats-prefix`, `ledger`), its checkpoint kept beside the leases like the reactors'.
//! - **Consuming.** `ledger notify` is the other service: a `NatsConsumer` (durable consumer
//!   `notify`) hands each message to a handler that writes one line into the account's
//!   notification feed, in the consumer's own store (`DATA_DIR/notifications.sqlite`, or the
//!   PostgreSQL schema `<pg-schema>_notify` in server mode), through an inbox of
//!   `annals-inbox`: the event id is recorded in the same transaction as the line, so a
//!   message delivered again (a publisher that republished after a kill, a consumer killed
//!   before its ack) changes nothing. One message at a time, so each account's feed is in its
//!   order. `ledger notifications ACCOUNT` prints the feed.

use std::{path::PathBuf, time::Duration};

use annals_brokers::{ConsumerConfig, Delivery, NatsConsumer, NatsPublisher, Subjects};
use annals_inbox::{InboxError, PgInbox, Processed, SqliteInbox};
use async_nats::jetstream::stream;
use futures::future::BoxFuture;
use sqlx::{
    AssertSqlSafe, PgPool, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};
use time::OffsetDateTime;

use crate::{
    domain::{AccountEvent, account_of},
    money::{Currency, Money, format_amount},
};

/// The durable consumer (and inbox consumer) name of `ledger notify`.
pub const NOTIFY: &str = "notify";

/// Where the ledger's events go on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// The server(s).
    pub url: String,
    /// The JetStream stream.
    pub stream: String,
    /// The subject prefix: subjects are `<prefix>.account.<Type>`.
    pub prefix: String,
}

impl NatsSettings {
    /// The publisher's name (its lease, checkpoint and status line): one per stream
    /// (`publish-<stream>`, lower case), so that a new stream is published from the start of
    /// the log.
    pub fn publisher_name(&self) -> String {
        let stream: String = self
            .stream
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!("publish-{stream}")
    }

    /// The stream, as it is created when missing: every subject under the prefix, on disk,
    /// with JetStream's duplicate window of 2 minutes (a restarted publisher's repeats are
    /// dropped by event id within it; the consumer's inbox drops any later ones).
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    /// The publisher `ledger work` runs.
    pub fn publisher(&self) -> NatsPublisher {
        NatsPublisher::new(&self.url, &self.stream)
            .with_subjects(Subjects::prefixed(&self.prefix))
            .create_stream(self.stream_config())
    }

    /// The consumer `ledger notify` runs: one message at a time (each account's order),
    /// 5 deliveries with backoff before a message goes to the dead letters.
    pub fn consumer(&self, ack_wait: Duration) -> NatsConsumer {
        NatsConsumer::new(&self.url, &self.stream, NOTIFY)
            .create_stream(self.stream_config())
            .with_filter_subject(format!("{}.account.>", self.prefix))
            .with_ack_wait(ack_wait)
            .with_config(ConsumerConfig::new())
    }
}

/// Where the consumer keeps its feed and inbox.
#[derive(Debug, Clone)]
pub enum NotifyTarget {
    /// A SQLite file of its own (embedded mode).
    Sqlite(PathBuf),
    /// A schema of its own in the PostgreSQL database (server mode).
    Postgres {
        /// The database.
        pool: PgPool,
        /// The schema (`<pg-schema>_notify`).
        schema: String,
    },
}

/// Why the feed could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The consumer's database failed.
    #[error("the notification store failed")]
    Database(#[from] sqlx::Error),
    /// The inbox failed or refused a name.
    #[error("the notification inbox failed")]
    Inbox(#[from] InboxError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] annals_brokers::BrokerError),
    /// No broker is configured.
    #[error(
        "no broker: pass --nats-url (or set LEDGER_NATS_URL) to publish and consume the ledger's events"
    )]
    NoBroker,
}

/// One line of an account's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Order of arrival in the feed (all accounts).
    pub seq: i64,
    /// The event's version in the account's stream.
    pub stream_version: i64,
    /// The event's type.
    pub event_type: String,
    /// What happened, in words.
    pub text: String,
    /// When the line was written, in Unix milliseconds.
    pub received_at_ms: i64,
}

/// The consumer's store: the feed, the accounts' currencies and the inbox.
#[derive(Debug, Clone)]
pub enum NotifyStore {
    /// SQLite.
    Sqlite {
        /// The file.
        pool: SqlitePool,
        /// The inbox in the same file.
        inbox: SqliteInbox,
    },
    /// PostgreSQL.
    Postgres {
        /// The database.
        pool: PgPool,
        /// The consumer's schema.
        schema: String,
        /// The inbox in the same schema.
        inbox: PgInbox,
    },
}

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The feed line of `event` for an account holding `currency` (unknown before its
/// `Opened`).
pub fn notification_text(event: &AccountEvent, currency: Option<&Currency>) -> String {
    let money = |minor: i64| match currency {
        Some(c) => Money::new(minor, c.clone()).to_string(),
        None => format_amount(minor),
    };
    let memo = |memo: &str| {
        if memo.is_empty() {
            String::new()
        } else {
            format!(": {memo}")
        }
    };
    match event {
        AccountEvent::Opened { owner, currency } => {
            format!("account opened for {owner} in {currency}")
        }
        AccountEvent::Deposited {
            amount,
            memo: m,
            counterparty,
        } => {
            let from = if counterparty.is_empty() {
                String::new()
            } else {
                format!(" from {counterparty}")
            };
            format!("+{} deposited{from}{}", money(*amount), memo(m))
        }
        AccountEvent::Withdrawn { amount, memo: m } => {
            format!("-{} withdrawn{}", money(*amount), memo(m))
        }
        AccountEvent::TransferSent {
            to,
            amount,
            memo: m,
            ..
        } => format!("-{} sent to {to}{}", money(*amount), memo(m)),
        AccountEvent::TransferReceived {
            from,
            amount,
            memo: m,
            ..
        } => format!("+{} received from {from}{}", money(*amount), memo(m)),
        AccountEvent::PayoutStarted {
            beneficiary,
            amount,
            memo: m,
            ..
        } => format!(
            "-{} payout to {beneficiary} sent to the bank{}",
            money(*amount),
            memo(m)
        ),
        AccountEvent::PayoutSettled { payout_id } => {
            format!("payout {payout_id} confirmed by the bank")
        }
        AccountEvent::PayoutReversed { amount, reason, .. } => {
            format!(
                "+{} back: the bank refused a payout ({reason})",
                money(*amount)
            )
        }
        AccountEvent::Frozen { reason } => format!("account frozen{}", memo(reason)),
        AccountEvent::Closed => "account closed".to_owned(),
    }
}

impl NotifyStore {
    /// Opens (and creates) the store.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn open(target: &NotifyTarget) -> Result<Self, NotifyError> {
        let store = match target {
            NotifyTarget::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?;
                let inbox = SqliteInbox::new(pool.clone(), NOTIFY)?;
                Self::Sqlite { pool, inbox }
            }
            NotifyTarget::Postgres { pool, schema } => Self::Postgres {
                inbox: PgInbox::new(pool.clone(), schema, NOTIFY)?,
                pool: pool.clone(),
                schema: schema.clone(),
            },
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), NotifyError> {
        match self {
            Self::Sqlite { pool, inbox } => {
                inbox.migrate().await?;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS notifications (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        account TEXT NOT NULL,
                        stream_version INTEGER NOT NULL,
                        event_id BLOB NOT NULL,
                        event_type TEXT NOT NULL,
                        text TEXT NOT NULL,
                        received_at_ms INTEGER NOT NULL
                    );
                    CREATE INDEX IF NOT EXISTS notifications_account
                        ON notifications (account, seq);
                    CREATE TABLE IF NOT EXISTS notify_accounts (
                        account TEXT PRIMARY KEY,
                        currency TEXT NOT NULL
                    );",
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Self::Postgres {
                pool,
                schema,
                inbox,
            } => {
                // Creates the schema too; the name was checked by the inbox.
                inbox.migrate().await?;
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("ledger-notify:{schema}"))
                    .execute(&mut *tx)
                    .await?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS \"{schema}\".notifications (
                        seq bigserial PRIMARY KEY,
                        account text NOT NULL,
                        stream_version bigint NOT NULL,
                        event_id uuid NOT NULL,
                        event_type text NOT NULL,
                        text text NOT NULL,
                        received_at_ms bigint NOT NULL
                    );
                    CREATE INDEX IF NOT EXISTS notifications_account
                        ON \"{schema}\".notifications (account, seq);
                    CREATE TABLE IF NOT EXISTS \"{schema}\".notify_accounts (
                        account text PRIMARY KEY,
                        currency text NOT NULL
                    );"
                )))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Writes the feed line of one delivery, once: the inbox records the event id in the
    /// transaction that writes the line. Returns whether it was new.
    ///
    /// # Errors
    /// The payload does not decode (the message is delivered again, then dead-lettered),
    /// or the database failed (delivered again).
    pub async fn record(&self, delivery: &Delivery) -> Result<bool, annals::BoxError> {
        let event: AccountEvent = delivery.decode()?;
        let account = account_of(&delivery.stream_id);
        let version = i64::try_from(delivery.stream_version)?;
        let id = delivery.event_id;
        let kind = delivery.event_type.to_string();
        let opened = match &event {
            AccountEvent::Opened { currency, .. } => Some(currency.to_string()),
            _ => None,
        };
        let processed = match self {
            Self::Sqlite { inbox, .. } => {
                inbox
                    .process(id, |tx| -> BoxFuture<'_, Result<(), InboxError>> {
                        Box::pin(async move {
                            if let Some(currency) = &opened {
                                sqlx::query(
                                    "INSERT INTO notify_accounts (account, currency) VALUES (?1, ?2)
                                     ON CONFLICT (account) DO UPDATE SET currency = excluded.currency",
                                )
                                .bind(&account)
                                .bind(currency)
                                .execute(&mut **tx)
                                .await?;
                            }
                            let currency: Option<(String,)> = sqlx::query_as(
                                "SELECT currency FROM notify_accounts WHERE account = ?1",
                            )
                            .bind(&account)
                            .fetch_optional(&mut **tx)
                            .await?;
                            let currency = currency.and_then(|(c,)| c.parse().ok());
                            let text = notification_text(&event, currency.as_ref());
                            sqlx::query(
                                "INSERT INTO notifications
                                    (account, stream_version, event_id, event_type, text, received_at_ms)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            )
                            .bind(&account)
                            .bind(version)
                            .bind(id)
                            .bind(&kind)
                            .bind(text)
                            .bind(now_ms())
                            .execute(&mut **tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await?
            }
            Self::Postgres { inbox, schema, .. } => {
                let schema = schema.clone();
                inbox
                    .process(id, |tx| -> BoxFuture<'_, Result<(), InboxError>> {
                        Box::pin(async move {
                            if let Some(currency) = &opened {
                                sqlx::query(AssertSqlSafe(format!(
                                    "INSERT INTO \"{schema}\".notify_accounts (account, currency)
                                     VALUES ($1, $2)
                                     ON CONFLICT (account) DO UPDATE SET currency = excluded.currency"
                                )))
                                .bind(&account)
                                .bind(currency)
                                .execute(&mut **tx)
                                .await?;
                            }
                            let currency: Option<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
                                "SELECT currency FROM \"{schema}\".notify_accounts WHERE account = $1"
                            )))
                            .bind(&account)
                            .fetch_optional(&mut **tx)
                            .await?;
                            let currency = currency.and_then(|(c,)| c.parse().ok());
                            let text = notification_text(&event, currency.as_ref());
                            sqlx::query(AssertSqlSafe(format!(
                                "INSERT INTO \"{schema}\".notifications
                                    (account, stream_version, event_id, event_type, text, received_at_ms)
                                 VALUES ($1, $2, $3, $4, $5, $6)"
                            )))
                            .bind(&account)
                            .bind(version)
                            .bind(id)
                            .bind(&kind)
                            .bind(text)
                            .bind(now_ms())
                            .execute(&mut **tx)
                            .await?;
                            Ok(())
                        })
                    })
                    .await?
            }
        };
        Ok(matches!(processed, Processed::Done(())))
    }

    /// The `limit` newest lines of `account`'s feed, newest first.
    ///
    /// # Errors
    /// The database failed.
    pub async fn feed(&self, account: &str, limit: i64) -> Result<Vec<Notification>, NotifyError> {
        type Row = (i64, i64, String, String, i64);
        let rows: Vec<Row> = match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query_as(
                    "SELECT seq, stream_version, event_type, text, received_at_ms
                     FROM notifications WHERE account = ?1 ORDER BY seq DESC LIMIT ?2",
                )
                .bind(account)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Self::Postgres { pool, schema, .. } => {
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT seq, stream_version, event_type, text, received_at_ms
                     FROM \"{schema}\".notifications WHERE account = $1 ORDER BY seq DESC LIMIT $2"
                )))
                .bind(account)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(
                |(seq, stream_version, event_type, text, received_at_ms)| Notification {
                    seq,
                    stream_version,
                    event_type,
                    text,
                    received_at_ms,
                },
            )
            .collect())
    }

    /// How many lines the feed of `account` holds.
    ///
    /// # Errors
    /// The database failed.
    pub async fn count(&self, account: &str) -> Result<i64, NotifyError> {
        let (n,): (i64,) = match self {
            Self::Sqlite { pool, .. } => {
                sqlx::query_as("SELECT count(*) FROM notifications WHERE account = ?1")
                    .bind(account)
                    .fetch_one(pool)
                    .await?
            }
            Self::Postgres { pool, schema, .. } => {
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT count(*) FROM \"{schema}\".notifications WHERE account = $1"
                )))
                .bind(account)
                .fetch_one(pool)
                .await?
            }
        };
        Ok(n)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Sqlite { pool, .. } => pool.close().await,
            // The store's pool: closed by its owner.
            Self::Postgres { .. } => {}
        }
    }
}

/// Runs `ledger notify`: consumes the stream into the feed, until Ctrl-C or, with `once`,
/// until nothing is left. Returns what it did.
///
/// # Errors
/// The broker (at the start) or the store failed.
pub async fn consume(
    nats: &NatsSettings,
    store: &NotifyStore,
    ack_wait: Duration,
    once: bool,
) -> Result<(u64, u64), NotifyError> {
    let consumer = nats.consumer(ack_wait);
    let new = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handler = {
        let (store, new) = (store.clone(), new.clone());
        move |delivery: Delivery| {
            let (store, new) = (store.clone(), new.clone());
            async move {
                if store.record(&delivery).await? {
                    new.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
        }
    };
    let consumed = if once {
        consumer.drain(handler).await?
    } else {
        consumer
            .run(handler, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?
    };
    Ok((
        consumed.handled,
        new.load(std::sync::atomic::Ordering::Relaxed),
    ))
}
