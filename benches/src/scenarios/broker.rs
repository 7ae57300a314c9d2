//! `nats.publish`, `rabbit.publish`: the log published to a broker by an `annals-brokers`
//! `Publisher`, beside the same messages published by the bare client with acks awaited the
//! same way, in the same run.
//!
//! Both sides start from the same `events` deposits in an in-memory store, one command's
//! worth of metadata per append (a correlation id and a W3C trace context, as a `Repository`
//! writes them), and publish every event once to a stream or queue that is empty at the start
//! of each timed run.
//!
//! - **Framework:** `Publisher::add_to` a `ProjectionRunner` over the store (checkpoint in a
//!   `MemoryReadModel`, default batch of 5,000 events), timed from `add_to` until
//!   `wait_for_within` the store's head returns: the log read, the messages built (subject,
//!   payload, the dedup id and the `Annals-*`, `traceparent` headers), published pipelined
//!   with the publisher's default window (NATS 2,048 acks, RabbitMQ 1,024 confirms), every
//!   batch's acks awaited before its checkpoint is written.
//! - **Baseline:** the bare client (async-nats, lapin) publishing the same subjects and
//!   payloads, in log order, with only the deduplication id the delivery guarantees need
//!   (`Nats-Msg-Id`; AMQP `message_id`, persistent, `mandatory`), the same window of pending
//!   acks or confirms, from events already in memory.
//!
//! NATS: a JetStream stream of its own (file storage, as the default), created before each
//! run and deleted after. RabbitMQ: a durable topic exchange and a durable lazy queue bound
//! to it, purged after each run. `NATS_URL` and `AMQP_URL` (the local defaults otherwise).

use std::{collections::VecDeque, time::Duration, time::Instant};

use annals::{EventStore, InMemoryEventStore, LogPosition, LogRead, RecordedEvent, TraceContext};
use annals_brokers::{NatsPublisher, Publisher, RabbitPublisher, Subjects};
use annals_projections::{
    EventFilter, MemoryReadModel, ProgressDisplay, ProjectionConfig, ProjectionRunner,
};
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID, jetstream};
use futures::{TryStreamExt, future::BoxFuture};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use uuid::Uuid;

use crate::{BenchResult, env::Ctx, runner::Measured, workload};

/// The publishers' default windows, used by both sides.
const NATS_WINDOW: usize = 2_048;
const RABBIT_WINDOW: usize = 1_024;

/// How long one publishing run may take.
const TIMEOUT: Duration = Duration::from_secs(3_600);

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The store both sides publish from, and its events in log order.
async fn log(ctx: &Ctx) -> BenchResult<(InMemoryEventStore, Vec<RecordedEvent>)> {
    let store = InMemoryEventStore::new();
    for mut b in workload::many_streams(ctx.sizes.events, ctx.sizes.batch) {
        // One command's metadata per append, as a Repository writes it.
        let correlation = Uuid::now_v7();
        let trace = TraceContext::new_root();
        for e in &mut b.events {
            e.metadata.correlation_id = Some(correlation);
            e.metadata.trace = Some(trace.clone());
        }
        store.append(&b.stream, b.expected(), b.events).await?;
    }
    let events: Vec<RecordedEvent> = store.read_all(LogRead::from_start()).try_collect().await?;
    Ok((store, events))
}

/// Runs a publisher to `broker` over `store` until it has published the whole log; events/s.
async fn publish_with_framework<B: annals_brokers::Broker>(
    store: &InMemoryEventStore,
    head: LogPosition,
    events: u64,
    broker: B,
) -> BenchResult<f64> {
    let runner = ProjectionRunner::new(store.clone());
    let started = Instant::now();
    Publisher::new("bench-out", EventFilter::all(), broker).add_to(
        &runner,
        MemoryReadModel::<()>::new("bench-out")?,
        ProjectionConfig::new().with_progress(ProgressDisplay::Silent),
    )?;
    runner.wait_for_within("bench-out", head, TIMEOUT).await?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    runner.shutdown().await;
    Ok(events as f64 / secs)
}

/// Checks that the stream holds `n` messages, then deletes it.
async fn nats_stored(js: &jetstream::Context, name: &str, n: u64) -> BenchResult<()> {
    let mut stream = js.get_stream(name).await?;
    let messages = stream.info().await?.state.messages;
    js.delete_stream(name).await?;
    if messages == n {
        Ok(())
    } else {
        Err(format!("the stream holds {messages} messages, not {n}").into())
    }
}

