//! `checkout demo` end to end on SQLite: every order settles as its path says, and the
//! gateway's books agree.

use annals::BoxError;
use checkout::{
    Backend, CheckoutEvent, DemoConfig, Scenario,
    demo::{self, DemoOrder, DemoReport},
    domain::{OrderStatus, PaymentStatus},
    processor::CANCELLED_BEFORE_CHARGE,
};

fn order(report: &DemoReport, scenario: Scenario) -> &DemoOrder {
    report
        .order(scenario)
        .unwrap_or_else(|| panic!("no order for {scenario:?}"))
}

fn cancelled_because(order: &DemoOrder) -> &str {
    match &order.outcome.order {
        OrderStatus::Cancelled { reason } => reason,
        other => panic!("{:?} should be cancelled, is {other:?}", order.scenario),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_settles_every_order_on_sqlite() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let backend = Backend::Sqlite {
        dir: dir.path().to_owned(),
    };
    let mut out = Vec::new();
    let report = demo::run(&backend, &DemoConfig::default(), &mut out).await?;
    let printed = String::from_utf8(out)?;
    assert!(dir.path().join("checkout.sqlite").exists());
    assert_eq!(report.orders.len(), Scenario::ALL.len());
    for o in &report.orders {
        assert!(o.outcome.is_settled(), "{o:?}");
        assert!(printed.contains(&o.outcome.order_id), "{printed}");
    }
    use CheckoutEvent as E;
    let charges_for = |o: &DemoOrder| {
        report
            .charges
            .iter()
            .filter(|c| c.reference == o.outcome.order_id)
            .count()
    };
    let refunded = |o: &DemoOrder| {
        report
            .refunds
            .iter()
            .any(|r| Some(&r.charge_id) == o.outcome.charge_id.as_ref())
    };

    let happy = order(&report, Scenario::Happy);
    assert_eq!(happy.outcome.order, OrderStatus::Completed);
    assert_eq!(happy.outcome.payment, PaymentStatus::Confirmed);
    assert_eq!(
        happy.outcome.saga_steps(),
        ["CheckoutStarted", "PaymentReceived", "StockSecured"]
    );
    assert_eq!((charges_for(happy), refunded(happy)), (1, false));

    let flaky = order(&report, Scenario::FlakyGateway);
    assert_eq!(flaky.outcome.order, OrderStatus::Completed);
    assert_eq!(flaky.outcome.payment, PaymentStatus::Confirmed);
    assert_eq!(flaky.gateway_calls, 3, "two 503s, then the charge");
    assert_eq!(charges_for(flaky), 1);

    let no_stock = order(&report, Scenario::OutOfStock);
    assert!(cancelled_because(no_stock).starts_with("out of stock"));
    assert_eq!(no_stock.outcome.payment, PaymentStatus::Refunded);
    assert_eq!(
        no_stock.outcome.saga,
        [
            E::Started {
                sku: "lamp".to_owned(),
                quantity: 3,
                amount_cents: 8_997
            },
            E::PaymentReceived,
            E::StockMissing {
                requested: 3,
                available: 1
            }
        ]
    );
    assert_eq!((charges_for(no_stock), refunded(no_stock)), (1, true));

    let declined = order(&report, Scenario::Declined);
    assert!(cancelled_because(declined).starts_with("payment failed: card declined"));
    assert_eq!(declined.outcome.payment, PaymentStatus::Failed);
    assert_eq!(
        declined.outcome.saga_steps(),
        ["CheckoutStarted", "PaymentRefused"]
    );
    assert_eq!(charges_for(declined), 0);

    let hangs = order(&report, Scenario::GatewayHangs);
    assert_eq!(cancelled_because(hangs), "no payment within 1s");
    assert_eq!(hangs.outcome.payment, PaymentStatus::Failed);
    assert_eq!(
        hangs.outcome.payment_reason.as_deref(),
        Some(CANCELLED_BEFORE_CHARGE)
    );
    assert_eq!(
        hangs.outcome.saga_steps(),
        ["CheckoutStarted", "PaymentOverdue"]
    );
    assert_eq!(charges_for(hangs), 0, "never charged");

    let late = order(&report, Scenario::LateAnswer);
    assert_eq!(cancelled_because(late), "no payment within 1s");
    assert_eq!(late.outcome.payment, PaymentStatus::Refunded);
    assert_eq!(
        late.outcome.saga_steps(),
        ["CheckoutStarted", "PaymentOverdue", "LatePaymentReceived"]
    );
    assert_eq!((charges_for(late), refunded(late)), (1, true));

    assert_eq!((report.charges.len(), report.refunds.len()), (4, 2));
    assert!(report.gateway.breaker.is_closed(), "{}", report.gateway);
    Ok(())
}
