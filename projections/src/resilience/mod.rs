//! Calling the outside world (a bank, a payment gateway) from a reactor step, without letting
//! one sick dependency take the process down with it.
//!
//! A [`Dependency`] guards the calls to one external dependency with:
//!
//! - a **timeout** per attempt ([`DependencyConfig::timeout`]);
//! - **retries** of transient errors and timeouts, waiting [`Backoff::delay`] (exponential,
//!   with jitter, so many failing callers do not retry in lockstep) between attempts;
//! - a **circuit breaker**: after [`failure_threshold`](DependencyConfig::failure_threshold)
//!   consecutive failures it opens and calls fail fast ([`CallError::Open`]) without calling;
//!   after [`open_for`](DependencyConfig::open_for) it turns half-open and lets
//!   [`half_open_probes`](DependencyConfig::half_open_probes) calls through; a healthy answer
//!   closes it, a failure opens it again;
//! - a **bulkhead**: at most [`max_concurrent`](DependencyConfig::max_concurrent) attempts at
//!   once; a call waits for a slot at most [`max_wait`](DependencyConfig::max_wait), then is
//!   refused ([`CallError::BulkheadFull`]), so a slow dependency cannot tie up every task;
//! - a **status** ([`Dependency::status`]) for a reactor's status and a CLI.
//!
//! The caller classifies errors: transient ones (a dropped connection, a 503) are retried and
//! count against the breaker; permanent ones (a declined card, a 400) are returned at once
//! and, since the dependency did answer, count as a healthy answer for the breaker. Errors
//! implement [`Retryable`] ([`Dependency::call`]), or a closure classifies them
//! ([`Dependency::call_with`]).
//!
//! Time is `tokio::time`'s, so tests can pause and advance the clock.
//!
//! ```
//! use std::time::Duration;
//!
//! use annals::Backoff;
//! use annals_projections::resilience::{CallError, Dependency, DependencyConfig};
//!
//! #[derive(Debug)]
//! struct GatewayError {
//!     status: u16,
//! }
//!
//! impl std::fmt::Display for GatewayError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         write!(f, "gateway answered {}", self.status)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let gateway = Dependency::new(
//!     "payment-gateway",
//!     DependencyConfig::default()
//!         .with_timeout(Duration::from_secs(2))
//!         .with_retries(2)
//!         .with_backoff(Backoff::new(Duration::from_millis(1), Duration::from_millis(10)))
//!         .with_failure_threshold(5)
//!         .with_open_for(Duration::from_secs(30))
//!         .with_max_concurrent(4)
//!         .with_max_wait(Duration::from_millis(500)),
//! );
//!
//! // 5xx are worth retrying, 4xx are not.
//! let is_transient = |e: &GatewayError| e.status >= 500;
//! let charged = gateway
//!     .call_with(is_transient, || async { Ok::<_, GatewayError>("charge-42") })
//!     .await;
//! assert_eq!(charged.unwrap(), "charge-42");
//!
//! let declined = gateway
//!     .call_with(is_transient, || async { Err::<(), _>(GatewayError { status: 402 }) })
//!     .await
//!     .unwrap_err();
//! // Permanent: not retried; a reactor would record the refusal instead of retrying.
//! assert!(!declined.is_transient());
//! assert!(matches!(declined, CallError::Failed { attempts: 1, .. }));
//! assert_eq!(declined.into_inner().unwrap().status, 402);
//!
//! // Show it in a status page or a CLI.
//! println!("{}", gateway.status());
//! # }
//! ```

mod breaker;
mod error;
mod status;

use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use annals::Backoff;
use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};

use self::breaker::{Breaker, Ticket, View};
pub use self::{
    error::{CallError, Retryable},
    status::{BreakerState, DependencyStatus},
};

/// How a [`Dependency`] guards its calls. Build it with [`DependencyConfig::default`] and the
/// `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DependencyConfig {
    /// The longest one attempt may take; a slower one is abandoned (its future dropped) and
    /// counts as a transient failure. Default 10 s.
    pub timeout: Duration,
    /// How many times a transient error or a timeout is retried (so `retries + 1` attempts
    /// at most). Default 2.
    pub retries: u32,
    /// The waits between attempts: [`Backoff::delay`], with jitter. Default
    /// [`Backoff::default`] (from 100 ms).
    pub backoff: Backoff,
    /// Consecutive failures (transient errors, timeouts) that open the circuit breaker
    /// (at least 1). Default 5.
    pub failure_threshold: u32,
    /// How long the breaker stays open before it lets probes through. Default 30 s.
    pub open_for: Duration,
    /// How many probe calls a half-open breaker lets through at once (at least 1).
    /// Default 1.
    pub half_open_probes: u32,
    /// The most attempts running at once (at least 1): the bulkhead. Default 16.
    pub max_concurrent: usize,
    /// How long a call waits for a slot before it is refused with
    /// [`CallError::BulkheadFull`]; `None` waits as long as it takes. Default `None`.
    pub max_wait: Option<Duration>,
}

