//! Retried appends: when some event id of an append is stored already, the stored events
//! decide between the original result and an idempotency conflict.

use std::collections::HashMap;

use annals::{AppendResult, Error, RecordedEvent, StreamAppend};
use uuid::Uuid;

use crate::{bounded::Db, read::by_ids};

/// The original results when every id of `appends` is stored already as the same event, in
/// the same order; [`Error::IdempotencyConflict`] otherwise.
pub(crate) async fn resolve(
    db: &Db,
    appends: &[StreamAppend],
) -> annals::Result<Vec<AppendResult>> {
    let ids: Vec<Uuid> = appends
        .iter()
        .flat_map(|a| &a.events)
        .map(|e| e.event_id)
        .collect();
    let stored = by_ids(db, &ids).await?;
    compare(appends, stored)
}

/// The decision, apart from the database.
pub(crate) fn compare(
    appends: &[StreamAppend],
    stored: Vec<RecordedEvent>,
) -> annals::Result<Vec<AppendResult>> {
    let stored: HashMap<Uuid, RecordedEvent> =
        stored.into_iter().map(|e| (e.event_id, e)).collect();
    let mut results = Vec::with_capacity(appends.len());
    for append in appends {
        let mut first: Option<&RecordedEvent> = None;
        let mut previous: Option<&RecordedEvent> = None;
        for event in &append.events {
            let Some(found) = stored.get(&event.event_id) else {
                // Only some ids are stored: this is no retry of one earlier append.
                let stored_id = appends
                    .iter()
                    .flat_map(|a| &a.events)
                    .find(|e| stored.contains_key(&e.event_id))
                    .map_or(event.event_id, |e| e.event_id);
                return Err(Error::IdempotencyConflict {
                    event_id: stored_id,
                });
            };
            let in_order = previous.is_none_or(|p| p.stream_version + 1 == found.stream_version);
            if !in_order || !event.is_stored_as(&append.stream, found) {
                return Err(Error::IdempotencyConflict {
                    event_id: event.event_id,
                });
            }
            first.get_or_insert(found);
            previous = Some(found);
        }
        let (Some(first), Some(last)) = (first, previous) else {
            return Err(Error::InvalidAppend {
                reason: "an append to a stream needs at least one event",
            });
        };
        results.push(AppendResult {
            stream_version: last.stream_version,
            first_position: first.position,
            last_position: last.position,
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use annals::{ExpectedVersion, LogPosition, Metadata, StreamId, testing::new_event};
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    fn stored(stream: &StreamId, append: &StreamAppend, first: u64) -> Vec<RecordedEvent> {
        append
            .events
            .iter()
            .zip(first..)
            .map(|(e, v)| RecordedEvent {
                position: LogPosition::new(7, v * 10),
                stream_id: stream.clone(),
                stream_version: v,
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                payload: e.payload.clone(),
                metadata: Metadata::default(),
                recorded_at: OffsetDateTime::UNIX_EPOCH,
            })
            .collect()
    }

    #[test]
    fn a_stored_batch_gives_its_original_result_and_anything_else_conflicts() {
        let s = StreamId::new("s").unwrap();
        let batch: Vec<_> = (0..3).map(|i| new_event("E", json!({ "i": i }))).collect();
        let append = StreamAppend::new(s.clone(), ExpectedVersion::Any, batch.clone());
        let rows = stored(&s, &append, 4);
        let r = compare(std::slice::from_ref(&append), rows.clone()).unwrap();
        assert_eq!(r[0].stream_version, 6);
        assert_eq!(r[0].first_position, LogPosition::new(7, 40));
        assert_eq!(r[0].last_position, LogPosition::new(7, 60));

        let partial = StreamAppend::new(
            s.clone(),
            ExpectedVersion::Any,
            vec![batch[0].clone(), new_event("E", json!({}))],
        );
        assert!(matches!(
            compare(&[partial], rows.clone()),
            Err(Error::IdempotencyConflict { event_id }) if event_id == batch[0].event_id
        ));
        let reordered = StreamAppend::new(
            s.clone(),
            ExpectedVersion::Any,
            vec![batch[1].clone(), batch[0].clone()],
        );
        assert!(compare(&[reordered], rows.clone()).is_err());
        let other_stream = StreamAppend::new(
            StreamId::new("t").unwrap(),
            ExpectedVersion::Any,
            batch.clone(),
        );
        assert!(compare(&[other_stream], rows.clone()).is_err());
        let mut changed = append.clone();
        changed.events[2].payload = annals::Payload::from_json("{}").unwrap();
        assert!(compare(&[changed], rows).is_err());
    }
}
