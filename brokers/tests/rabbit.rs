//! The RabbitMQ publisher against the real server (AMQP_URL), each test with an exchange and
//! a queue of its own; the outage through a TCP proxy the test cuts and restores.

mod common;

use std::{net::SocketAddr, time::Duration};

use annals::InMemoryEventStore;
use annals_brokers::{Publisher, RabbitPublisher, Subjects, headers};
use annals_projections::{
    FailurePolicy, InMemoryLeases, MemoryReadModel, ProgressDisplay, ProjectionConfig,
    ProjectionRunner, ProjectionState, ReadModel,
};
use common::{Seen, check_deliveries, chosen, fast, filter, seed, wait_status};
use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    message::Delivery,
    options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The URL with another port (for the proxy).
fn url_via(port: u16) -> String {
    let url = url();
    let (head, tail) = url.rsplit_once('@').unwrap();
    let rest = tail.split_once('/').map_or("", |(_, rest)| rest);
    format!("{head}@127.0.0.1:{port}/{rest}")
}

/// A channel to the server, or `None` (a panic under CI) when it is down.
async fn channel() -> Option<(Connection, Channel)> {
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(&url(), ConnectionProperties::default()),
    )
    .await;
    match connected {
        Ok(Ok(connection)) => {
            let channel = connection.create_channel().await.unwrap();
            Some((connection, channel))
        }
        other => {
            common::unreachable("RabbitMQ at AMQP_URL", &format!("{other:?}"));
            None
        }
    }
}

/// The test's own exchange and a queue bound to `<prefix>.#` on it.
struct Topology {
    exchange: String,
    queue: String,
    prefix: String,
}

async fn topology(channel: &Channel) -> Topology {
    let t = Topology {
        exchange: common::unique("x"),
        queue: common::unique("q"),
        prefix: common::unique("p"),
    };
    channel
        .exchange_declare(
            t.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            t.queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            t.queue.as_str().into(),
            t.exchange.as_str().into(),
            format!("{}.#", t.prefix).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    t
}

async fn drop_topology(channel: &Channel, t: &Topology) {
    channel
        .queue_delete(t.queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(t.exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// Every message in the queue, in queue order.
async fn drain(channel: &Channel, queue: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(message.delivery);
    }
    out
}

fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let table = delivery.properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn seen(deliveries: &[Delivery]) -> Vec<Seen> {
    deliveries
        .iter()
        .map(|d| Seen {
            event_id: d
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str()
                .parse()
                .unwrap(),
            stream: header(d, headers::STREAM).unwrap(),
            version: header(d, headers::STREAM_VERSION).unwrap().parse().unwrap(),
        })
        .collect()
}

fn config() -> ProjectionConfig {
    ProjectionConfig::new()
        .with_batch_size(97)
        .with_page_size(200)
        .with_progress(ProgressDisplay::Silent)
}

fn publisher(url: &str, t: &Topology) -> RabbitPublisher {
    RabbitPublisher::new(url, &t.exchange)
        .with_subjects(Subjects::prefixed(&t.prefix))
        .with_window(64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_persistent_messages_with_ids_and_headers() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let t = topology(&channel).await;
    let store = InMemoryEventStore::new();
    let last = seed(&store, 0, 300).await;
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    Publisher::new("out", filter(), publisher(&url(), &t))
        .add_to(
            &runner,
            MemoryReadModel::<()>::new("out").unwrap(),
            config(),
        )
        .unwrap();
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    runner.shutdown().await;
    let want = chosen(&store).await;
    let delivered = drain(&channel, &t.queue).await;
    assert_eq!(check_deliveries(&seen(&delivered), &want, false), 0);
    for (d, event) in delivered.iter().zip(&want) {
        assert_eq!(
            d.routing_key.as_str(),
            format!("{}.order.{}", t.prefix, event.event_type)
        );
        assert_eq!(d.data, event.payload.as_str().as_bytes());
        let p = &d.properties;
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(event.event_id.to_string())
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.to_string()),
            Some(event.event_type.to_string())
        );
        assert_eq!(
            p.content_type().as_ref().map(|s| s.to_string()).as_deref(),
            Some("application/json")
        );
        // The type and the correlation id travel once, as properties.
        assert_eq!(header(d, headers::EVENT_TYPE), None);
        assert_eq!(header(d, headers::SCHEMA_VERSION).as_deref(), Some("1"));
        assert_eq!(
            header(d, headers::STREAM).as_deref(),
            Some(event.stream_id.as_str())
        );
        assert_eq!(
            header(d, headers::STREAM_VERSION),
            Some(event.stream_version.to_string())
        );
        assert_eq!(
            p.timestamp().map(|t| t as i64),
            Some(event.recorded_at.unix_timestamp())
        );
        let position = format!("{}:{}", event.position.commit, event.position.sequence);
        assert_eq!(header(d, headers::POSITION), Some(position));
        let correlation = event.metadata.correlation_id.map(|id| id.to_string());
        assert_eq!(header(d, headers::CORRELATION_ID), None);
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.to_string()),
            correlation
        );
        let causation = event.metadata.causation_id.map(|id| id.to_string());
        assert_eq!(header(d, headers::CAUSATION_ID), causation);
        let trace = annals_brokers::trace_context(event).map(|t| t.traceparent);
        assert_eq!(header(d, headers::TRACEPARENT), trace);
    }
    drop_topology(&channel, &t).await;
}

