//! The three aggregates the checkout spans. Each knows nothing of the others: the
//! [`Checkout`](crate::Checkout) saga ties them together.

mod order;
mod payment;
mod stock;

use annals::{Aggregate, RecordedEvent};

pub use order::{Order, OrderCommand, OrderError, OrderEvent, OrderLine, OrderStatus};
pub use payment::{Payment, PaymentCommand, PaymentError, PaymentEvent, PaymentStatus};
pub use stock::{Stock, StockCommand, StockError, StockEvent};

/// The id of the instance of aggregate `A` whose stream `event` belongs to (`"42"` for an
/// event of `order-42`), or `None` for another aggregate's event.
pub fn instance_id<A: Aggregate>(event: &RecordedEvent) -> Option<&str> {
    event
        .stream_id
        .as_str()
        .strip_prefix(A::TYPE)?
        .strip_prefix('-')
}

/// `cents` as a price: `1250` is `"12.50 EUR"`.
pub fn format_cents(cents: u64) -> String {
    format!("{}.{:02} EUR", cents / 100, cents % 100)
}
