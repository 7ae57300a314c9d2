//! Stream versions, expected versions and positions in the global log.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the caller believes about a stream's version when appending to it.
///
/// Stream versions count events: the first event of a stream has version 1, so a stream that
/// does not exist has version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must exist (version 1 or more).
    StreamExists,
    /// The stream must be exactly at this version; `Exact(0)` means the same as `NoStream`.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at version `actual` satisfies this expectation.
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::StreamExists => actual > 0,
            Self::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// A position in the global log, the order in which subscribers see every event.
///
/// Positions are ordered by `(commit, sequence)`. `commit` orders transactions: in the
/// PostgreSQL store it is the appending transaction's id, which is what makes the log gap-free
/// for readers; in stores that commit serially it equals `sequence`. `sequence` is unique per
/// event. A reader's checkpoint is the position of the last event it has seen, and reads
/// resume strictly after it; [`LogPosition::START`] is before every event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct LogPosition {
    /// Orders transactions (the PostgreSQL transaction id, or the sequence number).
    pub commit: u64,
    /// Unique, increasing number of the event.
    pub sequence: u64,
}

impl LogPosition {
    /// Before the first event: reading after it reads the whole log.
    pub const START: Self = Self {
        commit: 0,
        sequence: 0,
    };

    /// A position from its two parts.
    pub const fn new(commit: u64, sequence: u64) -> Self {
        Self { commit, sequence }
    }

    /// The position of an event in a store that commits serially, where `commit == sequence`.
    pub const fn serial(sequence: u64) -> Self {
        Self {
            commit: sequence,
            sequence,
        }
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.commit == self.sequence {
            write!(f, "position {}", self.sequence)
        } else {
            write!(f, "position {} (commit {})", self.sequence, self.commit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_rules() {
        assert!(ExpectedVersion::Any.accepts(0) && ExpectedVersion::Any.accepts(7));
        assert!(ExpectedVersion::NoStream.accepts(0) && !ExpectedVersion::NoStream.accepts(1));
        assert!(!ExpectedVersion::StreamExists.accepts(0));
        assert!(ExpectedVersion::StreamExists.accepts(3));
        assert!(ExpectedVersion::Exact(0).accepts(0) && !ExpectedVersion::Exact(2).accepts(3));
    }

    #[test]
    fn positions_order_by_commit_first() {
        assert!(LogPosition::new(5, 100) < LogPosition::new(6, 1));
        assert!(LogPosition::START < LogPosition::serial(1));
    }
}
