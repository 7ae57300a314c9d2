use annals::testing::{CounterCommand, CounterError, CounterEvent};

#[derive(Clone, Default, serde::Serialize, serde::Deserialize, annals::Aggregate)]
#[aggregate(name = "account", event = CounterEvent, command = CounterCommand, error = CounterError)]
struct Account {
    balance: i64,
}

impl Account {
    fn handle(&self, _: CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        Ok(Vec::new())
    }
}

fn main() {}
