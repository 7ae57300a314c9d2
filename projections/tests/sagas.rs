//! Sagas with event-sourced state and deadlines: given/when/then with a manual clock, and a
//! deadline that fires after the process that scheduled it is gone.

use std::time::Duration;

use annals::{Aggregate, BoxError, DomainEvent, EventStore, Executed, RecordedEvent, Repository};
use annals_projections::{
    DEADLINE_CATEGORY, DeadlineEvent, Deadlines, EventFilter, ManualClock, MemoryReadModel,
    Observed, ProjectionConfig, ProjectionRunner, Reaction, Saga, testing::SagaTest,
};
use annals_sqlite::{SqliteConfig, SqliteEventStore};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum InvoiceEvent {
    Issued { amount: i64 },
    Paid,
    Reminded,
}

#[derive(Debug, Clone)]
enum InvoiceCommand {
    Remind,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "invoice", event = InvoiceEvent, command = InvoiceCommand, error = Never)]
struct Invoice {
    paid: bool,
}

impl Invoice {
    fn handle(&self, command: InvoiceCommand) -> Result<Vec<InvoiceEvent>, Never> {
        match command {
            InvoiceCommand::Remind if self.paid => Ok(vec![]),
            InvoiceCommand::Remind => Ok(vec![InvoiceEvent::Reminded]),
        }
    }

    fn apply(&mut self, event: &InvoiceEvent) {
        if *event == InvoiceEvent::Paid {
            self.paid = true;
        }
    }
}

/// The saga's record of one invoice.
#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum DunningEvent {
    Watching { invoice: String },
    Settled,
    Overdue,
}

#[derive(Debug, Clone)]
enum DunningCommand {
    Watch { invoice: String },
    Settle,
    Expire,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "dunning", event = DunningEvent, command = DunningCommand, error = Never)]
struct Dunning {
    invoice: Option<String>,
    ended: bool,
}

impl Dunning {
    fn handle(&self, command: DunningCommand) -> Result<Vec<DunningEvent>, Never> {
        Ok(match command {
            _ if self.ended => vec![],
            DunningCommand::Watch { invoice } if self.invoice.is_none() => {
                vec![DunningEvent::Watching { invoice }]
            }
            DunningCommand::Watch { .. } => vec![],
            DunningCommand::Settle => vec![DunningEvent::Settled],
            DunningCommand::Expire => vec![DunningEvent::Overdue],
        })
    }

    fn apply(&mut self, event: &DunningEvent) {
        match event {
            DunningEvent::Watching { invoice } => self.invoice = Some(invoice.clone()),
            DunningEvent::Settled | DunningEvent::Overdue => self.ended = true,
        }
    }
}

/// Reminds the customer of an invoice unpaid a week after it was issued.
struct Dunner {
    deadlines: Deadlines,
}

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

