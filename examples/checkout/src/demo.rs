//! `checkout demo`: a few orders through every path of the saga, on SQLite or PostgreSQL,
//! one after the other, printing what became of each.

use std::{io::Write, path::PathBuf, time::Duration};

use annals::{BoxError, EventStore};
use annals_postgres::{PgConfig, PgEventStore};
use annals_projections::{DependencyStatus, ProjectionRunner};
use annals_projections_sql::{PgLeases, PgTables, SqlSchema, SqliteLeases, SqliteTables};
use annals_sqlite::{SqliteConfig, SqliteEventStore};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::time::Instant;

use crate::{
    domain::{OrderLine, OrderStatus, PaymentStatus, format_cents},
    gateway::{Charge, Plan, Refund},
    shop::{OrderOutcome, Shop, ShopConfig},
};

/// Where the demo keeps its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store: the file `checkout.sqlite` in `dir`.
    Sqlite {
        /// The directory (created when missing).
        dir: PathBuf,
    },
    /// PostgreSQL at `url`, in its own schema.
    Postgres {
        /// The connection URL.
        url: String,
        /// The schema of the store, the checkpoints and the leases (created when missing).
        schema: String,
    },
}

/// The demo's timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// How long an order waits for its payment. Default 1 s.
    pub payment_timeout: Duration,
    /// How long one gateway call may take before it is abandoned. Default 1.5 s (longer
    /// than the payment timeout, so a late answer is seen).
    pub gateway_timeout: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            payment_timeout: Duration::from_secs(1),
            gateway_timeout: Duration::from_millis(1_500),
        }
    }
}

/// The paths through the saga the demo shows, one order each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Paid, reserved, completed.
    Happy,
    /// The gateway answers 503 twice: retried with jitter, then paid and completed.
    FlakyGateway,
    /// Paid, but not enough stock: refunded and cancelled.
    OutOfStock,
    /// The card is declined: cancelled, nothing charged.
    Declined,
    /// The gateway never answers: the deadline cancels the order, nothing is charged.
    GatewayHangs,
    /// The gateway charges but answers after the deadline cancelled the order: refunded.
    LateAnswer,
}

impl Scenario {
    /// Every scenario, in the demo's order.
    pub const ALL: [Self; 6] = [
        Self::Happy,
        Self::FlakyGateway,
        Self::OutOfStock,
        Self::Declined,
        Self::GatewayHangs,
        Self::LateAnswer,
    ];

    /// A short name, the start of the order's id.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Happy => "happy",
            Self::FlakyGateway => "flaky",
            Self::OutOfStock => "nostock",
            Self::Declined => "declined",
            Self::GatewayHangs => "hangs",
            Self::LateAnswer => "late",
        }
    }

    /// What it shows.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Happy => "happy path",
            Self::FlakyGateway => "gateway answers 503 twice",
            Self::OutOfStock => "out of stock after payment",
            Self::Declined => "card declined",
            Self::GatewayHangs => "gateway never answers",
            Self::LateAnswer => "gateway charges, answers after the deadline",
        }
    }

    fn customer(self) -> &'static str {
        match self {
            Self::Happy => "ada",
            Self::FlakyGateway => "grace",
            Self::OutOfStock => "alan",
            Self::Declined => "edsger",
            Self::GatewayHangs => "barbara",
            Self::LateAnswer => "ken",
        }
    }

    fn line(self) -> OrderLine {
        let (sku, quantity, each) = match self {
            Self::Happy => (MUG, 2, 1_200),
            Self::OutOfStock => (LAMP, 3, 2_999),
            _ => (MUG, 1, 1_200),
        };
        OrderLine {
            sku: sku.to_owned(),
            quantity,
            amount_cents: u64::from(quantity) * each,
        }
    }

    fn plan(self, config: &DemoConfig) -> Plan {
        match self {
            Self::Happy | Self::OutOfStock => Plan::Approve,
            Self::FlakyGateway => Plan::Unavailable { times: 2 },
            Self::Declined => Plan::Decline {
                reason: "insufficient funds".to_owned(),
            },
            Self::GatewayHangs => Plan::Hang,
            Self::LateAnswer => Plan::AnswerLate {
                after: config.gateway_timeout * 2,
            },
        }
    }
}

const MUG: &str = "mug";
const LAMP: &str = "lamp";

/// One order of the demo.
#[derive(Debug, Clone)]
pub struct DemoOrder {
    /// The path it shows.
    pub scenario: Scenario,
    /// What became of it.
    pub outcome: OrderOutcome,
    /// Charge requests it sent to the gateway (retries included).
    pub gateway_calls: u32,
    /// From placing it to its settling.
    pub took: Duration,
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Each order, in the order placed.
    pub orders: Vec<DemoOrder>,
    /// The gateway's charges.
    pub charges: Vec<Charge>,
    /// The gateway's refunds.
    pub refunds: Vec<Refund>,
    /// The gateway guard at the end.
    pub gateway: DependencyStatus,
}

impl DemoReport {
    /// The order of `scenario`.
    pub fn order(&self, scenario: Scenario) -> Option<&DemoOrder> {
        self.orders.iter().find(|o| o.scenario == scenario)
    }
}

