//! Every mistake of one enum is reported in one build, and the stub impl keeps code that uses
//! the enum as an event type free of follow-on errors.
#[derive(annals::DomainEvent)]
enum Event {
    #[event(version = 0)]
    Opened,
    #[event(name = "Opened")]
    Reopened,
    #[event(colour = "red")]
    Closed,
}

fn main() {
    use annals::DomainEvent;
    let _ = Event::Opened.to_new_event();
}
