//! The errors of a broker, and how the runner sees them.

use std::time::Duration;

use annals::BoxError;

/// What can go wrong talking to a broker.
///
/// [`BrokerError::is_transient`] tells an outage (retried by the runner with backoff, shown
/// as `Retrying` in the status) from a mistake that retrying cannot fix (a bad
/// configuration). A message the broker *refuses* is not an error of this type: it is
/// reported per message by [`Broker::publish`](crate::Broker::publish) and follows the
/// publisher's failure policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker could not be reached, or refused the connection or the session's setup.
    #[error("cannot connect to {broker}")]
    Connect {
        /// Which broker.
        broker: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The connection broke while messages waited for their confirms.
    #[error("{broker}: the connection was lost with {unconfirmed} message(s) unconfirmed")]
    ConnectionLost {
        /// Which broker.
        broker: String,
        /// How many messages of the call were not confirmed.
        unconfirmed: usize,
    },
    /// A confirm did not come in time.
    #[error("{broker}: no confirm within {after:?}")]
    Timeout {
        /// Which broker.
        broker: String,
        /// The bound.
        after: Duration,
    },
    /// The client or the broker failed a call.
    #[error("{broker}: {what} failed")]
    Client {
        /// Which broker.
        broker: String,
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A setting that cannot work.
    #[error("invalid broker configuration: {0}")]
    Config(String),
    /// A consumer gave up a message under [`Poison::Stop`](crate::Poison::Stop): it stays
    /// unacknowledged, and is delivered again to the next run.
    #[error(
        "{consumer}: gave up the message on {subject} (event {event_id:?}) after {attempts} deliveries: {reason}"
    )]
    Poisoned {
        /// Which consumer.
        consumer: String,
        /// The message's subject or routing key.
        subject: String,
        /// The event id, when the message has a readable one.
        event_id: Option<uuid::Uuid>,
        /// Failed deliveries.
        attempts: u32,
        /// The handler's last error, or why the message does not read.
        reason: String,
    },
}

impl BrokerError {
    /// True for outages (connecting, a lost connection, a missing confirm, a failed call):
    /// the same work may succeed later. False for configuration mistakes and a consumer that
    /// gave up a message.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Config(_) | Self::Poisoned { .. })
    }

    /// The error as the runner's: transient errors become [`Error::Io`], which the runner
    /// retries with backoff (the status shows `Retrying` with this error's text); the others
    /// [`Error::Failed`], which stops the publisher until a restart.
    ///
    /// [`Error::Io`]: annals_projections::Error::Io
    /// [`Error::Failed`]: annals_projections::Error::Failed
    pub fn into_runner_error(self, projection: &str) -> annals_projections::Error {
        if self.is_transient() {
            annals_projections::Error::Target {
                target: "the message broker".to_owned(),
                source: Box::new(self),
                transient: true,
            }
        } else {
            annals_projections::Error::Failed {
                projection: projection.to_owned(),
                error: error_chain(&self),
            }
        }
    }
}

/// An error and its sources, joined by ": ".
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
