#[derive(Clone, Default, serde::Serialize, serde::Deserialize, annals::Aggregate)]
#[aggregate(name = "account", command = ())]
struct Account {
    balance: i64,
}

impl Account {
    fn handle(&self, _: ()) -> Result<Vec<annals::testing::CounterEvent>, std::io::Error> {
        Ok(Vec::new())
    }
    fn apply(&mut self, _: &annals::testing::CounterEvent) {}
}

fn main() {
    // The stub impl stops follow-on errors here.
    let _ = annals::Repository::<Account, _>::new(annals::InMemoryEventStore::new());
}
