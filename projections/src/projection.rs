//! What a projection is: a name, the event types it wants, and how an event changes its
//! read model.

use std::{collections::BTreeSet, fmt, sync::Arc};

use annals::{BoxError, DomainEvent, RecordedEvent};

use crate::{Error, ReadModel, Result};

/// A projection: turns the global log into one read model.
///
/// The runner feeds it every event of the types its [`filter`](Projection::filter) accepts,
/// in log order, one call per event, into a batch that the read model then commits together
/// with the checkpoint. A handler does no I/O of its own: everything it writes goes into
/// the batch (`RedisBatch` commands, `TantivyBatch` upserts), so a batch either lands whole
/// with its checkpoint or not at all.
///
/// Decoding is the handler's choice: [`DomainEvent::decode`] gives typed, upcast events.
/// A returned error (or a panic) is a failing event, handled by the projection's
/// [`FailurePolicy`](crate::FailurePolicy); whatever the handler put into the batch for
/// that event is discarded first.
pub trait Projection: Send + Sync + 'static {
    /// The read model this projection writes.
    type Model: ReadModel;

    /// The projection's name: ASCII letters, digits, `_`, `-` and `.`, at most 100 bytes.
    /// It names the Redis keys, the tantivy directory, the lease and the status.
    fn name(&self) -> &str;

    /// The event types this projection wants. Other events are not handed to it, but its
    /// checkpoint still moves past them.
    fn filter(&self) -> EventFilter {
        EventFilter::All
    }

    /// Adds what `event` changes to `batch`.
    ///
    /// # Errors
    /// Any error the application chooses (a decode error, an unknown type, a broken
    /// invariant); the failure policy decides what happens next.
    fn handle(
        &self,
        event: &RecordedEvent,
        batch: &mut <Self::Model as ReadModel>::Batch,
    ) -> Result<(), BoxError>;
}

/// Which event types a projection wants.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum EventFilter {
    /// Every event.
    #[default]
    All,
    /// Only these type names.
    Types(BTreeSet<String>),
    /// Whatever the predicate accepts.
    Custom(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl EventFilter {
    /// Only the given type names.
    pub fn types<I, T>(types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::Types(types.into_iter().map(Into::into).collect())
    }

    /// Every stored type of one [`DomainEvent`] family.
    pub fn domain<E: DomainEvent>() -> Self {
        Self::types(E::upcaster_chain().event_types().map(str::to_owned))
    }

    /// Whatever `predicate` accepts.
    pub fn custom(predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(predicate))
    }

    /// Whether the filter lets an event of `event_type` through.
    pub fn wants(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Types(types) => types.contains(event_type),
            Self::Custom(predicate) => predicate(event_type),
        }
    }
}

impl fmt::Debug for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("All"),
            Self::Types(types) => f.debug_tuple("Types").field(types).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Checks a projection name: non-empty, at most 100 bytes, ASCII letters, digits, `_`, `-`,
/// `.` only (so it is safe inside a Redis hash tag, a key pattern and a directory name).
///
/// # Errors
/// [`Error::InvalidName`] naming the broken rule.
pub fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 100 {
        Some("it is longer than 100 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        Some("only ASCII letters, digits, '_', '-' and '.' are allowed")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("balances_v2.eu-1").is_ok());
        for bad in ["", "a{b}", "a b", "a*", ".hidden", &"x".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn filters_select_types() {
        let f = EventFilter::types(["A", "B"]);
        assert!(f.wants("A") && !f.wants("C"));
        assert!(EventFilter::All.wants("anything"));
        assert!(EventFilter::custom(|t| t.starts_with("Acc")).wants("Account"));
    }
}
