#[derive(annals::DomainEvent)]
enum Event {
    #[event(rename = "Deposited")]
    Credited { amount: i64 },
}

fn main() {}
