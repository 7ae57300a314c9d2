//! A broker in process, for tests: it records what it stores, drops repeats by event id, and
//! can be told to refuse messages, to go down, or to break a connection half-way through.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use annals::RecordedEvent;

use crate::{Broker, BrokerError, Message, Published, Refusal, Subjects};

/// A broker in process: stores messages in order, drops a message whose event id it has
/// stored already (like JetStream's duplicate window, without end), and can be told to
/// refuse messages ([`MemoryBroker::refuse`]), to be unreachable ([`MemoryBroker::set_down`])
/// or to break the connection after some messages ([`MemoryBroker::break_after`]).
/// Clones share the broker.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    subjects: Subjects,
    state: Mutex<State>,
}

type Refuse = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;

#[derive(Default)]
struct State {
    stored: Vec<Message>,
    ids: HashSet<uuid::Uuid>,
    /// Every message received, repeats included.
    received: usize,
    down: bool,
    /// Sessions opened before this number are broken.
    epoch: u64,
    break_after: Option<usize>,
    refuse: Option<Refuse>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryBroker")
            .field("stored", &state.stored.len())
            .field("down", &state.down)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// An empty broker; subjects `events.<category>.<type>`.
    pub fn new() -> Self {
        Self::with_subjects(Subjects::prefixed("events"))
    }

    /// An empty broker naming subjects with `subjects`.
    pub fn with_subjects(subjects: Subjects) -> Self {
        Self {
            inner: Arc::new(Inner {
                subjects,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The messages stored, in the order they were stored.
    pub fn messages(&self) -> Vec<Message> {
        self.state().stored.clone()
    }

    /// How many messages were received, repeats included.
    pub fn received(&self) -> usize {
        self.state().received
    }

    /// Makes the broker unreachable (`true`: open sessions break, connecting fails) or
    /// reachable again.
    pub fn set_down(&self, down: bool) {
        let mut state = self.state();
        state.down = down;
        if down {
            state.epoch += 1;
        }
    }

    /// Breaks the connection after `n` more messages are received: the call that sends the
    /// next one fails, and what it sent after them is lost.
    pub fn break_after(&self, n: usize) {
        self.state().break_after = Some(n);
    }

    /// Refuses every message for which `refuse` returns a reason.
    pub fn refuse(&self, refuse: impl Fn(&Message) -> Option<String> + Send + Sync + 'static) {
        self.state().refuse = Some(Arc::new(refuse));
    }

    /// Accepts every message again.
    pub fn accept_all(&self) {
        self.state().refuse = None;
    }
}

/// A session of a [`MemoryBroker`].
#[derive(Debug)]
pub struct MemorySession {
    epoch: u64,
}

impl Broker for MemoryBroker {
    type Session = MemorySession;

    fn describe(&self) -> String {
        "the in-process broker".to_owned()
    }

    fn subject(&self, event: &RecordedEvent) -> String {
        self.inner.subjects.subject(event)
    }

    async fn connect(&self) -> Result<MemorySession, BrokerError> {
        let state = self.state();
        if state.down {
            return Err(BrokerError::Connect {
                broker: self.describe(),
                source: "the broker is down".into(),
            });
        }
        Ok(MemorySession { epoch: state.epoch })
    }

    fn is_open(&self, session: &MemorySession) -> bool {
        let state = self.state();
        !state.down && session.epoch == state.epoch
    }

    async fn publish(
        &self,
        session: &mut MemorySession,
        messages: &[Message],
    ) -> Result<Published, BrokerError> {
        // Let other tasks run, as a network would.
        tokio::task::yield_now().await;
        let mut state = self.state();
        let mut published = Published::default();
        for (index, message) in messages.iter().enumerate() {
            if state.down || state.epoch != session.epoch {
                return Err(BrokerError::ConnectionLost {
                    broker: self.describe(),
                    unconfirmed: messages.len() - index,
                });
            }
            if let Some(n) = state.break_after.as_mut() {
                if *n == 0 {
                    state.break_after = None;
                    state.epoch += 1;
                    return Err(BrokerError::ConnectionLost {
                        broker: self.describe(),
                        unconfirmed: messages.len() - index,
                    });
                }
                *n -= 1;
            }
            state.received += 1;
            if let Some(reason) = state.refuse.as_ref().and_then(|refuse| refuse(message)) {
                published.refused.push(Refusal { index, reason });
            } else if state.ids.insert(message.event_id) {
                state.stored.push(message.clone());
                published.stored += 1;
            } else {
                published.duplicates += 1;
            }
        }
        Ok(published)
    }
}
