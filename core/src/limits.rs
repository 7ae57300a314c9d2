//! Size limits and the checks every store makes before any I/O.

use std::collections::HashSet;

use crate::{Error, Result, StreamAppend};

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
        let mut streams = HashSet::with_capacity(appends.len());
        let mut ids = HashSet::with_capacity(total);
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
                if !ids.insert(event.event_id) {
                    return Err(Error::InvalidAppend {
                        reason: "the same event id appears twice in one append call",
                    });
                }
                let metadata = if event.metadata.is_empty() {
                    2
                } else {
                    event.metadata.json_len()?
                };
                let size = event.payload.len() + metadata;
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
