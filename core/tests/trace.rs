//! W3C trace context: a command's span and the context its events carry, continued by
//! commands caused by events; stored metadata with and without it, hostile values.

use annals::testing::{Counter, CounterCommand};
use annals::{
    CommandContext, EventStore, InMemoryEventStore, LogRead, Metadata, RecordedEvent, Repository,
    StreamAppend, TraceContext,
};
use annals_span_recorder::recorder;
use futures::TryStreamExt;

async fn log(store: &InMemoryEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap()
}

fn trace_of(event: &RecordedEvent) -> &TraceContext {
    TraceContext::from_metadata(&event.metadata).expect("the event carries a trace context")
}

#[tokio::test]
async fn a_commands_span_id_and_trace_id_are_in_its_events_metadata() {
    let (recorder, _guard) = recorder();
    let store = InMemoryEventStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    counters
        .execute("c", CounterCommand::Add(2), &CommandContext::new())
        .await
        .unwrap();
    let commands = recorder.named("annals.command");
    assert_eq!(commands.len(), 1);
    let command = &commands[0];
    assert_eq!(command.field("stream"), "counter-c");
    assert_eq!(command.field("aggregate"), "counter");
    assert_eq!(command.field("version"), "1");
    assert_eq!(command.field("events"), "1");
    assert!(
        !command.fields.contains_key("parent_span_id"),
        "a new trace"
    );

    let events = log(&store).await;
    assert_eq!(events.len(), 1);
    let trace = trace_of(&events[0]);
    assert_eq!(trace.trace_id().to_string(), command.field("trace_id"));
    assert_eq!(trace.span_id().to_string(), command.field("span_id"));
    assert_eq!(
        command.field("correlation_id"),
        events[0].metadata.correlation_id.unwrap().to_string()
    );

    // Load and append are children of the command's span.
    for name in ["annals.load", "annals.append"] {
        let spans = recorder.named(name);
        assert_eq!(spans.len(), 1, "{name}");
        assert_eq!(spans[0].parent, Some("annals.command"), "{name}");
        assert_eq!(spans[0].field("stream"), "counter-c");
    }
    assert_eq!(
        recorder.named("annals.append")[0].field("position"),
        events[0].position.to_string()
    );
}

