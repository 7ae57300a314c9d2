//! One trace from a command to the consumer of its message: the command's span context in
//! the events' metadata, continued by a projection batch, by a reaction and the commands it
//! issues, and through message headers by a consumer that only sees the headers.

use std::{collections::HashMap, time::Duration};

use annals::{
    Aggregate, BoxError, CommandContext, DomainEvent, EventStore, InMemoryEventStore, LogRead,
    RecordedEvent, Repository, TraceContext,
    trace::{TRACEPARENT, TRACESTATE},
};
use annals_projections::{
    EventFilter, MemoryReadModel, Projection, ProjectionConfig, ProjectionRunner, Reaction, Reactor,
};
use annals_span_recorder::{Seen, recorder};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tracing::field::Empty;

// --- the domain ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, DomainEvent)]
enum OrderEvent {
    Placed { amount: i64 },
    Shipped,
}

#[derive(Debug, Clone)]
enum OrderCommand {
    Place { amount: i64 },
    Ship,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = Never)]
struct Order {
    shipped: bool,
}

impl Order {
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, Never> {
        Ok(match command {
            OrderCommand::Place { amount } => vec![OrderEvent::Placed { amount }],
            OrderCommand::Ship if self.shipped => vec![],
            OrderCommand::Ship => vec![OrderEvent::Shipped],
        })
    }

    fn apply(&mut self, event: &OrderEvent) {
        if let OrderEvent::Shipped = event {
            self.shipped = true;
        }
    }
}

/// Ships every placed order.
struct Shipping<S> {
    orders: Repository<Order, S>,
}

impl<S: EventStore + Clone + 'static> Reactor<S> for Shipping<S> {
    fn name(&self) -> &str {
        "shipping"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Order>().and_types(["Placed"])
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let id = event
            .stream_id
            .as_str()
            .trim_start_matches("order-")
            .to_owned();
        reaction
            .execute(&self.orders, &id, OrderCommand::Ship)
            .await?;
        Ok(())
    }
}

/// Counts events per type.
struct Counts;

impl Projection for Counts {
    type Model = MemoryReadModel<u64>;

    fn name(&self) -> &str {
        "counts"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::aggregate::<Order>()
    }

    fn handle(
        &self,
        event: &RecordedEvent,
        batch: &mut <Self::Model as annals_projections::ReadModel>::Batch,
    ) -> Result<(), BoxError> {
        let key = event.event_type.to_string();
        let n = batch.get(&key).unwrap_or(0);
        batch.put(key, n + 1);
        Ok(())
    }
}

async fn log(store: &InMemoryEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap()
}

// --- a publisher and a consumer, as a broker crate would write them ----------------------

/// A message as it travels on a broker: headers and a body.
#[derive(Debug, Clone)]
struct Message {
    headers: HashMap<String, String>,
    body: String,
}