impl Default for DependencyConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retries: 2,
            backoff: Backoff::default(),
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
            max_concurrent: 16,
            max_wait: None,
        }
    }
}

impl DependencyConfig {
    /// Sets the per-attempt timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many times transient errors and timeouts are retried (0: never).
    #[must_use]
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the waits between attempts.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the consecutive failures that open the breaker (at least 1).
    #[must_use]
    pub fn with_failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// Sets how long the breaker stays open.
    #[must_use]
    pub fn with_open_for(mut self, open_for: Duration) -> Self {
        self.open_for = open_for;
        self
    }

    /// Sets how many probes a half-open breaker lets through at once (at least 1).
    #[must_use]
    pub fn with_half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes.max(1);
        self
    }

    /// Sets the most attempts running at once (at least 1).
    #[must_use]
    pub fn with_max_concurrent(mut self, max: usize) -> Self {
        self.max_concurrent = max.max(1);
        self
    }

    /// Sets how long a call waits for a slot before it is refused (zero: not at all).
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }
}

/// One external dependency and the guards around calls to it: timeout, retries with
/// backoff, circuit breaker, bulkhead (see the [module docs](self)).
///
/// Cheap to clone: clones share the breaker, the slots and the counters. Create one per
/// dependency and hand clones to every task that calls it.
#[derive(Clone)]
pub struct Dependency {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: DependencyConfig,
    slots: Semaphore,
    state: Mutex<State>,
}

/// Everything that changes, behind one lock held only for bookkeeping (never across an
/// await).
#[derive(Debug)]
struct State {
    breaker: Breaker,
    calls: u64,
    failures: u64,
    timeouts: u64,
    rejected: u64,
    in_flight: usize,
    last_error: Option<String>,
}

/// How one attempt ended.
enum Outcome {
    Success,
    Permanent(String),
    Transient(String),
    TimedOut(String),
}

