//! What the engine runs: anything that follows the log into a read model's batches.
//!
//! Projections, reactors (and publishers) are all consumers: a name, a filter, lookups to
//! load, and an asynchronous handler that fills the batch committed with the checkpoint.
//! The engine (supervisor, workers, leases, failure policy, status) knows only this trait.

use std::future::Future;

use annals::{BoxError, RecordedEvent};

use crate::{EventFilter, LookupKeys, Projection, ReadModel, resilience::Dependency};

/// A log follower the engine can run.
pub(crate) trait Consumer: Send + Sync + 'static {
    /// Where its batches and checkpoint are committed.
    type Model: ReadModel;

    /// Its name (lease, status, read-model keys).
    fn name(&self) -> &str;

    /// The events it wants.
    fn filter(&self) -> EventFilter;

    /// The lookup keys handling `event` will read.
    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys);

    /// Handles one event into `batch`.
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        batch: &'a mut <Self::Model as ReadModel>::Batch,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'a;

    /// False when a build of its model is only a catch-up (a reactor's "model" is its
    /// checkpoint): its status then says catching up, not rebuilding.
    fn builds_models(&self) -> bool {
        true
    }

    /// True when its handler never touches the batch (a reactor: its effects are commands),
    /// so events of different streams may be handled at once.
    fn detached(&self) -> bool {
        false
    }

    /// The outside dependencies it calls, shown in its status.
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }
}

/// A [`Projection`] as a consumer: its synchronous handler, ready at once.
pub(crate) struct Projected<P>(pub(crate) P);

impl<P: Projection> Consumer for Projected<P> {
    type Model = P::Model;

    fn name(&self) -> &str {
        self.0.name()
    }

    fn filter(&self) -> EventFilter {
        self.0.filter()
    }

    fn lookups(&self, event: &RecordedEvent, keys: &mut LookupKeys) {
        self.0.lookups(event, keys);
    }

    // An `async fn`, not a ready future: the handler must run when the future is polled,
    // inside the engine's panic guard, not when the future is made.
    async fn handle(
        &self,
        event: &RecordedEvent,
        batch: &mut <Self::Model as ReadModel>::Batch,
    ) -> Result<(), BoxError> {
        self.0.handle(event, batch)
    }
}