/// Publishes `event` within a `publish` span that continues the event's trace, and puts that
/// span's context into the headers.
fn publish(event: &RecordedEvent) -> Message {
    let span = tracing::debug_span!(
        "publish",
        event_id = %event.event_id,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    );
    let context = TraceContext::for_span(&span, TraceContext::from_metadata(&event.metadata));
    let _entered = span.enter();
    let mut headers = HashMap::new();
    headers.insert(TRACEPARENT.to_owned(), context.to_traceparent());
    if let Some(state) = context.tracestate() {
        headers.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    Message {
        headers,
        body: event.payload.to_string(),
    }
}

/// What the consumer in the other process saw.
struct Consumed {
    /// The context read from the message's headers.
    message: TraceContext,
    /// The context of the consumer's own span, its child.
    span: TraceContext,
}

/// Consumes `message` knowing only its bytes: the trace context comes from the headers.
fn consume(message: &Message) -> Consumed {
    let message_context = TraceContext::from_headers(
        &message.headers[TRACEPARENT],
        message.headers.get(TRACESTATE).map(String::as_str),
    )
    .expect("a valid traceparent");
    let span = tracing::debug_span!(
        "consume",
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    );
    let own = TraceContext::for_span(&span, Some(&message_context));
    let _entered = span.enter();
    assert!(!message.body.is_empty());
    Consumed {
        message: message_context,
        span: own,
    }
}

// --- the tests -------------------------------------------------------------------------

#[tokio::test]
async fn one_trace_runs_from_the_command_through_reaction_and_projection_to_the_consumer() {
    let (recorder, _guard) = recorder();
    let store = InMemoryEventStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    // The request arrives with a traceparent, as from an HTTP gateway.
    let request = TraceContext::from_headers(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        Some("gateway=42"),
    )
    .unwrap();
    orders
        .execute(
            "o1",
            OrderCommand::Place { amount: 12 },
            &CommandContext::new().with_trace(request.clone()),
        )
        .await
        .unwrap();
    let command = recorder.named("annals.command").remove(0);
    assert_eq!(command.field("trace_id"), request.trace_id().to_string());
    assert_eq!(
        command.field("parent_span_id"),
        request.span_id().to_string()
    );
    let command_span_id = command.field("span_id").to_owned();

    let runner = ProjectionRunner::new(store.clone());
    runner
        .add(
            Counts,
            MemoryReadModel::<u64>::new("counts").unwrap(),
            ProjectionConfig::new(),
        )
        .unwrap();
    runner
        .add_reactor(
            Shipping {
                orders: Repository::new(store.clone()),
            },
            MemoryReadModel::<()>::new("shipping").unwrap(),
            ProjectionConfig::new(),
        )
        .unwrap();
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    // The reactor's Shipped is in the log now; let the projection see it too.
    runner.catch_up(Duration::from_secs(30)).await.unwrap();

    let events = log(&store).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let (placed, shipped) = (&events[0], &events[1]);
    let placed_trace = TraceContext::from_metadata(&placed.metadata).unwrap();
    assert_eq!(placed_trace.trace_id(), request.trace_id());
    assert_eq!(placed_trace.span_id().to_string(), command_span_id);

    // The reaction: a child of the command's span; its command a child of the reaction.
    let reaction = recorder.named("annals.reaction").remove(0);
    assert_eq!(reaction.field("trace_id"), request.trace_id().to_string());
    assert_eq!(reaction.field("parent_span_id"), command_span_id);
    assert_eq!(reaction.field("stream"), "order-o1");
    assert_eq!(reaction.field("event_type"), "Placed");
    let shipped_trace = TraceContext::from_metadata(&shipped.metadata).unwrap();
    assert_eq!(shipped_trace.trace_id(), request.trace_id());
    assert_eq!(shipped_trace.tracestate(), Some("gateway=42"));
    let ship_command = recorder.with_span_id(&shipped_trace.span_id().to_string());
    assert_eq!(ship_command.name, "annals.command");
    assert_eq!(
        ship_command.field("parent_span_id"),
        reaction.field("span_id")
    );
    assert_eq!(shipped.metadata.causation_id, Some(placed.event_id));

    // The projection's batches continue the trace of the events they handle.
    let batches: Vec<Seen> = recorder
        .named("annals.projection.batch")
        .into_iter()
        .filter(|b| b.field("projection") == "counts")
        .collect();
    assert!(!batches.is_empty());
    for batch in &batches {
        assert_eq!(batch.field("trace_id"), request.trace_id().to_string());
        let parent = batch.field("parent_span_id");
        assert!(
            parent == command_span_id || parent == shipped_trace.span_id().to_string(),
            "{batch:?}"
        );
    }
    let handled = recorder.named("annals.handle");
    assert!(
        handled.iter().any(
            |h| h.field("consumer") == "counts" && h.field("parent_span_id") == command_span_id
        )
    );

    // A publisher puts the event's context into the headers; a consumer elsewhere reads it.
    let message = publish(placed);
    let consumed = consume(&message);
    assert_eq!(consumed.message.trace_id(), request.trace_id());
    assert_eq!(consumed.span.trace_id(), request.trace_id());
    assert_eq!(consumed.message.tracestate(), Some("gateway=42"));
    // The message's span (the publish) is a child of the command's span...
    let published = recorder.with_span_id(&consumed.message.span_id().to_string());
    assert_eq!(published.name, "publish");
    assert_eq!(published.field("parent_span_id"), command_span_id);
    // ... and the consumer's span a child of the message's.
    let consumer = recorder.with_span_id(&consumed.span.span_id().to_string());
    assert_eq!(consumer.name, "consume");
    assert_eq!(
        consumer.field("parent_span_id"),
        consumed.message.span_id().to_string()
    );
    runner.shutdown().await;
}

#[tokio::test]
async fn without_a_subscriber_reactions_still_carry_the_trace() {
    let store = InMemoryEventStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    orders
        .execute(
            "o1",
            OrderCommand::Place { amount: 1 },
            &CommandContext::new(),
        )
        .await
        .unwrap();
    let runner = ProjectionRunner::new(store.clone());
    runner
        .add_reactor(
            Shipping {
                orders: Repository::new(store.clone()),
            },
            MemoryReadModel::<()>::new("shipping").unwrap(),
            ProjectionConfig::new(),
        )
        .unwrap();
    runner.catch_up(Duration::from_secs(30)).await.unwrap();
    let events = log(&store).await;
    assert_eq!(events.len(), 2);
    let (a, b) = (
        TraceContext::from_metadata(&events[0].metadata).unwrap(),
        TraceContext::from_metadata(&events[1].metadata).unwrap(),
    );
    assert_eq!(a.trace_id(), b.trace_id());
    assert_ne!(a.span_id(), b.span_id());
    // A message built from the reaction's event carries the same trace to a consumer.
    let consumed = consume(&publish(&events[1]));
    assert_eq!(consumed.message.trace_id(), a.trace_id());
    runner.shutdown().await;
}

#[tokio::test]
async fn a_reaction_made_by_hand_continues_the_events_trace() {
    let store = InMemoryEventStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    orders
        .execute(
            "o1",
            OrderCommand::Place { amount: 1 },
            &CommandContext::new(),
        )
        .await
        .unwrap();
    let placed = log(&store).await.remove(0);
    let mut reaction = Reaction::new("by-hand", &store, &placed);
    assert_eq!(reaction.trace(), placed.metadata.trace.as_ref());
    let context = reaction.command();
    assert_eq!(context.trace.as_ref(), placed.metadata.trace.as_ref());
}