impl Dependency {
    /// A dependency named `name` (for errors, logs and the status), guarded as `config`
    /// says.
    pub fn new(name: impl Into<String>, config: DependencyConfig) -> Self {
        let mut config = config;
        config.max_concurrent = config.max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        let breaker = Breaker::new(
            config.failure_threshold,
            config.open_for,
            config.half_open_probes,
            config.timeout,
        );
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                slots: Semaphore::new(config.max_concurrent),
                config,
                state: Mutex::new(State {
                    breaker,
                    calls: 0,
                    failures: 0,
                    timeouts: 0,
                    rejected: 0,
                    in_flight: 0,
                    last_error: None,
                }),
            }),
        }
    }

    /// The dependency's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How it guards its calls.
    pub fn config(&self) -> &DependencyConfig {
        &self.inner.config
    }

    /// Calls `f` (once per attempt) through the guards, classifying its errors with
    /// [`Retryable::is_transient`].
    ///
    /// Each attempt first passes the circuit breaker (refused with [`CallError::Open`]
    /// while it is open), then takes a call slot (refused with [`CallError::BulkheadFull`]
    /// after [`max_wait`](DependencyConfig::max_wait)), then runs bounded by the timeout.
    /// Transient errors and timeouts are retried after [`Backoff::delay`], up to
    /// [`retries`](DependencyConfig::retries) times; no slot is held while waiting.
    pub async fn call<T, E, F, Fut>(&self, f: F) -> Result<T, CallError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable + fmt::Display,
    {
        self.call_with(E::is_transient, f).await
    }

    /// Like [`Dependency::call`], with `is_transient` classifying the errors: true for an
    /// error worth retrying (it also counts against the circuit breaker), false for a
    /// permanent one (returned at once; the dependency did answer, so the breaker counts it
    /// as healthy).
    pub async fn call_with<T, E, F, Fut, C>(
        &self,
        is_transient: C,
        mut f: F,
    ) -> Result<T, CallError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
        C: Fn(&E) -> bool,
    {
        let inner = &*self.inner;
        let config = &inner.config;
        let mut attempts: u32 = 0;
        loop {
            let attempt = inner.start().await?;
            attempts += 1;
            let outcome = tokio::time::timeout(config.timeout, f()).await;
            let retry = match outcome {
                Ok(Ok(value)) => {
                    attempt.finish(Outcome::Success);
                    return Ok(value);
                }
                Ok(Err(error)) => {
                    let transient = is_transient(&error);
                    let text = error.to_string();
                    attempt.finish(if transient {
                        Outcome::Transient(text.clone())
                    } else {
                        Outcome::Permanent(text.clone())
                    });
                    if !transient || attempts > config.retries {
                        return Err(CallError::Failed {
                            dependency: inner.name.clone(),
                            attempts,
                            transient,
                            error,
                        });
                    }
                    text
                }
                Err(_elapsed) => {
                    let text = format!("timed out after {:?}", config.timeout);
                    attempt.finish(Outcome::TimedOut(text.clone()));
                    if attempts > config.retries {
                        return Err(CallError::Timeout {
                            dependency: inner.name.clone(),
                            after: config.timeout,
                            attempts,
                        });
                    }
                    text
                }
            };
            let delay = config.backoff.delay(attempts - 1);
            tracing::debug!(
                dependency = %inner.name,
                attempt = attempts,
                ?delay,
                error = %retry,
                "retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The breaker's state and the counters, now.
    pub fn status(&self) -> DependencyStatus {
        let inner = &*self.inner;
        let state = inner.lock();
        let breaker = match state.breaker.view(Instant::now()) {
            View::Closed => BreakerState::Closed,
            View::Open { retry_after } => BreakerState::Open { retry_after },
            View::HalfOpen => BreakerState::HalfOpen,
        };
        DependencyStatus {
            name: inner.name.clone(),
            breaker,
            consecutive_failures: state.breaker.consecutive_failures(),
            calls: state.calls,
            failures: state.failures,
            timeouts: state.timeouts,
            rejected: state.rejected,
            in_flight: state.in_flight,
            max_concurrent: inner.config.max_concurrent,
            last_error: state.last_error.clone(),
        }
    }
}

impl fmt::Debug for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("state", &*self.inner.lock())
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement; a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_error<E>(&self, retry_after: Duration) -> CallError<E> {
        CallError::Open {
            dependency: self.name.clone(),
            retry_after,
        }
    }

    /// Passes the breaker and the bulkhead for one attempt.
    async fn start<E>(&self) -> Result<Attempt<'_>, CallError<E>> {
        // Fail fast before waiting for a slot...
        if let Err(retry_after) = {
            let mut state = self.lock();
            let checked = state.breaker.check(Instant::now(), &self.name);
            if checked.is_err() {
                state.rejected += 1;
            }
            checked
        } {
            return Err(self.open_error(retry_after));
        }
        let permit = self.slot().await?;
        // ...and admit after it: the breaker may have opened meanwhile.
        let mut state = self.lock();
        match state.breaker.admit(Instant::now(), &self.name) {
            Ok(ticket) => {
                state.calls += 1;
                state.in_flight += 1;
                Ok(Attempt {
                    inner: self,
                    ticket,
                    finished: false,
                    _permit: permit,
                })
            }
            Err(retry_after) => {
                state.rejected += 1;
                Err(self.open_error(retry_after))
            }
        }
    }

    /// Takes a call slot, waiting at most `max_wait`.
    async fn slot<E>(&self) -> Result<SemaphorePermit<'_>, CallError<E>> {
        let started = Instant::now();
        let permit = match self.config.max_wait {
            None => self.slots.acquire().await.ok(),
            Some(wait) if wait.is_zero() => self.slots.try_acquire().ok(),
            Some(wait) => tokio::time::timeout(wait, self.slots.acquire())
                .await
                .ok()
                .and_then(Result::ok),
        };
        // The semaphore is never closed: no permit means the wait ran out.
        permit.ok_or_else(|| {
            self.lock().rejected += 1;
            CallError::BulkheadFull {
                dependency: self.name.clone(),
                max_concurrent: self.config.max_concurrent,
                waited: started.elapsed(),
            }
        })
    }
}

/// One attempt in flight: holds its call slot, and frees it and its breaker admission when
/// dropped, even if the caller's future is dropped mid-call.
struct Attempt<'a> {
    inner: &'a Inner,
    ticket: Ticket,
    finished: bool,
    _permit: SemaphorePermit<'a>,
}

impl Attempt<'_> {
    fn finish(mut self, outcome: Outcome) {
        let inner = self.inner;
        let mut state = inner.lock();
        state.in_flight -= 1;
        self.finished = true;
        let error = match outcome {
            Outcome::Success => {
                state.breaker.healthy(self.ticket, &inner.name);
                return;
            }
            Outcome::Permanent(error) => {
                state.breaker.healthy(self.ticket, &inner.name);
                error
            }
            Outcome::Transient(error) => {
                state
                    .breaker
                    .failed(self.ticket, Instant::now(), &inner.name);
                error
            }
            Outcome::TimedOut(error) => {
                state.timeouts += 1;
                state
                    .breaker
                    .failed(self.ticket, Instant::now(), &inner.name);
                error
            }
        };
        state.failures += 1;
        state.last_error = Some(error);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.inner.lock();
            state.in_flight -= 1;
            state.breaker.abandoned(self.ticket);
        }
    }
}
