//! `#[derive(DomainEvent)]` end to end against the in-memory store: what is stored for each
//! variant shape, and old versions read back through the declared upcasters.

use annals::{
    BoxError, DomainEvent, Error, EventStore, EventType, ExpectedVersion, InMemoryEventStore,
    NewEvent, Payload, RecordedEvent, StreamId, StreamRead,
};
use futures::TryStreamExt;
use serde_json::{Value, json};

/// v1 `{"amount": 5}`; v2 adds `memo`; v3 adds `counterparty`.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum AccountEvent {
    Opened {
        owner: String,
    },
    #[event(version = 3, upcasters(1 => deposited_v1_to_v2, 2 => deposited_v2_to_v3))]
    Deposited {
        amount: i64,
        memo: String,
        counterparty: Option<String>,
    },
    #[event(name = "account.withdrawn")]
    Withdrawn {
        amount: i64,
    },
    Renamed(Owner),
    Closed,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Owner {
    name: String,
}

fn deposited_v1_to_v2(mut v: Value) -> Result<Value, BoxError> {
    if !v.get("amount").is_some_and(Value::is_i64) {
        return Err("a Deposited v1 payload needs an integer amount".into());
    }
    v["memo"] = json!("");
    Ok(v)
}

fn deposited_v2_to_v3(mut v: Value) -> Result<Value, BoxError> {
    v["counterparty"] = Value::Null;
    Ok(v)
}

fn stream() -> StreamId {
    StreamId::new("account-1").unwrap()
}

async fn store_raw(store: &InMemoryEventStore, events: Vec<(&str, u32, Value)>) {
    let events = events
        .into_iter()
        .map(|(ty, version, payload)| {
            NewEvent::new(
                EventType::new(ty).unwrap(),
                version,
                Payload::from_serialize(&payload).unwrap(),
            )
        })
        .collect();
    store
        .append(&stream(), ExpectedVersion::Any, events)
        .await
        .unwrap();
}

async fn read_back(store: &InMemoryEventStore) -> Vec<RecordedEvent> {
    store
        .read_stream(&stream(), StreamRead::forward_from(1))
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_v1_event_is_read_back_as_v3_through_both_upcasters() {
    let store = InMemoryEventStore::new();
    store_raw(
        &store,
        vec![
            ("Deposited", 1, json!({ "amount": 5 })),
            ("Deposited", 2, json!({ "amount": 6, "memo": "rent" })),
        ],
    )
    .await;
    let stored = read_back(&store).await;
    // Stored bytes never change: the store still holds v1 and v2.
    assert_eq!(stored[0].schema_version, 1);
    assert_eq!(stored[0].payload.as_str(), r#"{"amount":5}"#);
    let decoded: Vec<_> = stored
        .iter()
        .map(AccountEvent::decode)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        decoded,
        [
            AccountEvent::Deposited {
                amount: 5,
                memo: String::new(),
                counterparty: None,
            },
            AccountEvent::Deposited {
                amount: 6,
                memo: "rent".into(),
                counterparty: None,
            },
        ]
    );
}

#[tokio::test]
async fn each_shape_is_stored_as_its_fields_only_and_round_trips() {
    let events = vec![
        AccountEvent::Opened {
            owner: "ada".into(),
        },
        AccountEvent::Deposited {
            amount: 10,
            memo: "pay".into(),
            counterparty: Some("bob".into()),
        },
        AccountEvent::Withdrawn { amount: 3 },
        AccountEvent::Renamed(Owner { name: "eve".into() }),
        AccountEvent::Closed,
    ];
    let store = InMemoryEventStore::new();
    let new: Vec<_> = events.iter().map(|e| e.to_new_event().unwrap()).collect();
    store
        .append(&stream(), ExpectedVersion::NoStream, new)
        .await
        .unwrap();
    let stored = read_back(&store).await;
    let summary: Vec<_> = stored
        .iter()
        .map(|e| {
            let payload: Value = serde_json::from_str(e.payload.as_str()).unwrap();
            (e.event_type.as_str().to_owned(), e.schema_version, payload)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Opened".into(), 1, json!({ "owner": "ada" })),
            (
                "Deposited".into(),
                3,
                json!({ "amount": 10, "memo": "pay", "counterparty": "bob" })
            ),
            ("account.withdrawn".into(), 1, json!({ "amount": 3 })),
            ("Renamed".into(), 1, json!({ "name": "eve" })),
            ("Closed".into(), 1, json!({})),
        ]
    );
    let decoded: Vec<_> = stored
        .iter()
        .map(AccountEvent::decode)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(decoded, events);
}

#[test]
fn the_chain_lists_every_stored_name_with_its_latest_version() {
    let chain = AccountEvent::upcaster_chain();
    let mut types: Vec<_> = chain
        .event_types()
        .map(|t| (t.to_owned(), chain.latest_version(t).unwrap()))
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("Closed".to_owned(), 1),
            ("Deposited".to_owned(), 3),
            ("Opened".to_owned(), 1),
            ("Renamed".to_owned(), 1),
            ("account.withdrawn".to_owned(), 1),
        ]
    );
    // Built once and shared.
    assert!(std::ptr::eq(chain, AccountEvent::upcaster_chain()));
    assert!(AccountEvent::handles("account.withdrawn"));
    assert!(!AccountEvent::handles("Withdrawn"));
}

