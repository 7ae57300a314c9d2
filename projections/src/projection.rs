//! What a projection is: a name, the events it wants, what it looks up, and how an event
//! changes its read model.

use std::{collections::BTreeSet, fmt, sync::Arc};

use annals::{Aggregate, BoxError, DomainEvent, RecordedEvent};

use crate::{Error, LookupKeys, ReadModel, Result};

/// A projection: turns the global log into one read model.
///
/// The runner feeds it every event its [`filter`](Projection::filter) accepts, in log order,
/// one call per event, into a batch that the read model then commits together with the
/// checkpoint. A handler does no I/O of its own: everything it writes goes into the batch
/// (`RedisBatch` commands, `TantivyBatch` upserts, `MemoryBatch` puts), so a batch either lands
/// whole with its checkpoint or not at all. What it needs to read back (an account's owner
/// for its later transactions) it keeps as [`Lookups`](crate::Lookups): declared per event
/// in [`lookups`](Projection::lookups), loaded for the whole batch in one round trip before
/// `handle` runs, and read and set through `batch.lookups()` / `batch.lookups_mut()`.
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

    /// The events this projection wants (by stream category and type). Other events are not
    /// handed to it, but its checkpoint still moves past them.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// Declares the lookup keys handling `event` will read (none by default). The runner
    /// loads the keys of a whole batch before calling [`handle`](Projection::handle) on
    /// any of its events. Called only for events the filter accepts.
    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        let _ = (event, keys);
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

/// Which events a projection (or any log follower) wants: by stream category (the part of
/// the stream id before the first `-`, the aggregate type of
/// [`StreamId::for_aggregate`](annals::StreamId::for_aggregate)), by type name, and by any
/// predicate; an event must pass every part that is set.
///
/// Type names alone are not enough to tell aggregates apart (two aggregates may both have a
/// `Created` event); [`EventFilter::aggregate`] selects by both.
#[derive(Clone, Default)]
pub struct EventFilter {
    categories: Option<BTreeSet<String>>,
    types: Option<BTreeSet<String>>,
    custom: Option<Predicate>,
}

/// The names of `new` that `old` allows (all of them when `old` sets no bound).
fn narrow<I, T>(old: Option<BTreeSet<String>>, new: I) -> BTreeSet<String>
where
    I: IntoIterator<Item = T>,
    T: Into<String>,
{
    let new = new.into_iter().map(Into::into);
    match old {
        None => new.collect(),
        Some(old) => new.filter(|n| old.contains(n)).collect(),
    }
}

/// A filter's own test of an event.
type Predicate = Arc<dyn Fn(&RecordedEvent) -> bool + Send + Sync>;

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the given type names, from any stream.
    pub fn types<I, T>(types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::all().and_types(types)
    }

    /// Only events of streams in these categories (`"account"` for `account-42`).
    pub fn categories<I, T>(categories: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::all().and_categories(categories)
    }

    /// Every stored type of one [`DomainEvent`] family, from any stream.
    pub fn domain<E: DomainEvent>() -> Self {
        Self::types(E::upcaster_chain().event_types().map(str::to_owned))
    }

    /// The events of one aggregate type: its streams' category and its event types.
    pub fn aggregate<A: Aggregate>() -> Self {
        Self::domain::<A::Event>().and_categories([A::TYPE])
    }

    /// Whatever `predicate` accepts.
    pub fn custom(predicate: impl Fn(&RecordedEvent) -> bool + Send + Sync + 'static) -> Self {
        Self::all().and(predicate)
    }

    /// Narrows the filter to these type names: an event must have one of them, and pass what
    /// the filter asked before (`aggregate::<Order>().and_types(["Placed"])` is the order's
    /// `Placed` events only).
    #[must_use]
    pub fn and_types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.types = Some(narrow(self.types.take(), types));
        self
    }

    /// Narrows the filter to these stream categories: an event's stream must be in one of
    /// them, and pass what the filter asked before.
    #[must_use]
    pub fn and_categories<I, T>(mut self, categories: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.categories = Some(narrow(self.categories.take(), categories));
        self
    }

    /// Narrows the filter by a predicate (replacing any set before).
    #[must_use]
    pub fn and(
        mut self,
        predicate: impl Fn(&RecordedEvent) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.custom = Some(Arc::new(predicate));
        self
    }

    /// Either filter: an event passes when `self` or `other` lets it through (a saga that
    /// wants some types of one aggregate and others of another).
    #[must_use]
    pub fn or(self, other: EventFilter) -> Self {
        Self::custom(move |event| self.wants(event) || other.wants(event))
    }

    /// Whether the filter lets `event` through.
    pub fn wants(&self, event: &RecordedEvent) -> bool {
        self.categories
            .as_ref()
            .is_none_or(|c| c.contains(event.stream_id.category()))
            && self
                .types
                .as_ref()
                .is_none_or(|t| t.contains(event.event_type.as_str()))
            && self.custom.as_ref().is_none_or(|p| p(event))
    }
}

impl fmt::Debug for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventFilter")
            .field("categories", &self.categories)
            .field("types", &self.types)
            .field("custom", &self.custom.as_ref().map(|_| ".."))
            .finish()
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

    fn event(stream: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            position: annals::LogPosition::serial(1),
            stream_id: annals::StreamId::new(stream).unwrap(),
            stream_version: 1,
            event_id: uuid::Uuid::nil(),
            event_type: annals::EventType::new(event_type).unwrap(),
            schema_version: 1,
            payload: annals::Payload::from_stored("{}".to_owned()),
            metadata: annals::Metadata::default(),
            recorded_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn filters_select_categories_and_types() {
        let f = EventFilter::types(["A", "B"]);
        assert!(f.wants(&event("x-1", "A")) && !f.wants(&event("x-1", "C")));
        assert!(EventFilter::all().wants(&event("x", "anything")));
        assert!(
            EventFilter::custom(|e| e.event_type.as_str().starts_with("Acc"))
                .wants(&event("x", "Account"))
        );
        // Same type name, two aggregates: only the order's stream gets through.
        let orders = EventFilter::types(["Created"]).and_categories(["order"]);
        assert!(orders.wants(&event("order-7", "Created")));
        assert!(!orders.wants(&event("payment-7", "Created")));
        assert!(!orders.wants(&event("order-7", "Paid")));
        assert!(EventFilter::categories(["order"]).wants(&event("order", "Paid")));
        // Narrowing never widens: types after types keep only the common ones.
        let placed = EventFilter::types(["Placed", "Paid"]).and_types(["Placed", "Shipped"]);
        assert!(placed.wants(&event("order-1", "Placed")));
        assert!(!placed.wants(&event("order-1", "Paid")));
        assert!(!placed.wants(&event("order-1", "Shipped")));
        let only = EventFilter::categories(["order", "payment"]).and_categories(["order"]);
        assert!(only.wants(&event("order-1", "X")) && !only.wants(&event("payment-1", "X")));
    }
}
