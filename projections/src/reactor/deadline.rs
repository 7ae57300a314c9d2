//! Deadlines: "if no `PaymentConfirmed` within 30 s, cancel", stored in the event store.
//!
//! A saga schedules a deadline from a reaction ([`Deadlines::schedule`]): that appends
//! `DeadlineScheduled` to the deadline's own stream (`deadline-{id}`, the id derived from
//! saga, instance key and deadline name). A timer started by
//! [`ProjectionRunner::add_deadlines`] follows the log for those streams and, once the
//! deadline is due by its [`Clock`], appends `DeadlineFired` (once: the append is an
//! idempotent command) unless `DeadlineCancelled` came first. The saga reacts to the fired
//! event like to any other ([`DeadlineEvent::fired_for`]).
//!
//! Nothing about a deadline lives only in memory: after a restart the timer reads the
//! scheduled deadlines back from the log (from its start: the pending set is rebuilt in
//! every process) and fires the overdue ones at once.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use annals::{
    Aggregate, BoxError, CommandContext, DomainEvent, EventStore, Payload, RecordedEvent,
    Repository, Retries, UpcasterChain,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::{
    Backoff, EventFilter, MemoryReadModel, ProjectionConfig, ProjectionRunner, ProjectionState,
    ProjectionStatus, Reaction, Reactor, Result, SystemClock, reactor::clock::Clock,
};

/// The stream category of deadlines.
pub const DEADLINE_CATEGORY: &str = "deadline";

/// The name the deadline timer runs under (lease, status).
pub const DEADLINE_TIMER: &str = "annals.deadlines";

/// What identifies a deadline, and when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineInfo {
    /// The saga that scheduled it.
    pub saga: String,
    /// The saga instance (its correlation key).
    pub key: String,
    /// The deadline's name within the instance (`"payment"`).
    pub name: String,
    /// When it is due.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
}

/// The events of a deadline's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineEvent {
    /// A saga asked to be told at `due_at`.
    Scheduled(DeadlineInfo),
    /// The time came and nothing cancelled it: the saga reacts to this.
    Fired(DeadlineInfo),
    /// The saga no longer needs it.
    Cancelled(DeadlineInfo),
}

impl DeadlineEvent {
    /// The deadline this event is about.
    pub fn info(&self) -> &DeadlineInfo {
        match self {
            Self::Scheduled(i) | Self::Fired(i) | Self::Cancelled(i) => i,
        }
    }

    /// When `event` is a fired deadline of `saga`, what it was.
    pub fn fired_for(saga: &str, event: &RecordedEvent) -> Option<DeadlineInfo> {
        if event.stream_id.category() != DEADLINE_CATEGORY
            || event.event_type.as_str() != "DeadlineFired"
        {
            return None;
        }
        match Self::decode(event) {
            Ok(Self::Fired(info)) if info.saga == saga => Some(info),
            _ => None,
        }
    }
}

impl DomainEvent for DeadlineEvent {
    fn upcaster_chain() -> &'static UpcasterChain {
        static CHAIN: OnceLock<UpcasterChain> = OnceLock::new();
        CHAIN.get_or_init(|| {
            UpcasterChain::builder()
                .event_type("DeadlineScheduled", 1)
                .event_type("DeadlineFired", 1)
                .event_type("DeadlineCancelled", 1)
                .build()
                .unwrap_or_else(|_| unreachable!("three distinct types at version 1"))
        })
    }

    fn event_type(&self) -> &'static str {
        match self {
            Self::Scheduled(_) => "DeadlineScheduled",
            Self::Fired(_) => "DeadlineFired",
            Self::Cancelled(_) => "DeadlineCancelled",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn to_payload(&self) -> annals::Result<Payload> {
        Payload::from_serialize(self.info())
    }

    fn from_payload(event_type: &str, payload: &str) -> Result<Self, serde_json::Error> {
        let info: DeadlineInfo = serde_json::from_str(payload)?;
        match event_type {
            "DeadlineScheduled" => Ok(Self::Scheduled(info)),
            "DeadlineFired" => Ok(Self::Fired(info)),
            "DeadlineCancelled" => Ok(Self::Cancelled(info)),
            other => Err(serde::de::Error::custom(format!(
                "{other} is not a deadline event"
            ))),
        }
    }
}

