//! Turning a stored row back into a [`RecordedEvent`], with as little work per row as it can.

use std::path::Path;

use annals::{EventType, LogPosition, Metadata, Payload, RecordedEvent, StreamId};
use sqlx::{Row as _, sqlite::SqliteRow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Error;

/// Decodes rows, reusing the last stream id and event type: consecutive events of one stream
/// or type share one allocation instead of validating and copying the name again.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    stream: Option<StreamId>,
    event_type: Option<EventType>,
}

fn corrupt(path: &Path, seq: i64, reason: &'static str) -> annals::Error {
    Error::CorruptRow {
        path: path.to_path_buf(),
        seq,
        reason,
    }
    .into()
}

fn driver(path: &Path, error: sqlx::Error) -> annals::Error {
    Error::from_sqlx(path, error).into()
}

impl Decoder {
    /// Decodes `seq, stream_version, event_id, event_type, schema_version, payload, metadata,
    /// recorded_at` and, when `stream` is `None`, `stream_id`.
    pub(crate) fn decode(
        &mut self,
        path: &Path,
        row: &SqliteRow,
        stream: Option<&StreamId>,
    ) -> annals::Result<RecordedEvent> {
        let seq: i64 = row.try_get(0).map_err(|e| driver(path, e))?;
        let get = |e| driver(path, e);
        let stream_version: i64 = row.try_get(1).map_err(get)?;
        let event_id: Uuid = row.try_get(2).map_err(get)?;
        let event_type: &str = row.try_get(3).map_err(get)?;
        let schema_version: i64 = row.try_get(4).map_err(get)?;
        let payload: String = row.try_get(5).map_err(get)?;
        let metadata: &str = row.try_get(6).map_err(get)?;
        let recorded_at: i64 = row.try_get(7).map_err(get)?;

        let stream_id = match stream {
            Some(stream) => stream.clone(),
            None => {
                let name: &str = row.try_get(8).map_err(get)?;
                match &self.stream {
                    Some(last) if last.as_str() == name => last.clone(),
                    _ => {
                        let id = StreamId::new(name)
                            .map_err(|_| corrupt(path, seq, "invalid stream id"))?;
                        self.stream = Some(id.clone());
                        id
                    }
                }
            }
        };
        let event_type = match &self.event_type {
            Some(last) if last.as_str() == event_type => last.clone(),
            _ => {
                let t = EventType::new(event_type)
                    .map_err(|_| corrupt(path, seq, "invalid event type"))?;
                self.event_type = Some(t.clone());
                t
            }
        };
        let metadata = Metadata::from_json(metadata)
            .map_err(|_| corrupt(path, seq, "metadata is not valid JSON"))?;
        let recorded_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(recorded_at))
            .map_err(|_| corrupt(path, seq, "recorded_at is out of range"))?;
        Ok(RecordedEvent {
            position: LogPosition::serial(
                u64::try_from(seq).map_err(|_| corrupt(path, seq, "negative position"))?,
            ),
            stream_id,
            stream_version: u64::try_from(stream_version)
                .map_err(|_| corrupt(path, seq, "negative stream version"))?,
            event_id,
            event_type,
            schema_version: u32::try_from(schema_version)
                .map_err(|_| corrupt(path, seq, "schema version out of range"))?,
            payload: Payload::from_stored(payload),
            metadata,
            recorded_at,
        })
    }
}
