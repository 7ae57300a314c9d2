//! Every supported variant shape, versions, and upcasters given by path.
use annals::{BoxError, DomainEvent};
use serde_json::Value;

mod upcasts {
    pub fn deposited_v1(v: serde_json::Value) -> Result<serde_json::Value, annals::BoxError> {
        Ok(v)
    }
}

fn deposited_v2(v: Value) -> Result<Value, BoxError> {
    Ok(v)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Renamed {
    to: String,
}

#[derive(DomainEvent)]
enum AccountEvent {
    /// Unit variant: stored as `{}`.
    Closed,
    /// Newtype variant: stored as the field's own JSON.
    Renamed(Renamed),
    #[event(version = 3)]
    #[event(upcasters(1 => upcasts::deposited_v1, 2 => crate::deposited_v2))]
    Deposited { amount: i64, memo: Option<String> },
    /// Steps may start above 1 when the older versions were never stored.
    #[event(name = "account.withdrawn", version = 3, upcasters(2 => deposited_v2,))]
    Withdrawn { amount: i64 },
    /// A type born at version 2 with no older payloads to upcast.
    #[event(version = 2)]
    Frozen { reason: String },
}

fn main() {
    let chain = AccountEvent::upcaster_chain();
    assert_eq!(chain.latest_version("Deposited"), Some(3));
    assert_eq!(chain.latest_version("account.withdrawn"), Some(3));
    assert!(!chain.knows("Withdrawn"));
}