/// Where a deadline is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadlineState {
    /// Never scheduled.
    #[default]
    Unscheduled,
    /// Waiting for its time.
    Pending,
    /// Fired.
    Fired,
    /// Cancelled before it fired.
    Cancelled,
}

/// A deadline, as an aggregate: one stream per (saga, key, name). Scheduling, firing and
/// cancelling are each valid once, in that order; anything else changes nothing (so every
/// command on it is safe to repeat).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deadline {
    /// What it is (once scheduled).
    pub info: Option<DeadlineInfo>,
    /// Where it is.
    pub state: DeadlineState,
}

/// What can be done to a deadline.
#[derive(Debug, Clone)]
pub enum DeadlineCommand {
    /// Schedule it (no-op when it was scheduled before).
    Schedule(DeadlineInfo),
    /// Fire it (no-op unless pending).
    Fire,
    /// Cancel it (no-op unless pending).
    Cancel,
}

/// Deadline commands are never refused.
#[derive(Debug, thiserror::Error)]
#[error("deadline commands are never refused")]
pub struct DeadlineRefused;

impl Aggregate for Deadline {
    const TYPE: &'static str = DEADLINE_CATEGORY;
    type Event = DeadlineEvent;
    type Command = DeadlineCommand;
    type Error = DeadlineRefused;

    fn handle(&self, command: DeadlineCommand) -> Result<Vec<DeadlineEvent>, DeadlineRefused> {
        Ok(match (command, self.state, &self.info) {
            (DeadlineCommand::Schedule(info), DeadlineState::Unscheduled, _) => {
                vec![DeadlineEvent::Scheduled(info)]
            }
            (DeadlineCommand::Fire, DeadlineState::Pending, Some(info)) => {
                vec![DeadlineEvent::Fired(info.clone())]
            }
            (DeadlineCommand::Cancel, DeadlineState::Pending, Some(info)) => {
                vec![DeadlineEvent::Cancelled(info.clone())]
            }
            _ => Vec::new(),
        })
    }

    fn apply(&mut self, event: &DeadlineEvent) {
        self.state = match event {
            DeadlineEvent::Scheduled(_) => DeadlineState::Pending,
            DeadlineEvent::Fired(_) => DeadlineState::Fired,
            DeadlineEvent::Cancelled(_) => DeadlineState::Cancelled,
        };
        self.info = Some(event.info().clone());
    }
}

/// A pending deadline, as the timer knows it.
#[derive(Debug, Clone)]
struct Pending {
    due_at: OffsetDateTime,
    /// The scheduling event: the firing's causation, its correlation, and the trace context
    /// the firing continues.
    scheduled_by: Uuid,
    correlation: Option<Uuid>,
    trace: Option<annals::TraceContext>,
}

#[derive(Debug, Default)]
struct Timers {
    by_id: HashMap<Uuid, Pending>,
    by_due: BTreeMap<(OffsetDateTime, Uuid), ()>,
}

impl Timers {
    fn insert(&mut self, id: Uuid, pending: Pending) {
        self.remove(id);
        self.by_due.insert((pending.due_at, id), ());
        self.by_id.insert(id, pending);
    }

    fn remove(&mut self, id: Uuid) {
        if let Some(old) = self.by_id.remove(&id) {
            self.by_due.remove(&(old.due_at, id));
        }
    }

    fn next_due(&self) -> Option<OffsetDateTime> {
        self.by_due.keys().next().map(|(due, _)| *due)
    }

