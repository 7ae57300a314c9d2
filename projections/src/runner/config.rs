//! Settings of a runner and of each projection.

use std::time::Duration;

use crate::{Backoff, FailurePolicy, Generation, ProgressDisplay};

/// Settings of one projection in a runner.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// What to do with a failing event.
    pub policy: FailurePolicy,
    /// The most events handed to the read model in one write (catch-up and rebuild batches
    /// are this big; live batches are whatever has arrived, up to it).
    pub batch_size: usize,
    /// Events fetched per round trip while catching up.
    pub page_size: usize,
    /// How a rebuild shows its progress.
    pub progress: ProgressDisplay,
    /// What to do when the read model was built from another event store than the one it
    /// follows (the store was recreated), or its checkpoint lies beyond the store's end.
    pub on_store_change: StoreChange,
    /// How many events a reactor (or saga) handles at once: events of different streams, each
    /// stream's still one at a time and in log order (default 1). A slow call to the outside
    /// world then holds up only its own stream within a batch (the next batch starts when
    /// the slowest event of this one is done: bound slow calls with a
    /// [`Dependency`](crate::resilience::Dependency) timeout). Projections handle one event
    /// at a time whatever this says (their handlers are synchronous and cheap).
    pub concurrency: usize,
}

/// What a projection does when its read model belongs to another event store: the store was
/// recreated (a new SQLite file, a dropped schema) or the runner points at another one.
/// Following the new store from the old checkpoint would skip its events silently, so the
/// runner never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreChange {
    /// Fail the projection with [`Error::StoreMismatch`](crate::Error::StoreMismatch) or
    /// [`Error::CheckpointBeyondHead`](crate::Error::CheckpointBeyondHead), in the status
    /// and to waiters; readers keep the old model. A rebuild repairs it.
    #[default]
    Stop,
    /// Delete the read model and build it again from the new store's log; readers see no
    /// model until the build switches in.
    Rebuild,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            policy: FailurePolicy::Stop,
            batch_size: 5_000,
            page_size: 5_000,
            progress: ProgressDisplay::Auto,
            on_store_change: StoreChange::Stop,
            concurrency: 1,
        }
    }
}

impl ProjectionConfig {
    /// The defaults: stop on failure, batches of 5,000 events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the failure policy.
    pub fn with_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how many events a reactor handles at once (at least 1; see
    /// [`ProjectionConfig::concurrency`]).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets the largest batch (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets the catch-up page size (at least 1).
    pub fn with_page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// Sets how rebuild progress is shown.
    pub fn with_progress(mut self, progress: ProgressDisplay) -> Self {
        self.progress = progress;
        self
    }

    /// Sets what happens when the read model belongs to another store.
    pub fn on_store_change(mut self, action: StoreChange) -> Self {
        self.on_store_change = action;
        self
    }
}

/// Settings of a [`ProjectionRunner`](crate::ProjectionRunner).
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// How long an ownership lease lasts without renewal (renewed every quarter of it). A
    /// dead owner's projections are taken over within about this long.
    pub lease_ttl: Duration,
    /// How often a runner tries to take a lease that another runner holds.
    pub lease_poll: Duration,
    /// Waits between retries after transient failures (Redis or the store down).
    pub backoff: Backoff,
    /// How long a shutdown waits for workers to commit what they hold.
    pub shutdown_grace: Duration,
    /// How long a replaced generation is kept after a switch before it is dropped, so
    /// readers that resolved it just before the switch can finish their reads.
    pub retire_grace: Duration,
    /// The longest a read-model write, lookup load, or store query of the status may take
    /// before it counts as failed (a transient error, retried): a silent network is
    /// reported within this bound rather than the kernel's TCP timeout.
    pub io_timeout: Duration,
    /// How often the status is measured against the store (head, exact lag, what holds the
    /// log back).
    pub status_interval: Duration,
    /// How long a worker following the log may sit idle before it asks its read model
    /// whether the target still answers ([`GenerationWriter::check`]): an outage of the
    /// target while no event comes then shows in the status within about this long plus
    /// [`io_timeout`](Self::io_timeout), not only at the next event.
    ///
    /// [`GenerationWriter::check`]: crate::GenerationWriter::check
    pub idle_check: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(5),
            lease_poll: Duration::from_millis(500),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            shutdown_grace: Duration::from_secs(10),
            retire_grace: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(1),
            idle_check: Duration::from_secs(5),
        }
    }
}

impl RunnerConfig {
    /// The defaults: 5 s leases polled every 500 ms, backoff from 100 ms to 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the lease ttl.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(20));
        self
    }

    /// Sets the lease poll interval.
    pub fn with_lease_poll(mut self, poll: Duration) -> Self {
        self.lease_poll = poll;
        self
    }

    /// Sets the retry backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets how long a replaced generation stays readable after a switch.
    pub fn with_retire_grace(mut self, grace: Duration) -> Self {
        self.retire_grace = grace;
        self
    }

    /// Sets the shutdown grace period.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets the bound on every read-model write and status query (at least 10 ms).
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// Sets how often the status is measured against the store (at least 10 ms).
    pub fn with_status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets how long an idle worker waits before checking its target (at least 10 ms;
    /// default 5 s).
    pub fn with_idle_check(mut self, idle: Duration) -> Self {
        self.idle_check = idle.max(Duration::from_millis(10));
        self
    }
}

/// What a finished rebuild did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildReport {
    /// The generation that now serves.
    pub generation: Generation,
    /// The last sequence number it read (the events it went through, in stores without
    /// holes in their sequences).
    pub events: u64,
    /// From the start (or resumption) of the build to the switch.
    pub elapsed: Duration,
}