impl<S: EventStore + Clone + 'static> Saga<S> for Dunner {
    type State = Dunning;

    fn name(&self) -> &str {
        "dunning"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Invoice>().or(EventFilter::categories([DEADLINE_CATEGORY]))
    }

    fn observe(&self, event: &RecordedEvent) -> Result<Option<Observed<Dunning>>, BoxError> {
        if let Some(fired) = DeadlineEvent::fired_for("dunning", event) {
            return Ok(Some(Observed::new(fired.key, DunningCommand::Expire)));
        }
        if event.stream_id.category() != "invoice" {
            return Ok(None);
        }
        let invoice = event.stream_id.as_str()["invoice-".len()..].to_owned();
        Ok(match InvoiceEvent::decode(event)? {
            InvoiceEvent::Issued { .. } => Some(Observed::new(
                invoice.clone(),
                DunningCommand::Watch { invoice },
            )),
            InvoiceEvent::Paid => Some(Observed::new(invoice, DunningCommand::Settle)),
            InvoiceEvent::Reminded => None,
        })
    }

    async fn act(
        &self,
        key: &str,
        recorded: &Executed<Dunning>,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let invoices = Repository::<Invoice, S>::new(reaction.store().clone());
        for event in &recorded.events {
            match event {
                DunningEvent::Watching { .. } => {
                    self.deadlines
                        .schedule(reaction, key, "payment", WEEK)
                        .await?;
                }
                DunningEvent::Settled => {
                    self.deadlines.cancel(reaction, key, "payment").await?;
                }
                DunningEvent::Overdue => {
                    reaction
                        .execute(&invoices, key, InvoiceCommand::Remind)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_unpaid_invoice_is_reminded_when_its_deadline_fires() -> Result<(), BoxError> {
    let mut test = SagaTest::new()?;
    let deadlines = test.deadlines().clone();
    test.saga(Dunner { deadlines })?;

    let then = test
        .when::<Invoice>("7", [InvoiceEvent::Issued { amount: 100 }])
        .await?;
    assert_eq!(
        then.of::<Dunning>()?,
        [(
            "7".to_owned(),
            DunningEvent::Watching {
                invoice: "7".into()
            }
        )]
    );
    assert_eq!(then.types(), ["Watching", "DeadlineScheduled"]);
    assert_eq!(test.deadlines().pending(), 1);
    let scheduled = then.events()[1].clone();

    // Six days: nothing yet.
    let then = test.advance(Duration::from_secs(6 * 24 * 3600)).await?;
    assert!(then.events().is_empty(), "{:?}", then.types());

    // The seventh day: the deadline fires, the saga records it and reminds.
    let then = test.advance(Duration::from_secs(24 * 3600)).await?;
    assert_eq!(then.types(), ["DeadlineFired", "Overdue", "Reminded"]);
    assert_eq!(
        then.of::<Invoice>()?,
        [("7".to_owned(), InvoiceEvent::Reminded)]
    );
    // The reminder continues the invoice's correlation.
    let issued: Vec<RecordedEvent> = test
        .store()
        .read_stream(
            &annals::StreamId::new("invoice-7")?,
            annals::StreamRead::forward(),
        )
        .try_collect()
        .await?;
    assert_eq!(
        then.events()[2].metadata.correlation_id,
        issued[0]
            .metadata
            .correlation_id
            .or(Some(issued[0].event_id))
    );
    // The firing, and what the saga did about it, continue the trace of the reaction that
    // scheduled the deadline: its trace context travels with the deadline.
    let trace = scheduled
        .metadata
        .trace
        .as_ref()
        .expect("a reaction's events carry its trace context")
        .trace_id();
    for event in then.events() {
        let continued = event.metadata.trace.as_ref().map(|t| t.trace_id());
        assert_eq!(
            continued,
            Some(trace),
            "{} in another trace",
            event.event_type
        );
    }
    assert_eq!(test.deadlines().pending(), 0);
    Ok(())
}

#[tokio::test]
async fn a_paid_invoice_cancels_its_deadline() -> Result<(), BoxError> {
    let mut test = SagaTest::new()?;
    let deadlines = test.deadlines().clone();
    test.saga(Dunner { deadlines })?;
    test.given::<Invoice>("8", [InvoiceEvent::Issued { amount: 5 }])
        .await?;
    let then = test.when::<Invoice>("8", [InvoiceEvent::Paid]).await?;
    assert_eq!(then.types(), ["Settled", "DeadlineCancelled"]);
    let then = test.advance(WEEK * 2).await?;
    assert!(then.events().is_empty(), "{:?}", then.types());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_fires_after_a_restart() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.sqlite");
    let clock = ManualClock::default();
    {
        // The first process: the invoice is issued, the deadline scheduled, and the process
        // ends long before it is due.
        let store = SqliteEventStore::open(SqliteConfig::new(&path)).await?;
        let deadlines = Deadlines::new(clock.clone());
        let runner = ProjectionRunner::new(store.clone());
        runner.add_deadlines(&deadlines)?;
        runner.add_saga(
            Dunner {
                deadlines: deadlines.clone(),
            },
            MemoryReadModel::<()>::new("dunning")?,
            ProjectionConfig::new(),
        )?;
        let invoices = Repository::<Invoice, _>::new(store.clone());
        let stream = invoices.stream_id("9")?;
        store
            .append(
                &stream,
                annals::ExpectedVersion::NoStream,
                vec![InvoiceEvent::Issued { amount: 1 }.to_new_event()?],
            )
            .await?;
        runner.catch_up(Duration::from_secs(30)).await?;
        runner.catch_up(Duration::from_secs(30)).await?;
        assert_eq!(deadlines.pending(), 1);
        drop(runner); // a crash: nothing is shut down cleanly
    }
    clock.advance(WEEK + Duration::from_secs(1));
    // The second process knows nothing but the file.
    let store = SqliteEventStore::open(SqliteConfig::new(&path)).await?;
    let deadlines = Deadlines::new(clock.clone());
    let runner = ProjectionRunner::new(store.clone());
    runner.add_deadlines(&deadlines)?;
    runner.add_saga(
        Dunner {
            deadlines: deadlines.clone(),
        },
        MemoryReadModel::<()>::new("dunning")?,
        ProjectionConfig::new(),
    )?;
    let invoices = Repository::<Invoice, _>::new(store.clone());
    let reminded = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            runner.catch_up(Duration::from_secs(30)).await?;
            let stream = invoices.stream_id("9")?;
            if store.stream_version(&stream).await? == 2 {
                return Ok::<_, BoxError>(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    reminded.map_err(|_| "the deadline did not fire after the restart")??;
    let loaded = invoices.load("9").await?;
    assert_eq!(loaded.version, 2, "reminded exactly once");
    runner.shutdown().await;
    Ok(())
}