    fn due(&self, now: OffsetDateTime, limit: usize) -> Vec<(Uuid, Pending)> {
        self.by_due
            .keys()
            .take_while(|(due, _)| *due <= now)
            .take(limit)
            .filter_map(|(_, id)| self.by_id.get(id).map(|p| (*id, p.clone())))
            .collect()
    }
}

/// Schedules and cancels deadlines from reactions, and holds what the timer knows. Cheap to
/// clone; give one to the runner ([`ProjectionRunner::add_deadlines`]) and to the sagas.
#[derive(Debug, Clone)]
pub struct Deadlines {
    clock: Arc<dyn Clock>,
    timers: Arc<Mutex<Timers>>,
    wake: Arc<Notify>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::new(SystemClock)
    }
}

impl Deadlines {
    /// Deadlines due by `clock` ([`SystemClock`] in production, a
    /// [`ManualClock`](crate::ManualClock) in tests).
    pub fn new(clock: impl Clock) -> Self {
        Self {
            clock: Arc::new(clock),
            timers: Arc::new(Mutex::new(Timers::default())),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The clock deadlines are due by.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The id of the deadline `name` of `saga`'s instance `key`.
    pub fn id(saga: &str, key: &str, name: &str) -> Uuid {
        annals::derive_id(
            "annals.deadline",
            &[saga.as_bytes(), key.as_bytes(), name.as_bytes()],
        )
    }

    /// How many deadlines the timer knows to be pending.
    pub fn pending(&self) -> usize {
        self.lock().by_id.len()
    }

    /// How many pending deadlines are due now.
    pub fn due_now(&self) -> usize {
        let now = self.clock.now();
        self.lock().due(now, usize::MAX).len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Schedules the deadline `name` of instance `key` of the saga (or reactor) reacting,
    /// due `after` from now (by this clock), as the reaction's next command. Scheduling a
    /// deadline that exists already (pending, fired or cancelled) changes nothing.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn schedule<S: EventStore + Clone>(
        &self,
        reaction: &mut Reaction<'_, S>,
        key: &str,
        name: &str,
        after: Duration,
    ) -> Result<(), BoxError> {
        let saga = reaction.reactor().to_owned();
        let saga = saga.as_str();
        let info = DeadlineInfo {
            saga: saga.to_owned(),
            key: key.to_owned(),
            name: name.to_owned(),
            due_at: self.clock.now() + after,
        };
        let id = Self::id(saga, key, name).simple().to_string();
        let repository = Repository::<Deadline, S>::new(reaction.store().clone());
        reaction
            .execute(&repository, &id, DeadlineCommand::Schedule(info))
            .await?;
        Ok(())
    }

    /// Cancels the deadline `name` of instance `key` of the saga (or reactor) reacting, as
    /// the reaction's next command; nothing happens when it is not pending.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn cancel<S: EventStore + Clone>(
        &self,
        reaction: &mut Reaction<'_, S>,
        key: &str,
        name: &str,
    ) -> Result<(), BoxError> {
        let id = Self::id(reaction.reactor(), key, name).simple().to_string();
        let repository = Repository::<Deadline, S>::new(reaction.store().clone());
        reaction
            .execute(&repository, &id, DeadlineCommand::Cancel)
            .await?;
        Ok(())
    }
}

/// Follows the deadline streams into the timer's pending set.
struct DeadlineWatch {
    deadlines: Deadlines,
}

impl<S: EventStore + Clone + 'static> Reactor<S> for DeadlineWatch {
    fn name(&self) -> &str {
        DEADLINE_TIMER
    }

    fn filter(&self) -> EventFilter {
        EventFilter::categories([DEADLINE_CATEGORY])
    }

