//! Conversions both backends share: numbers to and from SQL integers, positions, letters.

use annals::LogPosition;
use annals_projections::{DeadLetter, Error, Result};

/// A stored number as `u64`.
pub(crate) fn from_i64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::Corrupt {
        what: format!("{what} {value}"),
    })
}

/// A number for an SQL `bigint`.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Corrupt {
        what: format!("{what} {value} does not fit in a bigint"),
    })
}

/// A stored checkpoint (`commit`, `sequence`, both or neither).
pub(crate) fn position(commit: Option<i64>, sequence: Option<i64>) -> Result<Option<LogPosition>> {
    match (commit, sequence) {
        (Some(c), Some(s)) => Ok(Some(LogPosition::new(
            from_i64(c, "checkpoint")?,
            from_i64(s, "checkpoint")?,
        ))),
        (None, None) => Ok(None),
        other => Err(Error::Corrupt {
            what: format!("checkpoint {other:?}"),
        }),
    }
}

/// A checkpoint as two nullable integers.
pub(crate) fn split(position: Option<LogPosition>) -> Result<(Option<i64>, Option<i64>)> {
    Ok(match position {
        Some(p) => (
            Some(to_i64(p.commit, "checkpoint")?),
            Some(to_i64(p.sequence, "checkpoint")?),
        ),
        None => (None, None),
    })
}

/// A stored dead letter.
pub(crate) fn letter_from_json(text: &str) -> Result<DeadLetter> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt {
        what: format!("dead letter {text:?}: {e}"),
    })
}
