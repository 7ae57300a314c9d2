//! One trace from the command to the consumer, through a real broker: a command appends an
//! event in its `annals.command` span; the publisher sends it to NATS JetStream and to
//! RabbitMQ in an `annals.publish` span; each consumer reads the trace context back from the message and runs the
//! handler in an `annals.consume` span whose parent is the command's span.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use annals::{
    CommandContext, InMemoryEventStore, Repository,
    testing::{Counter, CounterCommand},
};
use annals_brokers::{
    ConsumerConfig, Delivery, NatsConsumer, NatsPublisher, Publisher, RabbitConsumer,
    RabbitPublisher, Subjects,
};
use annals_projections::{
    EventFilter, MemoryReadModel, ProgressDisplay, ProjectionConfig, ProjectionRunner,
};
use annals_span_recorder::recorder;

// --- the test -----------------------------------------------------------------------------

/// Runs one command, publishes its event with `publisher` and consumes it with `consume`;
/// checks that the consumed message's trace context is the command span's, and that the
/// consume span is its child.
async fn one_trace<B, F, Fut>(publisher: B, consume: F)
where
    B: annals_brokers::Broker,
    F: FnOnce(
        Box<dyn Fn(Delivery) -> futures::future::Ready<Result<(), annals::BoxError>> + Send + Sync>,
    ) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (recorder, _guard) = recorder();
    let store = InMemoryEventStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    counters
        .execute("c1", CounterCommand::Add(5), &CommandContext::new())
        .await
        .unwrap();
    let command = recorder.named("annals.command").remove(0);
    let (trace_id, span_id) = (command.field("trace_id"), command.field("span_id"));

    let runner = ProjectionRunner::new(store.clone()).with_config(common::fast());
    Publisher::new("out", EventFilter::categories(["counter"]), publisher)
        .add_to(
            &runner,
            MemoryReadModel::<()>::new("out").unwrap(),
            ProjectionConfig::new().with_progress(ProgressDisplay::Silent),
        )
        .unwrap();
    runner.catch_up(Duration::from_secs(60)).await.unwrap();
    runner.shutdown().await;
    // The publish has a span of its own, with what the broker said.
    let publish = recorder.named("annals.publish");
    assert_eq!(publish.len(), 1, "one publish");
    assert_eq!(publish[0].field("messages"), "1");
    assert_eq!(publish[0].field("stored"), "1");
    assert_eq!(publish[0].field("refused"), "0");

    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = got.clone();
    consume(Box::new(move |d: Delivery| {
        sink.lock().unwrap().push(d);
        futures::future::ready(Ok(()))
    }))
    .await;
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    // The consumed message's trace context: the command's trace, the command's span.
    let trace = got[0]
        .trace
        .as_ref()
        .expect("the message carries a trace context");
    assert_eq!(trace.trace_id().to_string(), trace_id);
    assert_eq!(trace.span_id().to_string(), span_id);
    // The consume span continues it.
    let consume = recorder.named("annals.consume").remove(0);
    assert_eq!(consume.field("trace_id"), trace_id);
    assert_eq!(consume.field("parent_span_id"), span_id);
    assert_eq!(
        consume.field("span_id"),
        got[0].consume_trace.span_id().to_string()
    );
    assert_eq!(consume.field("event_type"), "Added");
}

#[tokio::test]
async fn the_nats_consumer_continues_the_commands_trace() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = match tokio::time::timeout(Duration::from_secs(5), async_nats::connect(&url)).await
    {
        Ok(Ok(client)) => client,
        other => return common::unreachable("NATS at NATS_URL", &format!("{other:?}")),
    };
    let js = async_nats::jetstream::new(client);
    let stream = common::unique("TR");
    let prefix = common::unique("tr");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .unwrap();
    let publisher = NatsPublisher::new(&url, &stream).with_subjects(Subjects::prefixed(&prefix));
    let consumer = NatsConsumer::new(&url, &stream, "traced")
        .with_dead_letters(format!("{stream}_DEAD"), format!("{prefix}dead"))
        .with_config(ConsumerConfig::new().with_idle_check(Duration::from_millis(200)));
    one_trace(publisher, |handler| async move {
        consumer.drain(handler).await.unwrap();
    })
    .await;
    js.delete_stream(&stream).await.unwrap();
    let _ = js.delete_stream(format!("{stream}_DEAD")).await;
}

#[tokio::test]
async fn the_rabbit_consumer_continues_the_commands_trace() {
    use lapin::{
        Connection, ConnectionProperties,
        options::{ExchangeDeleteOptions, QueueDeleteOptions},
    };
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connection = match tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        other => return common::unreachable("RabbitMQ at AMQP_URL", &format!("{other:?}")),
    };
    let exchange = common::unique("trx");
    let queue = common::unique("trq");
    let consumer = RabbitConsumer::new(&url, &exchange, &queue)
        .with_config(ConsumerConfig::new().with_idle_check(Duration::from_millis(200)));
    // Declares the queue before anything is published.
    consumer
        .drain(|_d: Delivery| async { Ok(()) })
        .await
        .unwrap();
    let publisher = RabbitPublisher::new(&url, &exchange);
    one_trace(publisher, |handler| async move {
        consumer.drain(handler).await.unwrap();
    })
    .await;
    let channel = connection.create_channel().await.unwrap();
    for q in [queue.clone(), format!("{queue}.dead")] {
        channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}