    async fn react(
        &self,
        event: &RecordedEvent,
        _reaction: &mut Reaction<'_, S>,
    ) -> Result<(), BoxError> {
        let decoded = DeadlineEvent::decode(event)?;
        let info = decoded.info();
        let id = Deadlines::id(&info.saga, &info.key, &info.name);
        match &decoded {
            DeadlineEvent::Scheduled(info) => {
                self.deadlines.lock().insert(
                    id,
                    Pending {
                        due_at: info.due_at,
                        scheduled_by: event.event_id,
                        correlation: event.metadata.correlation_id,
                        trace: event.metadata.trace.clone(),
                    },
                );
                self.deadlines.wake.notify_one();
            }
            DeadlineEvent::Fired(_) | DeadlineEvent::Cancelled(_) => {
                self.deadlines.lock().remove(id);
            }
        }
        Ok(())
    }
}

/// Fires due deadlines until the watch shuts down.
async fn fire_due<S: EventStore + Clone>(
    store: S,
    deadlines: Deadlines,
    mut status: watch::Receiver<ProjectionStatus>,
) {
    let retries = Retries::none()
        .conflicts(10)
        .with_sleep(|d| Box::pin(tokio::time::sleep(d)));
    let repository = Repository::<Deadline, S>::new(store).with_retries(retries);
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut failures = 0u32;
    loop {
        if matches!(status.borrow().state, ProjectionState::ShutDown) {
            return;
        }
        let now = deadlines.clock.now();
        let due = deadlines.lock().due(now, 100);
        let mut failed = false;
        for (id, pending) in due {
            let mut context = CommandContext::idempotent(annals::derive_id(
                "annals.deadline.fire",
                &[id.as_bytes()],
            ))
            .with_causation_id(pending.scheduled_by);
            if let Some(correlation) = pending.correlation {
                context = context.with_correlation_id(correlation);
            }
            // The firing continues the trace of the command that scheduled it, however long
            // ago and in whichever process.
            if let Some(trace) = pending.trace.clone() {
                context = context.with_trace(trace);
            }
            match repository
                .execute(&id.simple().to_string(), DeadlineCommand::Fire, &context)
                .await
            {
                Ok(_) => {
                    tracing::debug!(deadline = %id, "deadline fired");
                    deadlines.lock().remove(id);
                }
                Err(error) => {
                    tracing::warn!(deadline = %id, %error, "firing a deadline failed; retrying");
                    failed = true;
                    break;
                }
            }
        }
        let wait = if failed {
            failures = failures.saturating_add(1);
            backoff.delay(failures - 1)
        } else {
            failures = 0;
            let next = deadlines.lock().next_due();
            let now = deadlines.clock.now();
            next.map_or(Duration::from_secs(1), |due| {
                Duration::try_from(due - now)
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_secs(1))
            })
        };
        if wait.is_zero() && !failed {
            continue;
        }
        tokio::select! {
            () = deadlines.clock.sleep(wait) => {}
            () = deadlines.wake.notified() => {}
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

impl<S: EventStore + Clone + 'static> ProjectionRunner<S> {
    /// Runs the deadline timer of `deadlines` (under the name [`DEADLINE_TIMER`]): it reads
    /// scheduled deadlines from the log and fires them when due. Run it in the process that
    /// runs the sagas; several processes may run it (firing is idempotent), the lease lets
    /// one at a time follow the log.
    ///
    /// # Errors
    /// As [`ProjectionRunner::add`].
    pub fn add_deadlines(&self, deadlines: &Deadlines) -> Result<()> {
        // The pending set lives in memory, so the watch starts from the log's beginning in
        // every process: a fresh in-memory checkpoint.
        let checkpoints = MemoryReadModel::<()>::new(DEADLINE_TIMER)?;
        // Only an event that does not decode fails here: park it, and say so in the status.
        let config = ProjectionConfig::new().with_policy(crate::FailurePolicy::DeadLetter);
        self.add_reactor(
            DeadlineWatch {
                deadlines: deadlines.clone(),
            },
            checkpoints,
            config,
        )?;
        let status = self.watch(DEADLINE_TIMER)?;
        self.spawn(fire_due(self.store().clone(), deadlines.clone(), status))
    }
}
