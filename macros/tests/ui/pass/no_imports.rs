//! The generated code uses absolute paths only: this crate imports nothing and shadows the
//! prelude names and crate names that generated code might otherwise rely on.
#![allow(dead_code, non_camel_case_types, non_upper_case_globals)]

struct Result;
struct Option;
struct Vec;
struct Box;
struct Some;
struct None;
struct Ok;
struct Err;
struct Default;
struct __AnnalsEncode;
struct CHAIN;
const other: u8 = 0;
const payload: u8 = 0;
const event_type: u8 = 0;
const step: u8 = 0;
const command: u8 = 0;
const event: u8 = 0;
const field: u8 = 0;
const decoded: u8 = 0;
mod serde {}
mod serde_json {}
mod annals {}
mod core {}
mod std {}
trait Aggregate {
    fn handle(&self) {}
}
trait DomainEvent {}

fn v1_to_v2(
    mut v: ::annals::__private::serde_json::Value,
) -> ::core::result::Result<::annals::__private::serde_json::Value, ::annals::BoxError> {
    v["memo"] = ::annals::__private::serde_json::Value::from("");
    ::core::result::Result::Ok(v)
}

#[derive(Debug, Clone, PartialEq, ::annals::DomainEvent)]
enum Event {
    Opened,
    #[event(name = "Deposited", version = 2, upcasters(1 => v1_to_v2))]
    Deposited {
        amount: i64,
        memo: ::std::string::String,
        r#type: u8,
    },
    Renamed(::std::string::String),
}

#[derive(Debug, ::std::clone::Clone, ::core::default::Default)]
#[derive(::annals::__private::serde::Serialize, ::annals::__private::serde::Deserialize)]
#[serde(crate = "::annals::__private::serde")]
#[derive(::annals::Aggregate)]
#[aggregate(
    name = "account",
    event = Event,
    command = u8,
    error = ::std::io::Error,
    snapshot_every = 10,
    snapshot_version = "fingerprint"
)]
struct Account {
    balance: i64,
}

impl Account {
    fn handle(&self, _: u8) -> ::core::result::Result<::std::vec::Vec<Event>, ::std::io::Error> {
        ::core::result::Result::Ok(::std::vec::Vec::new())
    }

    fn apply(&mut self, _: &Event) {}
}

fn main() {
    fn is_aggregate<A: ::annals::Aggregate>() {}
    is_aggregate::<Account>();
}
