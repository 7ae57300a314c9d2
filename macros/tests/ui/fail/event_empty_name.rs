#[derive(annals::DomainEvent)]
enum Event {
    #[event(name = "")]
    Credited { amount: i64 },
}

fn main() {}
