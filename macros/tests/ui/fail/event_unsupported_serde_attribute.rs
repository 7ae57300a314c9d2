#[derive(annals::DomainEvent)]
enum Event {
    Credited {
        #[serde(skip_serializing_if = "Option::is_none")]
        memo: Option<String>,
    },
}

fn main() {}
