//! Calling a projection's handler under its failure policy, panics included.

use std::panic::AssertUnwindSafe;

use annals::{RecordedEvent, TraceContext};
use futures::FutureExt;
use tracing::{Instrument, field::Empty};

use crate::{
    FailurePolicy, ProjectionState, ReadModel, WriteBatch,
    runner::{consumer::Consumer, worker::Shared},
};

/// What the policy decided for an event whose handler failed.
pub(crate) enum Failure {
    /// Park it, with the last error and the number of tries.
    Park(String, u32),
    /// Stop the projection at it.
    Stop(String),
}

/// Calls the handler under the failure policy, within the event's span (see
/// [`event_span`]).
pub(crate) async fn call<P: Consumer, S>(
    shared: &Shared<P, S>,
    event: &RecordedEvent,
    batch: &mut <P::Model as ReadModel>::Batch,
) -> Result<(), Failure> {
    let span = event_span(shared.projection.name(), event);
    call_with_policy(shared, event, batch)
        .instrument(span)
        .await
}

/// The span of handling one event (`annals.handle`, at trace: one per event on the hot
/// path), a child of the event's trace context: the consumer, the event's stream, position,
/// type, id, correlation and causation.
pub(crate) fn event_span(consumer: &str, event: &RecordedEvent) -> tracing::Span {
    let span = tracing::trace_span!(
        "annals.handle",
        consumer,
        stream = %event.stream_id,
        position = %event.position,
        event_type = %event.event_type,
        event_id = %event.event_id,
        correlation_id = event.metadata.correlation_id.map(tracing::field::display),
        causation_id = event.metadata.causation_id.map(tracing::field::display),
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    );
    if !span.is_disabled()
        && let Some(trace) = &event.metadata.trace
    {
        TraceContext::for_span(&span, Some(trace));
    }
    span
}

async fn call_with_policy<P: Consumer, S>(
    shared: &Shared<P, S>,
    event: &RecordedEvent,
    batch: &mut <P::Model as ReadModel>::Batch,
) -> Result<(), Failure> {
    let mut policy = &shared.config.policy;
    let mut attempt = 0u32;
    loop {
        let projection = &shared.projection;
        let Err(error) = call_once(projection.as_ref(), event, batch).await else {
            return Ok(());
        };
        attempt += 1;
        match policy {
            FailurePolicy::Stop => return Err(Failure::Stop(error)),
            FailurePolicy::DeadLetter => return Err(Failure::Park(error, attempt)),
            FailurePolicy::Retry {
                attempts,
                backoff,
                then,
            } => {
                if attempt < *attempts {
                    let delay = backoff.delay(attempt - 1);
                    tracing::warn!(projection = projection.name(), position = %event.position, event_type = %event.event_type, attempt, ?delay, error, "handler failed, retrying");
                    shared.status.send_modify(|s| {
                        s.state = ProjectionState::Retrying {
                            attempt,
                            error: error.clone(),
                        };
                    });
                    tokio::time::sleep(delay).await;
                } else {
                    policy = match then.as_ref() {
                        FailurePolicy::DeadLetter => &FailurePolicy::DeadLetter,
                        _ => &FailurePolicy::Stop,
                    };
                    return Err(match policy {
                        FailurePolicy::DeadLetter => Failure::Park(error, attempt),
                        _ => Failure::Stop(error),
                    });
                }
            }
        }
    }
}

/// Calls the handler once; on an error or a panic, rolls back what it added (data and
/// lookups) and returns the error's text.
pub(crate) async fn call_once<P: Consumer>(
    projection: &P,
    event: &RecordedEvent,
    batch: &mut <P::Model as ReadModel>::Batch,
) -> Result<(), String> {
    let savepoint = batch.savepoint();
    let lookups = batch.lookups().savepoint();
    let outcome = AssertUnwindSafe(projection.handle(event, batch))
        .catch_unwind()
        .await;
    let error = match outcome {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => error_chain(e.as_ref()),
        Err(panic) => format!("handler panicked: {}", panic_message(panic.as_ref())),
    };
    batch.rollback_to(savepoint);
    batch.lookups_mut().rollback_to(lookups);
    Err(error)
}

/// An error and its sources, joined by ": ".
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
