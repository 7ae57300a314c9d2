//! One group commit as `append_group` sees it: the calls flattened into bound arrays,
//! and the function's answer split back into one outcome per call.

use annals::{AppendResult, Error, LogPosition};
use uuid::Uuid;

use crate::{
    error::{Failure, internal},
    writer::{Outcome, Request, WriterContext},
};

/// The group as the arrays `append_group` takes (and, but for `req`, the group statement of
/// `batch.rs`): per stream append, then per event.
#[derive(Default)]
pub(crate) struct Arrays<'a> {
    req: Vec<i32>,
    pub(crate) stream: Vec<&'a str>,
    pub(crate) expected: Vec<i64>,
    pub(crate) count: Vec<i32>,
    /// Per event: its stream append, 1-based.
    pub(crate) event_k: Vec<i32>,
    /// Per event: its place in that append, 1-based.
    pub(crate) event_pos: Vec<i32>,
    pub(crate) event_id: Vec<Uuid>,
    pub(crate) event_type: Vec<&'a str>,
    pub(crate) schema_version: Vec<i32>,
    pub(crate) payload: Vec<&'a str>,
    pub(crate) metadata: Vec<Option<&'a str>>,
}

fn expected_code(expected: annals::ExpectedVersion) -> i64 {
    match expected {
        annals::ExpectedVersion::Any => -1,
        annals::ExpectedVersion::StreamExists => -2,
        annals::ExpectedVersion::NoStream => 0,
        annals::ExpectedVersion::Exact(v) => i64::try_from(v).unwrap_or(i64::MAX),
    }
}

fn to_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub(crate) fn arrays(group: &[Request]) -> Arrays<'_> {
    let mut a = Arrays::default();
    let mut k = 0usize;
    for (r, request) in group.iter().enumerate() {
        let mut metadata = request.metadata.iter();
        for append in &request.appends {
            k += 1;
            a.req.push(to_i32(r + 1));
            a.stream.push(append.stream.as_str());
            a.expected.push(expected_code(append.expected));
            a.count.push(to_i32(append.events.len()));
            for (pos, event) in append.events.iter().enumerate() {
                a.event_k.push(to_i32(k));
                a.event_pos.push(to_i32(pos + 1));
                a.event_id.push(event.event_id);
                a.event_type.push(event.event_type.as_str());
                a.schema_version
                    .push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
                a.payload.push(event.payload.as_str());
                a.metadata.push(metadata.next().and_then(|m| m.as_deref()));
            }
        }
    }
    a
}

/// What `append_group` returned.
pub(crate) struct GroupResult {
    pub(crate) status: Vec<i16>,
    pub(crate) version: Vec<i64>,
    pub(crate) seq: Vec<i64>,
    pub(crate) tx: i64,
}

const APPEND_GROUP: &str = "SELECT o_status, o_version, o_seq, o_tx FROM append_group(\
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

pub(crate) async fn call(
    a: &Arrays<'_>,
    check_dups: bool,
    context: &WriterContext,
) -> Result<GroupResult, Failure> {
    let (delay, fail) = (context.hooks.delay(), context.hooks.fail());
    let (status, version, seq, tx): (Vec<i16>, Vec<i64>, Vec<i64>, i64) = context
        .db
        .append(async |c| {
            sqlx::query_as(APPEND_GROUP)
                .bind(&a.req)
                .bind(&a.stream)
                .bind(&a.expected)
                .bind(&a.count)
                .bind(&a.event_k)
                .bind(&a.event_pos)
                .bind(&a.event_id)
                .bind(&a.event_type)
                .bind(&a.schema_version)
                .bind(&a.payload)
                .bind(&a.metadata)
                .bind(check_dups)
                // Notifications are sent after the commit, by the notifier (see `notifier`).
                .bind(None::<&str>)
                .bind(delay)
                .bind(fail)
                .fetch_one(c)
                .await
        })
        .await?;
    Ok(GroupResult {
        status,
        version,
        seq,
        tx,
    })
}

pub(crate) fn reply_each(group: Vec<Request>, result: GroupResult, context: &WriterContext) {
    let mut k = 0usize;
    let mut seq = result.seq.iter();
    for request in group {
        let n = request.appends.len();
        let (Some(status), Some(version)) =
            (result.status.get(k..k + n), result.version.get(k..k + n))
        else {
            let _ = request
                .reply
                .send(Err(internal(false, "append_group returned too few rows")));
            continue;
        };
        k += n;
        let outcome = if status.contains(&2) {
            Ok(Outcome::Duplicate(request.appends))
        } else if let Some((append, actual)) = request
            .appends
            .iter()
            .zip(status.iter().zip(version))
            .find_map(|(a, (s, v))| (*s == 1).then_some((a, *v)))
        {
            // Read with the stream's lock held: its newest version, stored.
            context.db.seen.record(
                append.stream.as_str(),
                u64::try_from(actual).unwrap_or(0),
                request.epoch,
            );
            Err(Error::Conflict {
                stream: append.stream.clone(),
                expected: append.expected,
                actual: u64::try_from(actual).unwrap_or(0),
            })
        } else if status.iter().any(|s| *s != 0) {
            Err(internal(false, "append_group returned an unknown status"))
        } else {
            let mut results = Vec::with_capacity(n);
            let mut complete = true;
            for (append, version) in request.appends.iter().zip(version) {
                let positions: Vec<i64> = seq.by_ref().take(append.events.len()).copied().collect();
                let (Some(first), Some(last)) = (positions.first(), positions.last()) else {
                    complete = false;
                    break;
                };
                let stream_version = u64::try_from(*version).unwrap_or(0);
                context
                    .db
                    .seen
                    .record(append.stream.as_str(), stream_version, request.epoch);
                results.push(AppendResult {
                    stream_version,
                    first_position: position(result.tx, *first),
                    last_position: position(result.tx, *last),
                });
            }
            if !complete {
                Err(internal(false, "append_group returned too few positions"))
            } else if context.hooks.lose_result() {
                Err(internal(
                    true,
                    "the result of a committed append was lost (test hook)",
                ))
            } else {
                Ok(Outcome::Appended(results))
            }
        };
        // A caller that has gone no longer needs its answer; its call is committed anyway.
        let _ = request.reply.send(outcome);
    }
}

pub(crate) fn position(tx: i64, sequence: i64) -> LogPosition {
    LogPosition::new(
        u64::try_from(tx).unwrap_or(0),
        u64::try_from(sequence).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals::ExpectedVersion;

    #[test]
    fn expected_versions_encode() {
        assert_eq!(expected_code(ExpectedVersion::Any), -1);
        assert_eq!(expected_code(ExpectedVersion::StreamExists), -2);
        assert_eq!(expected_code(ExpectedVersion::NoStream), 0);
        assert_eq!(expected_code(ExpectedVersion::Exact(7)), 7);
        assert_eq!(expected_code(ExpectedVersion::Exact(u64::MAX)), i64::MAX);
    }
}
