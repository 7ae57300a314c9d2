#[derive(annals::DomainEvent)]
enum Event {
    #[event(version = 0)]
    Deposited { amount: i64 },
}

fn main() {}