#[test]
fn decoding_refuses_unknown_types_and_payloads_that_do_not_fit() {
    let err = AccountEvent::from_payload("Frozen", "{}").unwrap_err();
    assert!(
        err.to_string()
            .contains("Frozen is not an event type of AccountEvent"),
        "{err}"
    );
    assert!(AccountEvent::from_payload("Opened", r#"{"owner": 7}"#).is_err());
    assert!(AccountEvent::from_payload("Closed", "null").is_err());
    assert_eq!(
        AccountEvent::from_payload("Closed", "{}").unwrap(),
        AccountEvent::Closed
    );
}

#[tokio::test]
async fn a_failing_upcaster_is_reported_with_the_event() {
    let store = InMemoryEventStore::new();
    store_raw(&store, vec![("Deposited", 1, json!({ "amount": "five" }))]).await;
    let stored = read_back(&store).await;
    match AccountEvent::decode(&stored[0]) {
        Err(Error::Upcast {
            event_type,
            from_version,
            ..
        }) => assert_eq!((event_type.as_str(), from_version), ("Deposited", 1)),
        other => panic!("expected an upcast error, got {other:?}"),
    }
}

proptest::proptest! {
    /// Whatever the field values (quotes, escapes, any Unicode, extreme numbers), what the
    /// derive encodes decodes back to the same value, and the payload holds only the fields.
    #[test]
    fn encoding_round_trips(
        amount in proptest::num::i64::ANY,
        memo in ".*",
        counterparty in proptest::option::of(".*"),
        name in "\\PC*",
    ) {
        let events = [
            AccountEvent::Deposited { amount, memo, counterparty },
            AccountEvent::Renamed(Owner { name }),
            AccountEvent::Withdrawn { amount },
        ];
        for event in events {
            let payload = event.to_payload().unwrap();
            let decoded = AccountEvent::from_payload(event.event_type(), payload.as_str()).unwrap();
            proptest::prop_assert_eq!(&decoded, &event);
            let value: Value = serde_json::from_str(payload.as_str()).unwrap();
            proptest::prop_assert!(value.get("type").is_none() && value.get("Deposited").is_none());
        }
    }
}

/// Field-level `rename`, `alias` and `default` apply to the stored form.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum ProfileEvent {
    Named {
        #[serde(rename = "n", alias = "full_name")]
        name: String,
        /// Added later: old payloads have no `tags`, and need no upcaster.
        #[serde(default)]
        tags: Vec<String>,
    },
}

#[test]
fn serde_field_attributes_shape_the_stored_form() {
    let event = ProfileEvent::Named {
        name: "ada".into(),
        tags: vec!["x".into()],
    };
    let payload = event.to_payload().unwrap();
    assert_eq!(payload.as_str(), r#"{"n":"ada","tags":["x"]}"#);
    assert_eq!(
        ProfileEvent::from_payload("Named", payload.as_str()).unwrap(),
        event
    );
    assert_eq!(
        ProfileEvent::from_payload("Named", r#"{"full_name":"bob"}"#).unwrap(),
        ProfileEvent::Named {
            name: "bob".into(),
            tags: Vec::new(),
        }
    );
}