/// Runs the demo on `backend`, printing to `out`; returns what happened. Order ids are
/// new on every run (`happy-3f9c2e`), so a run on a used directory or schema adds to it.
///
/// # Errors
/// The store or the database cannot be opened; an order does not settle within a minute.
pub async fn run(
    backend: &Backend,
    config: &DemoConfig,
    out: &mut (dyn Write + Send),
) -> Result<DemoReport, BoxError> {
    let shop_config = ShopConfig {
        payment_timeout: config.payment_timeout,
        gateway: ShopConfig::default()
            .gateway
            .with_timeout(config.gateway_timeout),
        ..ShopConfig::default()
    };
    match backend {
        Backend::Sqlite { dir } => {
            std::fs::create_dir_all(dir)?;
            let file = dir.join("checkout.sqlite");
            writeln!(out, "event store: SQLite, {}", file.display())?;
            let store = SqliteEventStore::open(SqliteConfig::new(&file)).await?;
            // Checkpoints and leases live in the store's own file.
            let options = SqliteConnectOptions::new()
                .filename(&file)
                .create_if_missing(true)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await?;
            let leases = SqliteLeases::new(pool.clone());
            leases.migrate().await?;
            let runner = ProjectionRunner::new(store.clone()).with_leases(leases);
            let shop = Shop::start(
                runner,
                |name| SqliteTables::new(pool.clone(), name, SqlSchema::new()),
                &shop_config,
            )?;
            let report = run_orders(&shop, config, out).await;
            shop.shutdown().await;
            pool.close().await;
            store.close().await;
            report
        }
        Backend::Postgres { url, schema } => {
            writeln!(out, "event store: PostgreSQL, schema {schema}")?;
            let store =
                PgEventStore::connect(PgConfig::new(url.clone()).with_schema(schema.clone()))
                    .await?;
            store.migrate().await?;
            let pool = store.pool().clone();
            let leases = PgLeases::new(pool.clone(), schema)?;
            leases.migrate().await?;
            let runner = ProjectionRunner::new(store).with_leases(leases);
            let shop = Shop::start(
                runner,
                |name| PgTables::new(pool.clone(), schema, name, SqlSchema::new()),
                &shop_config,
            )?;
            let report = run_orders(&shop, config, out).await;
            shop.shutdown().await;
            report
        }
    }
}

/// Stocks up, then places one order per scenario and waits for each to settle.
async fn run_orders<S: EventStore + Clone + 'static>(
    shop: &Shop<S>,
    config: &DemoConfig,
    out: &mut (dyn Write + Send),
) -> Result<DemoReport, BoxError> {
    writeln!(
        out,
        "payment deadline {:?}, gateway timeout {:?} per attempt",
        config.payment_timeout, config.gateway_timeout
    )?;
    shop.stock_up(MUG, 10).await?;
    shop.stock_up(LAMP, 1).await?;
    writeln!(out, "stock: at least 10 × {MUG}, 1 × {LAMP}")?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..6];
    let mut orders = Vec::new();
    for (n, scenario) in Scenario::ALL.into_iter().enumerate() {
        let order_id = format!("{}-{run}", scenario.slug());
        let line = scenario.line();
        writeln!(
            out,
            "\n[{}/{}] {order_id} ({}): {} × {}, {}, for {}",
            n + 1,
            Scenario::ALL.len(),
            scenario.describe(),
            line.quantity,
            line.sku,
            format_cents(line.amount_cents),
            scenario.customer()
        )?;
        shop.gateway().plan(&order_id, scenario.plan(config));
        let started = Instant::now();
        shop.place(&order_id, scenario.customer(), line).await?;
        let outcome = shop.settled(&order_id, Duration::from_secs(60)).await?;
        let order = DemoOrder {
            scenario,
            gateway_calls: shop.gateway().attempts_for(&order_id),
            took: started.elapsed(),
            outcome,
        };
        print_order(out, &order)?;
        orders.push(order);
    }
    let report = DemoReport {
        orders,
        charges: shop.gateway().charges(),
        refunds: shop.gateway().refunds(),
        gateway: shop.gateway_status(),
    };
    let charged: u64 = report.charges.iter().map(|c| c.amount_cents).sum();
    let refunded: u64 = report.refunds.iter().map(|r| r.amount_cents).sum();
    writeln!(
        out,
        "\ngateway books: {} charge(s), {}; {} refund(s), {}",
        report.charges.len(),
        format_cents(charged),
        report.refunds.len(),
        format_cents(refunded)
    )?;
    writeln!(out, "{}", report.gateway)?;
    Ok(report)
}

fn print_order(out: &mut (dyn Write + Send), order: &DemoOrder) -> std::io::Result<()> {
    let o = &order.outcome;
    writeln!(out, "  saga:    {}", o.saga_steps().join(" → "))?;
    let status = match &o.order {
        OrderStatus::Completed => "completed".to_owned(),
        OrderStatus::Cancelled { reason } => format!("cancelled ({reason})"),
        other => format!("{other:?}"),
    };
    writeln!(out, "  order:   {status}")?;
    let charge = o.charge_id.as_deref().unwrap_or("?");
    let reason = o.payment_reason.as_deref().unwrap_or("?");
    let payment = match o.payment {
        PaymentStatus::Confirmed => format!("charged ({charge})"),
        PaymentStatus::Refunded => format!(
            "charged ({charge}), refunded ({}): {reason}",
            o.refund_id.as_deref().unwrap_or("?")
        ),
        PaymentStatus::Failed => format!("not charged: {reason}"),
        other => format!("{other:?}"),
    };
    writeln!(
        out,
        "  payment: {payment}; {} gateway call(s); settled in {:.2?}",
        order.gateway_calls, order.took
    )
}
