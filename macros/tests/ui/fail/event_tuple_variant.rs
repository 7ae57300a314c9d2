#[derive(annals::DomainEvent)]
enum Event {
    Moved(i64, i64),
}

fn main() {}
