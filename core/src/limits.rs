//! Size limits and the checks every store makes before any I/O.

use std::collections::HashSet;

use crate::{Error, NewEvent, Result, StreamAppend};

/// Empty metadata as stored: its size counts toward an event's.
const EMPTY_METADATA: &str = "{}";

/// Limits a store enforces on appends, before it sends anything to its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload plus metadata of one event, in bytes (default 1 MiB).
    pub max_event_bytes: usize,
    /// The most events one append call may carry, over all its streams (default 100,000).
    pub max_events_per_append: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1024 * 1024,
            max_events_per_append: 100_000,
        }
    }
}

impl Limits {
    /// Sets the largest event size in bytes.
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Sets the most events per append call.
    pub fn with_max_events_per_append(mut self, events: usize) -> Self {
        self.max_events_per_append = events;
        self
    }

    /// Checks a (multi-stream) append against the contract and these limits.
    ///
    /// Stores call this first, so a bad append fails the same way everywhere and writes
    /// nothing.
    ///
    /// # Errors
    /// [`Error::InvalidAppend`] for no streams, a stream with no events, a stream named twice,
    /// an event id used twice or too many events; [`Error::PayloadTooLarge`] for an event over
    /// the size limit; [`Error::Encode`] if metadata cannot be encoded.
    pub fn check(&self, appends: &[StreamAppend]) -> Result<()> {
        self.check_sized(appends, |event| {
            if event.metadata.is_empty() {
                Ok(EMPTY_METADATA.len())
            } else {
                event.metadata.json_len()
            }
        })
    }

    /// [`check`](Self::check), for a store that writes the events' metadata as JSON text:
    /// each event's metadata is encoded once, measured by that text, and returned, in order
    /// over all streams (`None` for empty metadata, which counts as `{}`). A call refused by
    /// a check that comes before the sizes (no streams, too many events) encodes nothing.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_and_encode_metadata(
        &self,
        appends: &[StreamAppend],
    ) -> Result<Vec<Option<String>>> {
        let mut encoded = Vec::new();
        self.check_sized(appends, |event| {
            let json = if event.metadata.is_empty() {
                None
            } else {
                Some(event.metadata.to_json()?)
            };
            let len = json.as_ref().map_or(EMPTY_METADATA.len(), String::len);
            encoded.push(json);
            Ok(len)
        })?;
        Ok(encoded)
    }

    /// The checks, with `metadata_len(event)` the size of an event's metadata as stored.
    fn check_sized(
        &self,
        appends: &[StreamAppend],
        mut metadata_len: impl FnMut(&NewEvent) -> Result<usize>,
    ) -> Result<()> {
        if appends.is_empty() {
            return Err(Error::InvalidAppend {
                reason: "an append needs at least one stream",
            });
        }
        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        if total > self.max_events_per_append {
            return Err(Error::InvalidAppend {
                reason: "too many events in one append call",
            });
        }
        let mut streams = Distinct::for_len(appends.len());
        let mut ids = Distinct::for_len(total);
        for append in appends {
            if append.events.is_empty() {
                return Err(Error::InvalidAppend {
                    reason: "an append to a stream needs at least one event",
                });
            }
            if !streams.insert(&append.stream) {
                return Err(Error::InvalidAppend {
                    reason: "the same stream appears twice in one append call",
                });
            }
            for event in &append.events {
                if !ids.insert(&event.event_id) {
                    return Err(Error::InvalidAppend {
                        reason: "the same event id appears twice in one append call",
                    });
                }
                let size = event.payload.len() + metadata_len(event)?;
                if size > self.max_event_bytes {
                    return Err(Error::PayloadTooLarge {
                        event_id: event.event_id,
                        size,
                        limit: self.max_event_bytes,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Tells repeated items apart among at most the number given, cheaply for the few items of a
/// usual append: nothing to check for one, a scan of a short list for up to 16, a hash set
/// beyond (the append path runs this for every command).
enum Distinct<'a, T> {
    One,
    Few(Vec<&'a T>),
    Many(HashSet<&'a T>),
}

impl<'a, T: Eq + std::hash::Hash> Distinct<'a, T> {
    fn for_len(len: usize) -> Self {
        match len {
            0 | 1 => Self::One,
            2..=16 => Self::Few(Vec::with_capacity(len)),
            _ => Self::Many(HashSet::with_capacity(len)),
        }
    }

    /// False if `item` was inserted before. `One` holds at most one item, so it never
    /// repeats.
    fn insert(&mut self, item: &'a T) -> bool {
        match self {
            Self::One => true,
            Self::Few(items) => {
                if items.contains(&item) {
                    false
                } else {
                    items.push(item);
                    true
                }
            }
            Self::Many(items) => items.insert(item),
        }
    }
}