/// Aborted at random points 20 times: every chosen event is delivered, and the first delivery
/// of each comes in its stream's order (RabbitMQ keeps the repeats a restart sends again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_runs_deliver_every_event_in_stream_order() {
    use rand::Rng;
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let t = topology(&channel).await;
    let store = InMemoryEventStore::new();
    let leases = InMemoryLeases::new();
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    seed(&store, 0, 1_000).await;
    let start = || {
        let runner = ProjectionRunner::new(store.clone())
            .with_leases(leases.clone())
            .with_config(fast());
        Publisher::new("out", filter(), publisher(&url(), &t))
            .add_to(&runner, inner.clone(), config())
            .unwrap();
        runner
    };
    for round in 0..20 {
        let wait = rand::rng().random_range(0..60u64);
        let runner = start();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if round % 4 == 0 {
            seed(&store, 1_000 + round * 30, 30).await;
        }
        drop(runner);
        tokio::time::sleep(Duration::from_millis(160)).await;
    }
    let runner = start();
    runner.catch_up(Duration::from_secs(60)).await.unwrap();
    runner.shutdown().await;
    let delivered = drain(&channel, &t.queue).await;
    check_deliveries(&seen(&delivered), &chosen(&store).await, true);
    drop_topology(&channel, &t).await;
}

/// The connection to RabbitMQ is cut (a proxy the test runs) in the middle of a catch-up and
/// restored: the status shows `Retrying` with the broker's error, then running again, and
/// every event is delivered in its stream's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_shows_in_the_status_and_loses_nothing() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let t = topology(&channel).await;
    let upstream: SocketAddr = {
        let url = url();
        let host = url.rsplit_once('@').unwrap().1;
        let host = host.split_once('/').map_or(host, |(h, _)| h);
        tokio::net::lookup_host(host).await.unwrap().next().unwrap()
    };
    let proxy = common::Proxy::start(upstream).await;
    let store = InMemoryEventStore::new();
    seed(&store, 0, 3_000).await;
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    let rabbit = publisher(&url_via(proxy.port), &t)
        .with_confirm_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    Publisher::new("out", filter(), rabbit)
        .add_to(
            &runner,
            MemoryReadModel::<()>::new("out").unwrap(),
            config().with_batch_size(300),
        )
        .unwrap();
    wait_status(&runner, "out", |s| s.checkpoint.is_some()).await;
    proxy.cut();
    let last = seed(&store, 3_000, 200).await;
    let status = wait_status(&runner, "out", common::retrying).await;
    let ProjectionState::Retrying { error, .. } = &status.state else {
        unreachable!()
    };
    assert!(error.contains("RabbitMQ exchange"), "{error}");
    assert!(
        !error.contains("guest:guest"),
        "credentials in the status: {error}"
    );
    assert!(status.checkpoint < Some(last), "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    let status = wait_status(&runner, "out", |s| s.state == ProjectionState::Running).await;
    assert_eq!(status.checkpoint, Some(last));
    runner.shutdown().await;
    let delivered = drain(&channel, &t.queue).await;
    check_deliveries(&seen(&delivered), &chosen(&store).await, true);
    drop_topology(&channel, &t).await;
}

