//! given / when / then for aggregate tests, without a store.

use std::fmt::Debug;

use crate::Aggregate;

/// An aggregate built from past events, ready for a command.
#[derive(Debug)]
pub struct Given<A> {
    state: A,
}

/// Starts an aggregate test from past events (none for a new aggregate).
///
/// ```
/// use annals::testing::{Counter, CounterCommand, CounterError, CounterEvent, given};
///
/// given::<Counter>([CounterEvent::Added { amount: 2 }])
///     .when(CounterCommand::Add(3))
///     .then_expect_events([CounterEvent::Added { amount: 3 }]);
/// given::<Counter>([])
///     .when(CounterCommand::Add(-1))
///     .then_expect_error(CounterError::NotPositive(-1));
/// ```
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut state = A::default();
    for event in events {
        state.apply(&event);
    }
    Given { state }
}

impl<A: Aggregate> Given<A> {
    /// Handles a command against the state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.handle(command);
        Then {
            state: self.state,
            result,
        }
    }
}

/// The outcome of a command, to check.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts that the command produced exactly these events, and returns the state after
    /// them.
    ///
    /// # Panics
    /// When the command failed or produced other events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                state
            }
            Err(error) => panic!("expected events {expected:?}, the command failed: {error:?}"),
        }
    }

    /// Asserts that the command was rejected with exactly this error.
    ///
    /// # Panics
    /// When the command succeeded or failed otherwise.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, the command produced {events:?}"),
            Err(error) => assert_eq!(error, expected, "the command failed otherwise"),
        }
    }

    /// Asserts that the command was rejected with an error whose message is `message`.
    ///
    /// # Panics
    /// When the command succeeded or failed with another message.
    #[track_caller]
    pub fn then_expect_error_message(self, message: &str)
    where
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error {message:?}, the command produced {events:?}"),
            Err(error) => assert_eq!(error.to_string(), message),
        }
    }

    /// The raw outcome, for checks the helpers do not cover.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }
}