/// `nats.publish`.
pub(crate) fn nats(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let url = nats_url();
        let client = async_nats::connect(&url)
            .await
            .map_err(|e| format!("cannot reach NATS at {url}: {e}"))?;
        let js = jetstream::new(client.clone());
        let (store, events) = log(ctx).await?;
        let n = events.len() as u64;
        let head = events.last().map_or(LogPosition::START, |e| e.position);
        let name = format!("BENCH{}", Uuid::new_v4().simple());
        let prefix = name.to_lowercase();
        let config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        };
        let mut m = Measured::new(n);
        for _ in 0..ctx.runs {
            js.create_stream(config.clone()).await?;
            let publisher = NatsPublisher::new(&url, &name)
                .with_subjects(Subjects::prefixed(&prefix))
                .with_window(NATS_WINDOW);
            let fw = publish_with_framework(&store, head, n, publisher).await?;
            nats_stored(&js, &name, n).await?;

            js.create_stream(config.clone()).await?;
            let bare = jetstream::ContextBuilder::new()
                .max_ack_inflight(NATS_WINDOW * 2)
                .build(client.clone());
            let started = Instant::now();
            let mut pending = VecDeque::with_capacity(NATS_WINDOW);
            for event in &events {
                if pending.len() >= NATS_WINDOW
                    && let Some(ack) = pending.pop_front()
                {
                    let ack: jetstream::context::PublishAckFuture = ack;
                    ack.await?;
                }
                let mut headers = HeaderMap::new();
                headers.insert(NATS_MESSAGE_ID, event.event_id.to_string());
                let subject = format!(
                    "{prefix}.{}.{}",
                    event.stream_id.category(),
                    event.event_type
                );
                let payload = event.payload.as_str().to_owned().into();
                pending.push_back(bare.publish_with_headers(subject, headers, payload).await?);
            }
            for ack in pending {
                ack.await?;
            }
            let base = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
            nats_stored(&js, &name, n).await?;
            m.framework.push(fw);
            m.baseline.push(base);
        }
        Ok(m)
    })
}

/// A durable topic exchange and a durable queue bound to everything it routes.
async fn rabbit_topology(channel: &Channel, exchange: &str, queue: &str) -> BenchResult<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Lazy: messages go to disk as they come, so a backlog of a million does not stall
    // publishing while RabbitMQ pages it out (a stall longer than the publisher's confirm
    // timeout fails a batch, which is then published again: more messages than events).
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-mode".into(), AMQPValue::LongString("lazy".into()));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Checks that the queue holds `n` messages, then empties it.
async fn rabbit_stored(channel: &Channel, queue: &str, n: u64) -> BenchResult<()> {
    // Confirmed messages are routed; the count may trail by a moment.
    let mut held = 0;
    for _ in 0..50 {
        held = u64::from(
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?
                .message_count(),
        );
        if held == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    if held == n {
        Ok(())
    } else {
        Err(format!("the queue holds {held} messages, not {n}").into())
    }
}

/// `rabbit.publish`.
pub(crate) fn rabbit(ctx: &Ctx) -> BoxFuture<'_, BenchResult<Measured>> {
    Box::pin(async move {
        let url = amqp_url();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("cannot reach RabbitMQ: {e}"))?;
        let channel = connection.create_channel().await?;
        let exchange = format!("bench{}", Uuid::new_v4().simple());
        let queue = format!("bench{}", Uuid::new_v4().simple());
        rabbit_topology(&channel, &exchange, &queue).await?;
        let (store, events) = log(ctx).await?;
        let n = events.len() as u64;
        let head = events.last().map_or(LogPosition::START, |e| e.position);
        let prefix = "events";
        let outcome: BenchResult<Measured> = async {
            let mut m = Measured::new(n);
            for _ in 0..ctx.runs {
                let publisher = RabbitPublisher::new(&url, &exchange)
                    .with_subjects(Subjects::prefixed(prefix))
                    .with_window(RABBIT_WINDOW);
                let fw = publish_with_framework(&store, head, n, publisher).await?;
                rabbit_stored(&channel, &queue, n).await?;

                let confirms = connection.create_channel().await?;
                confirms
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                };
                let started = Instant::now();
                let mut pending = VecDeque::with_capacity(RABBIT_WINDOW);
                for event in &events {
                    if pending.len() >= RABBIT_WINDOW
                        && let Some(confirm) = pending.pop_front()
                    {
                        let confirm: lapin::PublisherConfirm = confirm;
                        confirm.await?;
                    }
                    let routing_key = format!(
                        "{prefix}.{}.{}",
                        event.stream_id.category(),
                        event.event_type
                    );
                    let properties = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(event.event_id.to_string().into());
                    pending.push_back(
                        confirms
                            .basic_publish(
                                exchange.as_str().into(),
                                routing_key.as_str().into(),
                                options,
                                event.payload.as_str().as_bytes(),
                                properties,
                            )
                            .await?,
                    );
                }
                for confirm in pending {
                    confirm.await?;
                }
                let base = n as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let _ = confirms.close(200, "done".into()).await;
                rabbit_stored(&channel, &queue, n).await?;
                m.framework.push(fw);
                m.baseline.push(base);
            }
            Ok(m)
        }
        .await;
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
        let _ = connection.close(200, "done".into()).await;
        outcome
    })
}
