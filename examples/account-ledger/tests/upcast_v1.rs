//! Events stored by an earlier version of the example, when `Deposited` had no memo and no
//! counterparty (schema version 1), read back through the upcaster.

use account_ledger::domain::{Account, AccountEvent, Status};
use annals::{
    DomainEvent, EventStore, EventType, ExpectedVersion, InMemoryEventStore, NewEvent, Payload,
    Repository, StreamId, StreamRead,
};
use futures::TryStreamExt;
use serde_json::Value;

/// The fixture, appended as stored: the v1 payloads and their schema version, untouched.
async fn store_with_fixture() -> InMemoryEventStore {
    let store = InMemoryEventStore::new();
    load_fixture(&store).await;
    store
}

async fn load_fixture(store: &impl EventStore) {
    let text = include_str!("fixtures/v1-events.jsonl");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let event = NewEvent::new(
            EventType::new(v["type"].as_str().unwrap()).unwrap(),
            u32::try_from(v["schema_version"].as_u64().unwrap()).unwrap(),
            Payload::from_serialize(&v["payload"]).unwrap(),
        );
        let stream = StreamId::new(v["stream"].as_str().unwrap()).unwrap();
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn v1_deposits_read_back_with_an_empty_memo_and_counterparty() {
    let store = store_with_fixture().await;
    let stream = StreamId::new("account-legacy").unwrap();
    let stored: Vec<_> = store
        .read_stream(&stream, StreamRead::forward())
        .try_collect()
        .await
        .unwrap();
    let deposits: Vec<_> = stored
        .iter()
        .filter(|e| e.event_type.as_str() == "Deposited")
        .collect();
    assert_eq!(deposits.len(), 3);
    // Stored bytes never change: the store still holds version 1 without a memo.
    assert!(deposits.iter().all(|e| e.schema_version == 1));
    assert!(!deposits[0].payload.as_str().contains("memo"));
    let decoded: Vec<AccountEvent> = deposits
        .iter()
        .map(|e| AccountEvent::decode(e).unwrap())
        .collect();
    assert_eq!(
        decoded,
        [50_000, 1_250, 99].map(|amount| AccountEvent::Deposited {
            amount,
            memo: String::new(),
            counterparty: String::new(),
        })
    );
}

#[tokio::test]
async fn the_legacy_account_loads_and_takes_new_commands() {
    let store = store_with_fixture().await;
    let accounts = Repository::<Account, _>::new(store.clone());
    let loaded = accounts.load("legacy").await.unwrap();
    assert_eq!(loaded.version, 5);
    assert_eq!(loaded.state.balance, 50_000 + 1_250 - 20_000 + 99);
    assert_eq!(loaded.state.status, Status::Open);
    assert_eq!(loaded.state.owner, "Ludwig Altmann");

    // New deposits are written at version 2 beside the old ones.
    let ledger = account_ledger::domain::Ledger::new(store.clone());
    ledger
        .execute(
            "legacy",
            account_ledger::domain::AccountCommand::Deposit {
                amount: 1,
                currency: None,
                memo: "first v2 deposit".into(),
                counterparty: "ACME".into(),
            },
            &annals::CommandContext::new(),
        )
        .await
        .unwrap();
    let last = store
        .read_stream(
            &StreamId::new("account-legacy").unwrap(),
            StreamRead::backward().with_limit(1),
        )
        .try_next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (last.event_type.as_str(), last.schema_version),
        ("Deposited", 2)
    );
    assert!(last.payload.as_str().contains("first v2 deposit"));
}

#[test]
fn a_malformed_v1_deposit_is_a_typed_upcast_error() {
    let event = annals::RecordedEvent {
        position: annals::LogPosition::serial(1),
        stream_id: StreamId::new("account-x").unwrap(),
        stream_version: 1,
        event_id: uuid::Uuid::now_v7(),
        event_type: EventType::new("Deposited").unwrap(),
        schema_version: 1,
        payload: Payload::from_json(r#"{"amount":"a lot"}"#).unwrap(),
        metadata: annals::Metadata::default(),
        recorded_at: time::OffsetDateTime::now_utc(),
    };
    let err = AccountEvent::decode(&event).unwrap_err();
    assert!(matches!(err, annals::Error::Upcast { .. }), "{err:?}");
}

#[tokio::test]
async fn the_embedded_sqlite_store_reads_v1_events_through_the_upcaster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.sqlite");
    {
        let store = annals_sqlite::SqliteEventStore::open(annals_sqlite::SqliteConfig::new(&path))
            .await
            .unwrap();
        load_fixture(&store).await;
        store.close().await;
    }
    // A later process opens the file written "by the earlier version".
    let store = annals_sqlite::SqliteEventStore::open(annals_sqlite::SqliteConfig::new(&path))
        .await
        .unwrap();
    let loaded = Repository::<Account, _>::new(store.clone())
        .load("legacy")
        .await
        .unwrap();
    assert_eq!(loaded.state.balance, 31_349);
    let first_deposit = store
        .read_stream(
            &StreamId::new("account-legacy").unwrap(),
            StreamRead::forward_from(2),
        )
        .try_next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_deposit.schema_version, 1);
    assert_eq!(
        AccountEvent::decode(&first_deposit).unwrap(),
        AccountEvent::Deposited {
            amount: 50_000,
            memo: String::new(),
            counterparty: String::new(),
        }
    );
}
