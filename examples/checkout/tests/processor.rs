//! The payment processor: gateway calls through the resilience guard, keyed by the
//! reaction's effect id, so a retry or a redelivery never charges twice.

use std::time::Duration;

use annals::{
    BoxError, CommandContext, EventStore, InMemoryEventStore, RecordedEvent, Repository, StreamRead,
};
use annals_projections::{Backoff, DependencyConfig, Reaction, Reactor, testing::SagaTest};
use checkout::{
    PaymentProcessor, Plan, SimulatedGateway,
    domain::{Order, OrderCommand, OrderEvent, OrderLine, Payment, PaymentCommand, PaymentEvent},
    processor::{CANCELLED_BEFORE_CHARGE, PAYMENTS},
};
use futures::TryStreamExt;

fn guard(timeout: Duration, retries: u32) -> DependencyConfig {
    DependencyConfig::default()
        .with_timeout(timeout)
        .with_retries(retries)
        .with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
}

fn placed() -> OrderEvent {
    OrderEvent::Placed {
        customer: "ada".to_owned(),
        sku: "mug".to_owned(),
        quantity: 1,
        amount_cents: 1_200,
    }
}

#[tokio::test]
async fn a_flaky_gateway_is_retried_and_charges_once() -> Result<(), BoxError> {
    let gateway = SimulatedGateway::new(Duration::from_millis(1));
    gateway.plan("o1", Plan::Unavailable { times: 2 });
    let mut test = SagaTest::new()?;
    test.reactor(PaymentProcessor::new(
        gateway.clone(),
        guard(Duration::from_secs(5), 2),
    ))?;
    test.given::<Order>("o1", [placed()]).await?;

    let requested = PaymentEvent::Requested {
        amount_cents: 1_200,
    };
    let then = test.when::<Payment>("o1", [requested]).await?;
    let charges = gateway.charges_for("o1");
    assert_eq!(charges.len(), 1);
    assert_eq!(gateway.attempts_for("o1"), 3);
    assert_eq!(
        then.of::<Payment>()?,
        [(
            "o1".to_owned(),
            PaymentEvent::Confirmed {
                charge_id: charges[0].id.clone()
            }
        )]
    );

    // A refund asked for goes to the gateway too.
    let refund = PaymentEvent::RefundRequested {
        reason: "test".to_owned(),
    };
    let then = test.when::<Payment>("o1", [refund]).await?;
    assert_eq!(then.types(), ["PaymentRefunded"]);
    assert_eq!(gateway.refunds().len(), 1);
    assert_eq!(gateway.refunds()[0].charge_id, charges[0].id);
    Ok(())
}

#[tokio::test]
async fn a_declined_card_fails_the_payment() -> Result<(), BoxError> {
    let gateway = SimulatedGateway::new(Duration::from_millis(1));
    gateway.plan(
        "o2",
        Plan::Decline {
            reason: "stolen card".to_owned(),
        },
    );
    let mut test = SagaTest::new()?;
    test.reactor(PaymentProcessor::new(
        gateway.clone(),
        guard(Duration::from_secs(5), 2),
    ))?;
    test.given::<Order>("o2", [placed()]).await?;
    let requested = PaymentEvent::Requested {
        amount_cents: 1_200,
    };
    let then = test.when::<Payment>("o2", [requested]).await?;
    assert_eq!(
        then.of::<Payment>()?,
        [(
            "o2".to_owned(),
            PaymentEvent::Failed {
                reason: "card declined: stolen card".to_owned()
            }
        )]
    );
    assert_eq!(
        gateway.attempts_for("o2"),
        1,
        "a permanent error is not retried"
    );
    assert!(gateway.charges().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_cancelled_order_is_not_charged() -> Result<(), BoxError> {
    let gateway = SimulatedGateway::new(Duration::from_millis(1));
    let mut test = SagaTest::new()?;
    test.reactor(PaymentProcessor::new(
        gateway.clone(),
        guard(Duration::from_secs(5), 2),
    ))?;
    let cancelled = OrderEvent::Cancelled {
        reason: "no payment within 30s".to_owned(),
    };
    test.given::<Order>("o3", [placed(), cancelled]).await?;
    let requested = PaymentEvent::Requested {
        amount_cents: 1_200,
    };
    let then = test.when::<Payment>("o3", [requested]).await?;
    assert_eq!(
        then.of::<Payment>()?,
        [(
            "o3".to_owned(),
            PaymentEvent::Failed {
                reason: CANCELLED_BEFORE_CHARGE.to_owned()
            }
        )]
    );
    assert_eq!(gateway.attempts_for("o3"), 0);
    Ok(())
}

/// The first delivery times out after the gateway charged; the redelivery asks again with
/// the same idempotency key and gets that charge, not a second one.
#[tokio::test]
async fn a_redelivered_request_reuses_its_idempotency_key() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    let line = OrderLine {
        sku: "mug".to_owned(),
        quantity: 1,
        amount_cents: 1_200,
    };
    let place = OrderCommand::Place {
        customer: "ada".to_owned(),
        line,
    };
    orders.execute("o4", place, &CommandContext::new()).await?;
    let payments = Repository::<Payment, _>::new(store.clone());
    let request = PaymentCommand::Request {
        amount_cents: 1_200,
    };
    payments
        .execute("o4", request, &CommandContext::new())
        .await?;
    let stream = payments.stream_id("o4")?;
    let requested: Vec<RecordedEvent> = store
        .read_stream(&stream, StreamRead::forward())
        .try_collect()
        .await?;

    let gateway = SimulatedGateway::new(Duration::from_millis(1));
    gateway.plan(
        "o4",
        Plan::AnswerLate {
            after: Duration::from_secs(3600),
        },
    );
    let processor = PaymentProcessor::new(gateway.clone(), guard(Duration::from_millis(50), 0));

    let mut first = Reaction::new(PAYMENTS, &store, &requested[0]);
    let timed_out = processor.react(&requested[0], &mut first).await;
    assert!(timed_out.is_err(), "the first delivery times out");
    assert_eq!(
        gateway.charges_for("o4").len(),
        1,
        "but the card was charged"
    );
    assert_eq!(payments.load("o4").await?.state.charge_id, None);

    let mut again = Reaction::new(PAYMENTS, &store, &requested[0]);
    processor.react(&requested[0], &mut again).await?;
    let charges = gateway.charges_for("o4");
    assert_eq!(charges.len(), 1, "charged once");
    assert_eq!(gateway.attempts_for("o4"), 2);
    assert_eq!(
        payments.load("o4").await?.state.charge_id.as_deref(),
        Some(charges[0].id.as_str())
    );
    Ok(())
}