#[tokio::test]
async fn a_command_continues_the_trace_it_is_given_and_caused_commands_carry_it_on() {
    let (recorder, _guard) = recorder();
    let store = InMemoryEventStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    let incoming = TraceContext::from_headers(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("vendor=opaque"),
    )
    .unwrap();
    let ctx = CommandContext::new().with_trace(incoming.clone());
    counters
        .execute("a", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    let trigger = log(&store).await.remove(0);
    let first = trace_of(&trigger).clone();
    assert_eq!(first.trace_id(), incoming.trace_id());
    assert_ne!(first.span_id(), incoming.span_id());
    assert_eq!(first.tracestate(), Some("vendor=opaque"));
    let command = &recorder.named("annals.command")[0];
    assert_eq!(command.field("parent_span_id"), "00f067aa0ba902b7");
    assert_eq!(command.field("span_id"), first.span_id().to_string());

    // A command caused by the event: same trace, its span a child of the trigger's.
    let caused = CommandContext::caused_by(&trigger);
    assert_eq!(caused.trace.as_ref(), Some(&first));
    counters
        .execute("b", CounterCommand::Add(1), &caused)
        .await
        .unwrap();
    let reaction = log(&store).await.remove(1);
    let second = trace_of(&reaction);
    assert_eq!(second.trace_id(), incoming.trace_id());
    assert_ne!(second.span_id(), first.span_id());
    let commands = recorder.named("annals.command");
    assert_eq!(
        commands[1].field("parent_span_id"),
        first.span_id().to_string()
    );
    assert_eq!(commands[1].field("span_id"), second.span_id().to_string());
}

#[tokio::test]
async fn decisions_carry_the_context_of_their_command_span() {
    let (recorder, _guard) = recorder();
    let store = InMemoryEventStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::new();
    let a = counters
        .decide("a", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    let b = counters
        .decide("b", CounterCommand::Add(2), &ctx)
        .await
        .unwrap();
    store
        .append_multi(vec![a.to_append(), b.to_append()])
        .await
        .unwrap();
    let commands = recorder.named("annals.command");
    assert_eq!(commands.len(), 2);
    for (event, command) in log(&store).await.iter().zip(&commands) {
        assert_eq!(
            trace_of(event).span_id().to_string(),
            command.field("span_id")
        );
    }
}

#[tokio::test]
async fn without_a_subscriber_the_context_still_travels() {
    let store = InMemoryEventStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    for _ in 0..2 {
        counters
            .execute("c", CounterCommand::Add(1), &CommandContext::new())
            .await
            .unwrap();
    }
    let events = log(&store).await;
    let (a, b) = (trace_of(&events[0]), trace_of(&events[1]));
    assert_ne!(
        a.trace_id(),
        b.trace_id(),
        "each command starts its own trace"
    );
    let parsed = TraceContext::from_traceparent(&a.to_traceparent()).unwrap();
    assert_eq!(&parsed, a);
}

#[tokio::test]
async fn the_trace_survives_an_idempotent_retry_as_first_stored() {
    let store = InMemoryEventStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());
    let ctx = CommandContext::idempotent(uuid::Uuid::now_v7());
    let first = counters
        .execute("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    let retry = counters
        .execute("c", CounterCommand::Add(1), &ctx)
        .await
        .unwrap();
    assert!(!first.already_applied && retry.already_applied);
    assert_eq!(log(&store).await.len(), 1);
}

#[test]
fn metadata_stored_before_the_trace_field_still_decodes() {
    let old =
        r#"{"correlation_id":"0195d2a4-7c6e-7cc2-9d7b-1f1f0c3c1a10","custom":{"user":"ada"}}"#;
    let metadata = Metadata::from_json(old).unwrap();
    assert_eq!(metadata.trace, None);
    assert_eq!(metadata.custom["user"], "ada");
    // And metadata without a trace is written as before: no new key.
    assert!(!metadata.to_json().unwrap().contains("trace"));
    assert!(Metadata::default().is_empty());
    let traced = Metadata {
        trace: Some(TraceContext::new_root()),
        ..Metadata::default()
    };
    assert!(!traced.is_empty());
    assert_eq!(
        Metadata::from_json(&traced.to_json().unwrap()).unwrap(),
        traced
    );
}

#[test]
fn hostile_stored_trace_contexts_are_dropped_never_failing_the_event() {
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let long = "0".repeat(100_000);
    for trace in [
        r#""00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01""#.to_owned(),
        "5".to_owned(),
        "null".to_owned(),
        "[1,2]".to_owned(),
        "{}".to_owned(),
        r#"{"traceparent":7}"#.to_owned(),
        r#"{"traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}"#.to_owned(),
        r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n"}"#.to_owned(),
        format!(r#"{{"traceparent":"{long}"}}"#),
        r#"{"traceparent":"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#.to_owned(),
    ] {
        let json =
            format!(r#"{{"causation_id":"0195d2a4-7c6e-7cc2-9d7b-1f1f0c3c1a10","trace":{trace}}}"#);
        let metadata = Metadata::from_json(&json).unwrap_or_else(|e| panic!("{trace}: {e}"));
        assert_eq!(metadata.trace, None, "{trace}");
        assert!(metadata.causation_id.is_some());
    }
    // A bad tracestate is dropped, the traceparent kept.
    let json = format!(r#"{{"trace":{{"traceparent":"{valid}","tracestate":"no value"}}}}"#);
    let trace = Metadata::from_json(&json).unwrap().trace.unwrap();
    assert_eq!(trace.to_traceparent(), valid);
    assert_eq!(trace.tracestate(), None);
    // Escaped text is read as its value; nested values where strings belong are dropped.
    let escaped = r#"{"trace":{"tracestate":"k=v","traceparent":"\u0030\u0030-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}"#;
    let trace = Metadata::from_json(escaped).unwrap().trace.unwrap();
    assert_eq!(trace.to_traceparent(), valid);
    assert_eq!(trace.tracestate(), Some("k=v"));
    let nested = r#"{"trace":{"traceparent":{"traceparent":"x"},"tracestate":[1,{"a":null}]}}"#;
    assert_eq!(Metadata::from_json(nested).unwrap().trace, None);
    // Broken JSON is still an error: only the meaning is forgiven, not the syntax.
    assert!(Metadata::from_json(r#"{"trace":{"traceparent":"#).is_err());
    // Unknown keys inside the context are ignored.
    let json = format!(r#"{{"trace":{{"traceparent":"{valid}","baggage":"x"}}}}"#);
    assert!(Metadata::from_json(&json).unwrap().trace.is_some());
}

#[tokio::test]
async fn appending_hand_built_events_keeps_their_context() {
    let store = InMemoryEventStore::new();
    let parent = TraceContext::new_root();
    let metadata = CommandContext::new().with_trace(parent.clone()).metadata();
    let event = annals::testing::new_event("Noted", serde_json::json!({})).with_metadata(metadata);
    store
        .append_multi(vec![StreamAppend::new(
            annals::StreamId::new("note-1").unwrap(),
            annals::ExpectedVersion::NoStream,
            vec![event],
        )])
        .await
        .unwrap();
    assert_eq!(trace_of(&log(&store).await[0]), &parent);
}
