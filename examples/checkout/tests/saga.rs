//! The checkout saga, path by path: given what happened, when an event comes (or time
//! passes), then these commands are appended. The store is in memory and the clock moves by
//! hand, so a 30 s deadline takes no time.

use std::time::Duration;

use annals::BoxError;
use annals_projections::testing::SagaTest;
use checkout::{
    Checkout, CheckoutEvent, CheckoutState,
    domain::{Order, OrderEvent, Payment, PaymentEvent, Stock, StockEvent},
    processor::CANCELLED_BEFORE_CHARGE,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A test running the saga, with `mugs` mugs and one lamp in stock.
async fn shop(mugs: u32) -> Result<SagaTest, BoxError> {
    let mut test = SagaTest::new()?;
    let saga = Checkout::new(test.deadlines().clone(), TIMEOUT);
    test.saga(saga)?;
    test.given::<Stock>("mug", [StockEvent::Received { quantity: mugs }])
        .await?;
    test.given::<Stock>("lamp", [StockEvent::Received { quantity: 1 }])
        .await?;
    Ok(test)
}

fn placed(sku: &str, quantity: u32, amount_cents: u64) -> OrderEvent {
    OrderEvent::Placed {
        customer: "ada".to_owned(),
        sku: sku.to_owned(),
        quantity,
        amount_cents,
    }
}

fn confirmed(charge_id: &str) -> PaymentEvent {
    PaymentEvent::Confirmed {
        charge_id: charge_id.to_owned(),
    }
}

fn on<E>(id: &str, event: E) -> (String, E) {
    (id.to_owned(), event)
}

#[tokio::test]
async fn a_placed_order_requests_its_payment_and_schedules_the_deadline() -> Result<(), BoxError> {
    let mut test = shop(5).await?;
    let then = test.when::<Order>("o1", [placed("mug", 2, 2_400)]).await?;
    assert_eq!(
        then.types(),
        ["CheckoutStarted", "PaymentRequested", "DeadlineScheduled"]
    );
    assert_eq!(
        then.of::<Payment>()?,
        [on(
            "o1",
            PaymentEvent::Requested {
                amount_cents: 2_400
            }
        )]
    );
    assert_eq!(test.deadlines().pending(), 1);
    Ok(())
}

#[tokio::test]
async fn happy_path_paid_in_time_reserves_and_completes() -> Result<(), BoxError> {
    let mut test = shop(5).await?;
    test.given::<Order>("o1", [placed("mug", 2, 2_400)]).await?;

    let then = test.when::<Payment>("o1", [confirmed("ch_1")]).await?;
    assert_eq!(
        then.types(),
        [
            "PaymentReceived",
            "DeadlineCancelled",
            "StockReserved",
            "StockSecured",
            "OrderCompleted"
        ]
    );
    assert_eq!(
        then.of::<Stock>()?,
        [on(
            "mug",
            StockEvent::Reserved {
                order: "o1".to_owned(),
                quantity: 2
            }
        )]
    );
    assert_eq!(then.of::<Order>()?, [on("o1", OrderEvent::Completed)]);
    assert!(then.of::<Payment>()?.is_empty(), "nothing refunded");
    assert_eq!(test.deadlines().pending(), 0);

    // The cancelled deadline never fires.
    let then = test.advance(TIMEOUT * 2).await?;
    assert!(then.events().is_empty(), "{:?}", then.types());
    Ok(())
}

#[tokio::test]
async fn out_of_stock_after_payment_refunds_and_cancels() -> Result<(), BoxError> {
    let mut test = shop(5).await?;
    test.given::<Order>("o2", [placed("lamp", 3, 8_997)])
        .await?;

    let then = test.when::<Payment>("o2", [confirmed("ch_2")]).await?;
    assert_eq!(
        then.types(),
        [
            "PaymentReceived",
            "DeadlineCancelled",
            "ReservationFailed",
            "StockMissing",
            "RefundRequested",
            "OrderCancelled"
        ]
    );
    assert_eq!(
        then.of::<CheckoutState>()?,
        [
            on("o2", CheckoutEvent::PaymentReceived),
            on(
                "o2",
                CheckoutEvent::StockMissing {
                    requested: 3,
                    available: 1
                }
            )
        ]
    );
    assert_eq!(
        then.of::<Payment>()?,
        [on(
            "o2",
            PaymentEvent::RefundRequested {
                reason: "out of stock: refunding 89.97 EUR".to_owned()
            }
        )]
    );
    assert_eq!(
        then.of::<Order>()?,
        [on(
            "o2",
            OrderEvent::Cancelled {
                reason: "out of stock: 3 × lamp requested, 1 available".to_owned()
            }
        )]
    );
    Ok(())
}

#[tokio::test]
async fn no_payment_before_the_deadline_cancels_the_order() -> Result<(), BoxError> {
    let mut test = shop(5).await?;
    test.given::<Order>("o3", [placed("mug", 1, 1_200)]).await?;

    let then = test.advance(TIMEOUT - Duration::from_secs(1)).await?;
    assert!(then.events().is_empty(), "too early: {:?}", then.types());

    let then = test.advance(Duration::from_secs(1)).await?;
    assert_eq!(
        then.types(),
        ["DeadlineFired", "PaymentOverdue", "OrderCancelled"]
    );
    assert_eq!(
        then.of::<Order>()?,
        [on(
            "o3",
            OrderEvent::Cancelled {
                reason: "no payment within 30s".to_owned()
            }
        )]
    );
    assert!(then.of::<Payment>()?.is_empty());
    assert!(then.of::<Stock>()?.is_empty());

    // The processor then gives up the charge: nothing more to do.
    let failed = PaymentEvent::Failed {
        reason: CANCELLED_BEFORE_CHARGE.to_owned(),
    };
    let then = test.when::<Payment>("o3", [failed]).await?;
    assert!(then.events().is_empty(), "{:?}", then.types());
    Ok(())
}

#[tokio::test]
async fn a_payment_confirmed_after_the_deadline_is_refunded() -> Result<(), BoxError> {
    let mut test = shop(5).await?;
    test.given::<Order>("o4", [placed("mug", 1, 1_200)]).await?;
    let then = test.advance(TIMEOUT).await?;
    assert_eq!(
        then.types(),
        ["DeadlineFired", "PaymentOverdue", "OrderCancelled"]
    );

    // The gateway's late answer.
    let then = test.when::<Payment>("o4", [confirmed("ch_4")]).await?;
    assert_eq!(then.types(), ["LatePaymentReceived", "RefundRequested"]);
    assert_eq!(
        then.of::<Payment>()?,
        [on(
            "o4",
            PaymentEvent::RefundRequested {
                reason: "confirmed after the order was cancelled".to_owned()
            }
        )]
    );
    assert!(then.of::<Stock>()?.is_empty(), "no stock reserved");
    assert!(then.of::<Order>()?.is_empty(), "the order stays cancelled");
    Ok(())
}

#[tokio::test]
async fn a_declined_card_cancels_the_order_and_its_deadline() -> Result<(), BoxError> {
    let mut test = shop(5).await?;
    test.given::<Order>("o5", [placed("mug", 1, 1_200)]).await?;
    let declined = PaymentEvent::Failed {
        reason: "card declined: insufficient funds".to_owned(),
    };
    let then = test.when::<Payment>("o5", [declined]).await?;
    assert_eq!(
        then.types(),
        ["PaymentRefused", "DeadlineCancelled", "OrderCancelled"]
    );
    assert_eq!(
        then.of::<Order>()?,
        [on(
            "o5",
            OrderEvent::Cancelled {
                reason: "payment failed: card declined: insufficient funds".to_owned()
            }
        )]
    );
    let then = test.advance(TIMEOUT * 2).await?;
    assert!(then.events().is_empty(), "{:?}", then.types());
    Ok(())
}
