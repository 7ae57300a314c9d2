//! With the `otlp` feature (`annals/opentelemetry`): the trace context that events carry is
//! OpenTelemetry's, the one the exporter sends, whether the command continues the current
//! span or a context given to it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use annals::testing::{Counter, CounterCommand};
use annals::{
    CommandContext, EventStore, InMemoryEventStore, LogRead, RecordedEvent, Repository,
    TraceContext,
};
use futures::TryStreamExt;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanProcessor},
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

/// Keeps every ended span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl Collect {
    fn by_span_id(&self, context: &TraceContext) -> SpanData {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.span_context.span_id().to_bytes() == context.span_id().to_bytes())
            .cloned()
            .unwrap_or_else(|| panic!("no exported span has the id {}", context.span_id()))
    }
}

async fn log(store: &InMemoryEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(LogRead::from_start())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn events_carry_the_exported_spans_context() {
    let collect = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(collect.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let store = InMemoryEventStore::new();
    let counters = Repository::<Counter, _>::new(store.clone());

    // Inside a request's span, the command continues it.
    let request = tracing::info_span!("request");
    let request_context = request.context().span().span_context().clone();
    assert!(request_context.is_valid());
    async {
        let current = TraceContext::current().expect("the current span's context");
        assert_eq!(
            current.span_id().to_bytes(),
            request_context.span_id().to_bytes()
        );
        counters
            .execute("a", CounterCommand::Add(1), &CommandContext::new())
            .await
            .unwrap();
    }
    .instrument(request.clone())
    .await;
    drop(request);

    // Given a remote parent, the command continues that one.
    let remote =
        TraceContext::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .unwrap();
    counters
        .execute(
            "b",
            CounterCommand::Add(1),
            &CommandContext::new().with_trace(remote.clone()),
        )
        .await
        .unwrap();

    let events = log(&store).await;
    let first = TraceContext::from_metadata(&events[0].metadata).unwrap();
    assert_eq!(
        first.trace_id().to_bytes(),
        request_context.trace_id().to_bytes()
    );
    let command = collect.by_span_id(first);
    assert_eq!(command.name, "annals.command");
    assert_eq!(command.parent_span_id, request_context.span_id());

    let second = TraceContext::from_metadata(&events[1].metadata).unwrap();
    assert_eq!(second.trace_id(), remote.trace_id());
    let command = collect.by_span_id(second);
    assert_eq!(command.name, "annals.command");
    assert_eq!(
        command.parent_span_id.to_bytes(),
        remote.span_id().to_bytes()
    );
    assert!(command.parent_span_is_remote);
    provider.shutdown().unwrap();
}
