//! `#[derive(Aggregate)]` end to end: commands through `annals::Repository` on the in-memory
//! store, snapshots every N events, and fingerprinted snapshot versions that make a changed
//! state struct ignore old snapshots.

use annals::{
    Aggregate, CommandContext, CommandError, DomainEvent, EventStore, InMemoryEventStore, Payload,
    Repository, Snapshot, SnapshotPolicy,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum LedgerEvent {
    Credited { amount: i64 },
    Debited { amount: i64 },
}

#[derive(Debug, Clone)]
enum LedgerCommand {
    Credit(i64),
    Debit(i64),
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum LedgerError {
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(
    name = "ledger",
    event = LedgerEvent,
    command = LedgerCommand,
    error = LedgerError,
    snapshot_every = 3,
    snapshot_version = "fingerprint"
)]
struct Ledger {
    balance: i64,
}

impl Ledger {
    fn handle(&self, command: LedgerCommand) -> Result<Vec<LedgerEvent>, LedgerError> {
        match command {
            LedgerCommand::Credit(amount) => Ok(vec![LedgerEvent::Credited { amount }]),
            LedgerCommand::Debit(asked) if asked > self.balance => {
                Err(LedgerError::InsufficientFunds {
                    balance: self.balance,
                    asked,
                })
            }
            LedgerCommand::Debit(amount) => Ok(vec![LedgerEvent::Debited { amount }]),
        }
    }

    fn apply(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Credited { amount } => self.balance += amount,
            LedgerEvent::Debited { amount } => self.balance -= amount,
        }
    }
}

/// The same stream type as `Ledger` with one more field: a new fingerprint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(
    name = "ledger",
    event = LedgerEvent,
    command = LedgerCommand,
    error = LedgerError,
    snapshot_every = 3,
    snapshot_version = "fingerprint"
)]
struct LedgerWithCount {
    balance: i64,
    #[serde(default)]
    events: u64,
}

impl LedgerWithCount {
    fn handle(&self, _: LedgerCommand) -> Result<Vec<LedgerEvent>, LedgerError> {
        Ok(Vec::new())
    }

    fn apply(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Credited { amount } => self.balance += amount,
            LedgerEvent::Debited { amount } => self.balance -= amount,
        }
        self.events += 1;
    }
}

#[test]
fn the_attributes_become_the_trait_constants() {
    assert_eq!(Ledger::TYPE, "ledger");
    assert_eq!(Ledger::SNAPSHOT_POLICY, SnapshotPolicy::EveryNEvents(3));
}

#[tokio::test]
async fn commands_run_through_the_repository_with_snapshots_every_three_events() {
    let ledgers = Repository::<Ledger, _>::new(InMemoryEventStore::new());
    let ctx = CommandContext::new();
    for amount in [5, 7, 1, 2, 3, 4, 6] {
        ledgers
            .execute("l1", LedgerCommand::Credit(amount), &ctx)
            .await
            .unwrap();
    }
    let refused = ledgers
        .execute("l1", LedgerCommand::Debit(1000), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(
        refused,
        CommandError::Rejected(LedgerError::InsufficientFunds {
            balance: 28,
            asked: 1000
        })
    ));
    let stream = ledgers.stream_id("l1").unwrap();
    assert_eq!(stream.as_str(), "ledger-l1");
    let snapshot = ledgers
        .store()
        .load_snapshot(&stream)
        .await
        .unwrap()
        .expect("a snapshot after 6 events");
    assert_eq!(snapshot.stream_version, 6);
    assert_eq!(snapshot.schema_version, Ledger::SNAPSHOT_VERSION);
    assert_eq!(
        snapshot.payload.deserialize::<Ledger>().unwrap().balance,
        22
    );

    // The repository loads from the snapshot: a doctored one shows through, plus event 7.
    ledgers
        .store()
        .save_snapshot(Snapshot {
            payload: Payload::from_serialize(&Ledger { balance: 1000 }).unwrap(),
            ..snapshot
        })
        .await
        .unwrap();
    assert_eq!(ledgers.load("l1").await.unwrap().state.balance, 1006);

    // A state struct with another shape has another fingerprint: it ignores that snapshot
    // and rebuilds from the 7 events.
    let changed = Repository::<LedgerWithCount, _>::new(ledgers.store().clone());
    let loaded = changed.load("l1").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.state.events), (28, 7));
}

#[test]
fn the_fingerprint_changes_with_a_field_and_only_then() {
    #[derive(Clone, Default, Serialize, Deserialize, Aggregate)]
    #[aggregate(name = "a", event = LedgerEvent, command = LedgerCommand, error = LedgerError, snapshot_version = "fingerprint")]
    struct A {
        balance: i64,
        owner: String,
    }
    /// `A` with its fields in another order and another name: the same serialized shape.
    #[derive(Clone, Default, Serialize, Deserialize, Aggregate)]
    #[aggregate(name = "b", event = LedgerEvent, command = LedgerCommand, error = LedgerError, snapshot_version = "fingerprint")]
    struct B {
        owner: String,
        balance: i64,
    }
    /// `A` with one field's type changed.
    #[derive(Clone, Default, Serialize, Deserialize, Aggregate)]
    #[aggregate(name = "c", event = LedgerEvent, command = LedgerCommand, error = LedgerError, snapshot_version = "fingerprint")]
    struct C {
        balance: i128,
        owner: String,
    }
    /// An explicit number wins.
    #[derive(Clone, Default, Serialize, Deserialize, Aggregate)]
    #[aggregate(name = "d", event = LedgerEvent, command = LedgerCommand, error = LedgerError, snapshot_version = 7)]
    struct D {
        balance: i64,
    }
    macro_rules! stubs {
        ($($t:ident),*) => {$(
            impl $t {
                fn handle(&self, _: LedgerCommand) -> Result<Vec<LedgerEvent>, LedgerError> {
                    Ok(Vec::new())
                }
                fn apply(&mut self, _: &LedgerEvent) {}
            }
        )*};
    }
    stubs!(A, B, C, D);

    assert_eq!(A::SNAPSHOT_VERSION, B::SNAPSHOT_VERSION);
    assert_ne!(A::SNAPSHOT_VERSION, C::SNAPSHOT_VERSION);
    assert_ne!(Ledger::SNAPSHOT_VERSION, LedgerWithCount::SNAPSHOT_VERSION);
    assert_eq!(D::SNAPSHOT_VERSION, 7);
    assert_eq!(D::SNAPSHOT_POLICY, SnapshotPolicy::Never);
    assert!(A::SNAPSHOT_VERSION > 0 && A::SNAPSHOT_VERSION <= i32::MAX as u32);
    // Typed events still work through the aggregate's associated type.
    assert!(<A as Aggregate>::Event::handles("Credited"));
}
