fn up(v: String) -> String {
    v
}

#[derive(annals::DomainEvent)]
enum Event {
    #[event(version = 2, upcasters(1 => up))]
    Deposited { amount: i64 },
}

fn main() {}