/// The connection to RabbitMQ is cut while the publisher is idle (caught up, no event
/// coming): the idle check shows the outage as `Retrying` without waiting for an event, then
/// `Running` once the broker is reachable again, and later events are delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_while_idle_shows_in_the_status() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let t = topology(&channel).await;
    let upstream: SocketAddr = {
        let url = url();
        let host = url.rsplit_once('@').unwrap().1;
        let host = host.split_once('/').map_or(host, |(h, _)| h);
        tokio::net::lookup_host(host).await.unwrap().next().unwrap()
    };
    let proxy = common::Proxy::start(upstream).await;
    let store = InMemoryEventStore::new();
    let first = seed(&store, 0, 200).await;
    let runner = ProjectionRunner::new(store.clone())
        .with_config(fast().with_idle_check(Duration::from_millis(200)));
    let rabbit = publisher(&url_via(proxy.port), &t)
        .with_confirm_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    Publisher::new("out", filter(), rabbit)
        .add_to(
            &runner,
            MemoryReadModel::<()>::new("out").unwrap(),
            config(),
        )
        .unwrap();
    runner
        .wait_for_within("out", first, Duration::from_secs(60))
        .await
        .unwrap();
    proxy.cut();
    let status = wait_status(&runner, "out", common::retrying).await;
    let ProjectionState::Retrying { error, .. } = &status.state else {
        unreachable!()
    };
    assert!(error.contains("RabbitMQ exchange"), "{error}");
    assert_eq!(status.checkpoint, Some(first), "{status}");
    proxy.restore();
    wait_status(&runner, "out", |s| s.state == ProjectionState::Running).await;
    let last = seed(&store, 200, 100).await;
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    runner.shutdown().await;
    let delivered = drain(&channel, &t.queue).await;
    check_deliveries(&seen(&delivered), &chosen(&store).await, true);
    drop_topology(&channel, &t).await;
}

/// An unroutable message (no queue bound for its routing key) is refused: by default the
/// publisher stops at it; under `DeadLetter` it is parked and the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_follows_the_failure_policy() {
    let Some((_connection, channel)) = channel().await else {
        return;
    };
    let t = topology(&channel).await;
    let subjects = {
        let prefix = t.prefix.clone();
        Subjects::custom(move |e| {
            let to = if e.stream_id.as_str() == "order-3" {
                "unbound"
            } else {
                prefix.as_str()
            };
            format!("{to}.{}.{}", e.stream_id.category(), e.event_type)
        })
    };
    let store = InMemoryEventStore::new();
    let last = seed(&store, 0, 200).await;
    let want = chosen(&store).await;
    let (refused, routable): (Vec<_>, Vec<_>) = want
        .iter()
        .cloned()
        .partition(|e| e.stream_id.as_str() == "order-3");

    // By default: stopped at the first unroutable event, named in the status.
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    Publisher::new(
        "out",
        filter(),
        publisher(&url(), &t).with_subjects(subjects.clone()),
    )
    .add_to(
        &runner,
        MemoryReadModel::<()>::new("out").unwrap(),
        config(),
    )
    .unwrap();
    let status = wait_status(&runner, "out", |s| {
        matches!(s.state, ProjectionState::Stopped(_))
    })
    .await;
    let ProjectionState::Stopped(reason) = &status.state else {
        unreachable!()
    };
    assert_eq!(reason.event_id, refused[0].event_id, "{reason}");
    assert!(reason.error.contains("unroutable"), "{reason}");
    runner.shutdown().await;
    drain(&channel, &t.queue).await;

    // Parked under DeadLetter.
    let runner = ProjectionRunner::new(store.clone()).with_config(fast());
    let inner = MemoryReadModel::<()>::new("out").unwrap();
    Publisher::new(
        "out",
        filter(),
        publisher(&url(), &t).with_subjects(subjects),
    )
    .add_to(
        &runner,
        inner.clone(),
        config().with_policy(FailurePolicy::DeadLetter),
    )
    .unwrap();
    runner
        .wait_for_within("out", last, Duration::from_secs(60))
        .await
        .unwrap();
    runner.shutdown().await;
    let letters = inner.dead_letters().await.unwrap();
    assert_eq!(letters.len(), refused.len());
    assert!(letters[0].error.contains("NO_ROUTE"), "{letters:?}");
    let delivered = drain(&channel, &t.queue).await;
    check_deliveries(&seen(&delivered), &routable, false);
    drop_topology(&channel, &t).await;
}
