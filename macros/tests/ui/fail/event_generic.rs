#[derive(annals::DomainEvent)]
enum Event<T> {
    Credited { amount: T },
}

fn main() {}
