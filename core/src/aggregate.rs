//! Aggregates: state rebuilt from events, deciding which events a command causes.

use serde::{Serialize, de::DeserializeOwned};

use crate::DomainEvent;

/// When the [`Repository`](crate::Repository) saves a snapshot of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotPolicy {
    /// Never: the aggregate is always rebuilt from all its events. The
    /// [`Repository`](crate::Repository) then does not even look for a snapshot (a load is one
    /// read of the stream): a snapshot saved by hand or under an earlier policy is ignored,
    /// which is correct, since a snapshot is only a cache of the events.
    Never,
    /// Whenever an append crosses a multiple of this many events (100: after version 100,
    /// 200, ...).
    EveryNEvents(u64),
}

impl SnapshotPolicy {
    /// Whether the aggregate keeps snapshots at all: false for [`SnapshotPolicy::Never`]
    /// (and `EveryNEvents(0)`), whose loads then never look for one.
    pub fn keeps_snapshots(self) -> bool {
        !matches!(self, Self::Never | Self::EveryNEvents(0))
    }

    /// Whether moving a stream from version `before` to `after` calls for a snapshot.
    pub fn due(self, before: u64, after: u64) -> bool {
        match self {
            Self::Never => false,
            Self::EveryNEvents(0) => false,
            Self::EveryNEvents(n) => before / n != after / n,
        }
    }
}

/// A consistency boundary: state built only from its own events, and the rules that turn a
/// command into new events.
///
/// `apply` is pure, synchronous and infallible: it is run on every load, over events that
/// were valid when they were stored. `handle` decides; it does no I/O either.
/// `#[derive(Aggregate)]` (feature `derive`) writes the constants and types from attributes.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate's type name; an instance's stream id is `"{TYPE}-{id}"`.
    const TYPE: &'static str;

    /// The schema version of the serialized state. A snapshot of another version is ignored
    /// and the aggregate is rebuilt from its events, so bump it (or let the derive compute it
    /// from the state's fields) whenever the state's shape changes.
    const SNAPSHOT_VERSION: u32 = 1;

    /// When to save snapshots.
    const SNAPSHOT_POLICY: SnapshotPolicy = SnapshotPolicy::Never;

    /// The events this aggregate records.
    type Event: DomainEvent;

    /// The commands it handles.
    type Command: Send;

    /// Why it rejects a command (the domain's own error).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events a command causes, given the current state.
    ///
    /// # Errors
    /// The domain's rejection of the command; nothing is appended.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event.
    fn apply(&mut self, event: &Self::Event);
}

#[cfg(test)]
mod tests {
    use super::SnapshotPolicy;

    #[test]
    fn snapshot_policy_fires_on_crossing_a_multiple() {
        let p = SnapshotPolicy::EveryNEvents(100);
        assert!(!p.due(0, 99));
        assert!(p.due(99, 100));
        assert!(p.due(98, 205));
        assert!(!p.due(100, 150));
        assert!(!SnapshotPolicy::Never.due(0, 1000));
        assert!(!SnapshotPolicy::EveryNEvents(0).due(0, 1000));
        assert!(p.keeps_snapshots());
        assert!(!SnapshotPolicy::Never.keeps_snapshots());
        assert!(!SnapshotPolicy::EveryNEvents(0).keeps_snapshots());
    }
}
