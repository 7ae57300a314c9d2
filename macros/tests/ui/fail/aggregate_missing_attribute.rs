#[derive(Clone, Default, serde::Serialize, serde::Deserialize, annals::Aggregate)]
struct Account {
    balance: i64,
}

fn main() {}
