//! With the trait imported, a missing inherent `handle` would make the generated method call
//! itself for ever: it is a compile error instead.
use annals::Aggregate;
use annals::testing::{CounterCommand, CounterError, CounterEvent};

#[derive(Clone, Default, serde::Serialize, serde::Deserialize, Aggregate)]
#[aggregate(name = "account", event = CounterEvent, command = CounterCommand, error = CounterError)]
struct Account {
    balance: i64,
}

impl Account {
    fn apply(&mut self, _: &CounterEvent) {}
}

fn main() {}
