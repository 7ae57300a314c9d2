use annals::BoxError;
use serde_json::Value;

fn up(v: Value) -> Result<Value, BoxError> {
    Ok(v)
}

#[derive(annals::DomainEvent)]
enum Event {
    #[event(version = 2, upcasters(1 => up, 1 => up))]
    Deposited { amount: i64 },
}

fn main() {}
