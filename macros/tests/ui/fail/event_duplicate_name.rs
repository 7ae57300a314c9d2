#[derive(annals::DomainEvent)]
enum Event {
    Deposited { amount: i64 },
    #[event(name = "Deposited")]
    Credited { amount: i64 },
}

fn main() {}
