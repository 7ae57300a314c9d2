//! The newest version of each stream this store has read from `events` or written there
//! itself, so that an append expecting one of those versions needs no read to check it.
//!
//! A stream's version is its newest event's (migrations/0007_versions_from_events.sql).
//! Stored events are never updated or deleted, so a version seen once exists for ever: an
//! append of `Exact(n)`, with `n` at most the version seen, either continues the stream (`n`
//! is still the newest) or writes a version that is taken, which the key on
//! `(stream_id, stream_version)` refuses, and the writers answer with the conflict. A version
//! never seen (a guess, or one from another store) is read and checked as before: writing
//! after a version the stream has not reached would leave a gap.
//!
//! Only events read or written through this store count; a snapshot's version does not (a
//! snapshot is written by the application and may name anything).
//!
//! The memory is forgotten whenever the store opens a connection, and when it drops or
//! migrates its schema: a server failed over to a standby that had not received the last
//! commits, or a schema made anew, may lack versions seen before. What a statement begun
//! before that saw is not recorded after it (each record names the [`Seen::epoch`] its
//! statement began in).
//!
//! It also remembers the streams whose version a one-statement append read too early: the
//! statement's snapshot is taken before its lock is granted, so when another append to the
//! stream held the lock, the version read misses that append's events, and the key refuses
//! the write. Appends to such a contended stream then take `append_stream`, which reads the
//! version in a statement of its own once the lock is held (see `single.rs`).

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use annals::{ExpectedVersion, StreamAppend};

/// How many streams are remembered; past that the memory starts over (an append to a
/// forgotten stream only reads its version, as every append did before).
const CAPACITY: usize = 1 << 16;

/// Streams' newest versions seen in `events`, and which streams are contended.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    streams: Mutex<HashMap<Box<str>, Entry>>,
    /// Moves on, under the lock, each time the memory is forgotten.
    epoch: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// The newest version seen (0: none).
    version: u64,
    /// A one-statement append to it read its version before another append committed.
    contended: bool,
}

/// How an append's expected version is to be checked, from one look at the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// `Exact(n)` with `n` seen: no read.
    Seen,
    /// Read the version (in the same statement as the write).
    Read,
    /// Read the version in a statement of its own, after the stream's lock: the stream is
    /// contended.
    ReadAfterLock,
}

/// Changes `stream`'s entry in `streams` by `change`, made if needed (the memory starts over
/// when full). A stream already remembered (every load and append after its first) costs one
/// lookup and no allocation of its name.
fn update(streams: &mut HashMap<Box<str>, Entry>, stream: &str, change: impl FnOnce(&mut Entry)) {
    if let Some(entry) = streams.get_mut(stream) {
        return change(entry);
    }
    if streams.len() >= CAPACITY {
        streams.clear();
    }
    change(streams.entry(stream.into()).or_default());
}

impl Seen {
    fn entry(&self, stream: &str) -> Option<Entry> {
        self.streams
            .lock()
            .ok()
            .and_then(|streams| streams.get(stream).copied())
    }

    /// The memory's epoch now: take it before the statement whose answer is recorded.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Forgets every stream (a new connection, a schema dropped or migrated).
    pub(crate) fn forget_all(&self) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.clear();
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Records that `stream` has an event at `version`, as a statement begun in epoch
    /// `since` read or wrote it: nothing if the memory was forgotten since.
    pub(crate) fn record(&self, stream: &str, version: u64, since: u64) {
        if version == 0 {
            return;
        }
        if let Ok(mut streams) = self.streams.lock()
            && self.epoch.load(Ordering::Acquire) == since
        {
            update(&mut streams, stream, |entry| {
                entry.version = entry.version.max(version)
            });
        }
    }

    /// How `append`'s expected version is to be checked.
    pub(crate) fn check(&self, append: &StreamAppend) -> Check {
        let entry = self.entry(append.stream.as_str()).unwrap_or_default();
        match append.expected {
            ExpectedVersion::Exact(n) if n > 0 && entry.version >= n => Check::Seen,
            _ if entry.contended => Check::ReadAfterLock,
            _ => Check::Read,
        }
    }

    /// Records that an append to `stream` read its version too early.
    pub(crate) fn contend(&self, stream: &str) {
        if let Ok(mut streams) = self.streams.lock() {
            update(&mut streams, stream, |entry| entry.contended = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use annals::{ExpectedVersion, StreamAppend, StreamId};
    use proptest::prelude::*;

    use super::{Check, Seen};

    fn check(seen: &Seen, stream: &str, expected: ExpectedVersion) -> Check {
        let stream = StreamId::new(stream).expect("a stream id");
        seen.check(&StreamAppend::new(stream, expected, Vec::new()))
    }

    /// Whether `Exact(version)` on `stream` needs no read.
    fn reached(seen: &Seen, stream: &str, version: u64) -> bool {
        check(seen, stream, ExpectedVersion::Exact(version)) == Check::Seen
    }

    /// Whether a read of `stream`'s version waits for its lock.
    fn contended(seen: &Seen, stream: &str) -> bool {
        check(seen, stream, ExpectedVersion::Any) == Check::ReadAfterLock
    }

    proptest! {
        /// A version is reached exactly when some recorded version of its stream is at least
        /// it: recording never forgets a higher version for a lower one, and never claims a
        /// version of another stream or above everything recorded.
        #[test]
        fn reached_means_recorded_at_or_above(
            records in proptest::collection::vec((0u8..4, 0u64..20), 0..40),
            stream in 0u8..4,
            version in 0u64..22,
        ) {
            let seen = Seen::default();
            for (s, v) in &records {
                seen.record(&format!("s{s}"), *v, 0);
            }
            let highest = records.iter().filter(|(s, _)| *s == stream).map(|(_, v)| *v).max();
            let expected = version > 0 && highest.is_some_and(|h| h >= version);
            prop_assert_eq!(reached(&seen, &format!("s{stream}"), version), expected);
        }
    }

    #[test]
    fn a_full_memory_starts_over_rather_than_growing() {
        let seen = Seen::default();
        for n in 0..super::CAPACITY {
            seen.record(&format!("s{n}"), 1, 0);
        }
        assert!(reached(&seen, "s0", 1));
        // A stream already remembered moves on without clearing the others.
        seen.record("s0", 2, 0);
        assert!(reached(&seen, "s0", 2) && reached(&seen, "s1", 1));
        seen.contend("one-more");
        assert!(!reached(&seen, "s0", 1), "the memory was not cleared");
        assert!(contended(&seen, "one-more"));
        assert!(!reached(&seen, "one-more", 1), "contended is not seen");
        seen.record("one-more", 3, 0);
        assert!(reached(&seen, "one-more", 3) && contended(&seen, "one-more"));
    }

    #[test]
    fn what_a_statement_saw_before_the_memory_was_forgotten_is_not_recorded() {
        let seen = Seen::default();
        let before = seen.epoch();
        seen.record("s", 3, before);
        assert!(reached(&seen, "s", 3));
        seen.forget_all();
        assert!(!reached(&seen, "s", 1), "forgotten");
        seen.record("s", 5, before);
        assert!(
            !reached(&seen, "s", 1),
            "recorded from a statement begun before"
        );
        seen.record("s", 2, seen.epoch());
        assert!(reached(&seen, "s", 2) && !reached(&seen, "s", 3));
    }
}
