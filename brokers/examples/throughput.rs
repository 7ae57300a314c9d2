//! Publishing throughput beside the bare client, acks awaited the same way (a window of
//! pending acks, no round trip per message):
//!
//! ```sh
//! cargo run --release -p annals-brokers --example throughput -- nats 200000
//! cargo run --release -p annals-brokers --example throughput -- rabbit 100000
//! ```
//!
//! Uses NATS_URL / AMQP_URL (the local defaults otherwise), a stream or exchange of its own,
//! deleted afterwards. This is the publish path a bench drives: [`Broker::connect`] once,
//! then [`Broker::publish`] per batch of [`Message::from_event`].

use std::{collections::VecDeque, time::Instant};

use annals::{EventType, LogPosition, Metadata, Payload, RecordedEvent, StreamId};
use annals_brokers::{Broker, Message, NatsPublisher, RabbitPublisher, Subjects};
use async_nats::{HeaderMap, header::NATS_MESSAGE_ID, jetstream};
use lapin::{
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use uuid::Uuid;

const BATCH: usize = 5_000;
const WINDOW: usize = 2_048;

fn events(n: usize) -> Vec<RecordedEvent> {
    (0..n)
        .map(|i| RecordedEvent {
            position: LogPosition::serial(i as u64 + 1),
            stream_id: StreamId::new(format!("order-{}", i % 1_000)).unwrap(),
            stream_version: (i / 1_000) as u64 + 1,
            event_id: Uuid::now_v7(),
            event_type: EventType::new("Placed").unwrap(),
            schema_version: 1,
            payload: Payload::from_stored(format!(
                r#"{{"order":{i},"amount":{},"memo":"a typical small event"}}"#,
                i % 97
            )),
            metadata: Metadata {
                correlation_id: Some(Uuid::now_v7()),
                ..Metadata::default()
            },
            recorded_at: time::OffsetDateTime::now_utc(),
        })
        .collect()
}

fn report(what: &str, n: usize, started: Instant) -> f64 {
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "{what}: {n} messages in {:.2?} = {rate:.0}/s",
        started.elapsed()
    );
    rate
}

async fn nats(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let name = format!("BENCH{}", Uuid::new_v4().simple());
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        ..Default::default()
    })
    .await?;
    let events = events(n);

    // Bare async-nats: Nats-Msg-Id only, the same window of acks.
    let bare = jetstream::ContextBuilder::new()
        .max_ack_inflight(WINDOW * 2)
        .build(client.clone());
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for event in &events {
        if pending.len() >= WINDOW {
            let ack: jetstream::context::PublishAckFuture = pending.pop_front().unwrap();
            ack.await?;
        }
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event.event_id.to_string());
        let subject = format!("{}.order.{}", name.to_lowercase(), event.event_type);
        let payload = bytes::Bytes::copy_from_slice(event.payload.as_str().as_bytes());
        pending.push_back(bare.publish_with_headers(subject, headers, payload).await?);
    }
    for ack in pending {
        ack.await?;
    }
    let bare_rate = report("async-nats, bare", n, started);
    js.delete_stream(&name).await?;
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        ..Default::default()
    })
    .await?;

    // The publisher's path: messages built from events, published in runner-sized batches.
    let publisher = NatsPublisher::new(&url, &name)
        .with_subjects(Subjects::prefixed(name.to_lowercase()))
        .with_window(WINDOW);
    let mut session = publisher.connect().await?;
    let started = Instant::now();
    for chunk in events.chunks(BATCH) {
        let messages: Vec<Message> = chunk
            .iter()
            .map(|e| Message::from_event(e, publisher.subject(e)))
            .collect();
        let published = publisher.publish(&mut session, &messages).await?;
        assert_eq!(published.stored, chunk.len());
    }
    let ours = report("annals-brokers NatsPublisher", n, started);
    println!("ratio: {:.2} of the bare client", ours / bare_rate);
    js.delete_stream(&name).await?;
    Ok(())
}

async fn rabbit(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let exchange = format!("bench{}", Uuid::new_v4().simple());
    let queue = format!("bench{}", Uuid::new_v4().simple());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let events = events(n);

    // Bare lapin: persistent, message_id, the same window of confirms.
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    for event in &events {
        if pending.len() >= WINDOW {
            let confirm: lapin::PublisherConfirm = pending.pop_front().unwrap();
            confirm.await?;
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(event.event_id.to_string().into());
        pending.push_back(
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "events.order.Placed".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    event.payload.as_str().as_bytes(),
                    properties,
                )
                .await?,
        );
    }
    for confirm in pending {
        confirm.await?;
    }
    let bare_rate = report("lapin, bare", n, started);
    channel
        .queue_purge(queue.as_str().into(), Default::default())
        .await?;

    let publisher = RabbitPublisher::new(&url, &exchange).with_window(WINDOW);
    let mut session = publisher.connect().await?;
    let started = Instant::now();
    for chunk in events.chunks(BATCH) {
        let messages: Vec<Message> = chunk
            .iter()
            .map(|e| Message::from_event(e, publisher.subject(e)))
            .collect();
        let published = publisher.publish(&mut session, &messages).await?;
        assert_eq!(published.stored, chunk.len());
    }
    let ours = report("annals-brokers RabbitPublisher", n, started);
    println!("ratio: {:.2} of the bare client", ours / bare_rate);
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "nats".into());
    let n = args.next().map_or(Ok(100_000), |n| n.parse())?;
    match broker.as_str() {
        "nats" => nats(n).await,
        "rabbit" => rabbit(n).await,
        other => Err(format!("unknown broker {other:?}: nats or rabbit").into()),
    }
}
