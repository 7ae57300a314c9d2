//! Recognising a retried append by its event ids.

use std::{collections::HashMap, sync::LazyLock};

use annals::{AppendResult, Error, LogPosition, StreamAppend};
use sqlx::{Row as _, Sqlite, Transaction};
use uuid::Uuid;

use crate::store::Shared;

/// Ids looked up per statement; a shorter list repeats its ids to fill the statement.
const ID_CHUNK: usize = 128;

static FIND_IDS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT e.event_id, s.stream_id, e.stream_version, e.event_type, e.schema_version, \
                e.payload, e.seq \
         FROM events AS e CROSS JOIN streams AS s \
         WHERE s.stream_key = e.stream_key AND e.event_id IN ({})",
        vec!["?"; ID_CHUNK].join(", ")
    )
});

/// What the store holds for one event id.
struct Stored {
    stream_id: String,
    version: i64,
    event_type: String,
    schema_version: i64,
    payload: String,
    seq: i64,
}

/// The original results when every id of `appends` is stored already as the same events in
/// the same order; `None` when no id is stored.
///
/// # Errors
/// [`Error::IdempotencyConflict`] when only some ids are stored, or stored with other
/// content or in another order.
pub(crate) async fn stored_results(
    shared: &Shared,
    tx: &mut Transaction<'_, Sqlite>,
    appends: &[StreamAppend],
) -> annals::Result<Option<Vec<AppendResult>>> {
    let ids: Vec<Uuid> = appends
        .iter()
        .flat_map(|a| &a.events)
        .map(|e| e.event_id)
        .collect();
    let mut found = HashMap::new();
    for chunk in ids.chunks(ID_CHUNK) {
        let mut query = sqlx::query(FIND_IDS.as_str());
        for id in chunk.iter().cycle().take(ID_CHUNK) {
            query = query.bind(*id);
        }
        let rows = query
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| shared.backend(e))?;
        for row in rows {
            let decoded = (|| {
                let id: Uuid = row.try_get(0)?;
                let stored = Stored {
                    stream_id: row.try_get(1)?,
                    version: row.try_get(2)?,
                    event_type: row.try_get(3)?,
                    schema_version: row.try_get(4)?,
                    payload: row.try_get(5)?,
                    seq: row.try_get(6)?,
                };
                Ok::<_, sqlx::Error>((id, stored))
            })();
            let (id, stored) = decoded.map_err(|e| shared.backend(e))?;
            found.insert(id, stored);
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    if found.len() < ids.len() {
        // Some ids stored, some not: not a retry of one earlier append.
        let event_id = ids
            .iter()
            .find(|id| found.contains_key(id))
            .copied()
            .unwrap_or_default();
        return Err(Error::IdempotencyConflict { event_id });
    }
    let mut results = Vec::with_capacity(appends.len());
    for append in appends {
        let mut first: Option<&Stored> = None;
        let mut previous: Option<&Stored> = None;
        for event in &append.events {
            let conflict = Error::IdempotencyConflict {
                event_id: event.event_id,
            };
            let Some(stored) = found.get(&event.event_id) else {
                return Err(conflict);
            };
            let in_order = previous.is_none_or(|p| p.version + 1 == stored.version);
            let same = stored.stream_id == append.stream.as_str()
                && stored.event_type == event.event_type.as_str()
                && stored.schema_version == i64::from(event.schema_version)
                && stored.payload == event.payload.as_str();
            if !in_order || !same {
                return Err(conflict);
            }
            first.get_or_insert(stored);
            previous = Some(stored);
        }
        let (Some(first), Some(last)) = (first, previous) else {
            return Err(Error::InvalidAppend {
                reason: "an append to a stream needs at least one event",
            });
        };
        results.push(AppendResult {
            stream_version: u64::try_from(last.version).unwrap_or_default(),
            first_position: serial(first.seq),
            last_position: serial(last.seq),
        });
    }
    Ok(Some(results))
}

fn serial(seq: i64) -> LogPosition {
    LogPosition::serial(u64::try_from(seq).unwrap_or_default())
}
