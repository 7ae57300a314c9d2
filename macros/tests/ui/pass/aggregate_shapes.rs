//! The state may be generic (its where clause carries over) or an enum (a state machine).
use annals::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::convert::Infallible;

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum DoorEvent {
    Opened { at: u64 },
    Closed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[serde(bound = "")]
#[aggregate(name = "bag", event = DoorEvent, command = T, error = Infallible, snapshot_every = 2)]
struct Bag<T>
where
    T: Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    items: Vec<T>,
}

impl<T> Bag<T>
where
    T: Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn handle(&self, _: T) -> Result<Vec<DoorEvent>, Infallible> {
        Ok(vec![DoorEvent::Closed])
    }

    fn apply(&mut self, _: &DoorEvent) {
        self.items.push(T::default());
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(
    name = "door",
    event = DoorEvent,
    command = bool,
    error = Infallible,
    snapshot_version = "fingerprint"
)]
enum Door {
    #[default]
    Closed,
    Open {
        since: u64,
    },
}

impl Door {
    fn handle(&self, open: bool) -> Result<Vec<DoorEvent>, Infallible> {
        Ok(vec![if open {
            DoorEvent::Opened { at: 1 }
        } else {
            DoorEvent::Closed
        }])
    }

    fn apply(&mut self, event: &DoorEvent) {
        *self = match event {
            DoorEvent::Opened { at } => Door::Open { since: *at },
            DoorEvent::Closed => Door::Closed,
        };
    }
}

fn main() {
    let mut bag = Bag::<u8>::default();
    let events = Aggregate::handle(&bag, 3).unwrap();
    Aggregate::apply(&mut bag, &events[0]);
    assert_eq!(bag.items, [0]);
    assert_eq!(<Bag<u8> as Aggregate>::TYPE, "bag");

    let mut door = Door::default();
    for event in Aggregate::handle(&door, true).unwrap() {
        Aggregate::apply(&mut door, &event);
    }
    assert!(matches!(door, Door::Open { since: 1 }));
    assert_ne!(Door::SNAPSHOT_VERSION, 1);
}
