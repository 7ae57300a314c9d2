#[derive(annals::DomainEvent)]
struct Deposited {
    amount: i64,
}

fn main() {}
