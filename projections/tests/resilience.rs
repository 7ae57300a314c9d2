//! `resilience::Dependency`: circuit breaker, bulkhead, timeouts, retries with jitter, on a
//! paused tokio clock.

use std::{
    collections::BTreeSet,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use annals::Backoff;
use annals_projections::resilience::{
    BreakerState, CallError, Dependency, DependencyConfig, Retryable,
};
use proptest::prelude::*;
use tokio::{sync::watch, time::Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TestError {
    Transient,
    Permanent,
}

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient => f.write_str("service unavailable"),
            Self::Permanent => f.write_str("card declined"),
        }
    }
}

impl Retryable for TestError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Transient)
    }
}

/// Counts the calls that reached the "dependency".
#[derive(Debug, Clone, Default)]
struct Counter(Arc<AtomicU32>);

impl Counter {
    fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

async fn outcome(
    dep: &Dependency,
    calls: &Counter,
    result: Result<(), TestError>,
) -> Result<(), CallError<TestError>> {
    dep.call(|| {
        calls.hit();
        async move { result }
    })
    .await
}

const OPEN_FOR: Duration = Duration::from_secs(10);

fn no_retries() -> DependencyConfig {
    DependencyConfig::default()
        .with_retries(0)
        .with_timeout(Duration::from_secs(1))
        .with_failure_threshold(3)
        .with_open_for(OPEN_FOR)
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
    let dep = Dependency::new("bank", no_retries());
    let calls = Counter::default();
    assert_eq!(dep.status().breaker, BreakerState::Closed);

    for n in 1..=3 {
        let e = outcome(&dep, &calls, Err(TestError::Transient))
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            CallError::Failed {
                attempts: 1,
                transient: true,
                ..
            }
        ));
        assert_eq!(dep.status().consecutive_failures, n);
    }
    let status = dep.status();
    assert_eq!(
        status.breaker,
        BreakerState::Open {
            retry_after: OPEN_FOR
        }
    );
    assert_eq!((status.calls, status.failures, status.rejected), (3, 3, 0));
    assert_eq!(status.last_error.as_deref(), Some("service unavailable"));
    assert!(status.to_string().starts_with("bank: open"), "{status}");

    // Open: fails fast, without calling.
    tokio::time::advance(Duration::from_secs(4)).await;
    let e = outcome(&dep, &calls, Ok(())).await.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(6)));
    assert_eq!(e.dependency(), "bank");
    assert_eq!(calls.get(), 3);
    tokio::time::advance(Duration::from_secs(6) - Duration::from_millis(1)).await;
    assert!(matches!(
        outcome(&dep, &calls, Ok(())).await,
        Err(CallError::Open { .. })
    ));
    assert_eq!(calls.get(), 3);
    assert_eq!(dep.status().rejected, 2);

    // Half-open after open_for; a failed probe opens it again.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(dep.status().breaker, BreakerState::HalfOpen);
    assert!(matches!(
        outcome(&dep, &calls, Err(TestError::Transient)).await,
        Err(CallError::Failed { .. })
    ));
    assert_eq!(calls.get(), 4);
    assert_eq!(
        dep.status().breaker,
        BreakerState::Open {
            retry_after: OPEN_FOR
        }
    );
    assert!(matches!(
        outcome(&dep, &calls, Ok(())).await,
        Err(CallError::Open { .. })
    ));
    assert_eq!(calls.get(), 4);

    // Half-open again: one probe at a time; the others fail fast meanwhile.
    tokio::time::advance(OPEN_FOR).await;
    assert_eq!(dep.status().breaker, BreakerState::HalfOpen);
    let (open_gate, gate) = watch::channel(false);
    let probe = tokio::spawn({
        let (dep, calls) = (dep.clone(), calls.clone());
        async move {
            dep.call(|| {
                calls.hit();
                let mut gate = gate.clone();
                async move {
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok::<_, TestError>(())
                }
            })
            .await
        }
    });
    while dep.status().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        outcome(&dep, &calls, Ok(())).await,
        Err(CallError::Open { .. })
    ));
    assert_eq!(calls.get(), 5);
    assert_eq!(dep.status().breaker, BreakerState::HalfOpen);

    // A successful probe closes it.
    open_gate.send(true).unwrap();
    probe.await.unwrap().unwrap();
    let status = dep.status();
    assert_eq!(status.breaker, BreakerState::Closed);
    assert_eq!(status.consecutive_failures, 0);
    outcome(&dep, &calls, Ok(())).await.unwrap();
    assert_eq!(calls.get(), 6);
    let status = dep.status();
    assert_eq!(
        (
            status.calls,
            status.failures,
            status.rejected,
            status.in_flight
        ),
        (6, 4, 4, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_healthy_answers_for_the_breaker() {
    let dep = Dependency::new("bank", no_retries().with_failure_threshold(2));
    let calls = Counter::default();
    outcome(&dep, &calls, Err(TestError::Transient))
        .await
        .unwrap_err();
    let e = outcome(&dep, &calls, Err(TestError::Permanent))
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(e.into_inner(), Some(TestError::Permanent));
    outcome(&dep, &calls, Err(TestError::Transient))
        .await
        .unwrap_err();
    let status = dep.status();
    assert_eq!(status.breaker, BreakerState::Closed);
    assert_eq!((status.consecutive_failures, status.failures), (1, 3));
}

/// Spawns a call that waits at the gate, then succeeds.
fn gated_call(
    dep: &Dependency,
    calls: &Counter,
    gate: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), CallError<TestError>>> {
    let (dep, calls, gate) = (dep.clone(), calls.clone(), gate.clone());
    tokio::spawn(async move {
        dep.call(|| {
            calls.hit();
            let mut gate = gate.clone();
            async move {
                gate.wait_for(|open| *open).await.unwrap();
                Ok(())
            }
        })
        .await
    })
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_makes_the_third_call_wait() {
    let dep = Dependency::new(
        "gateway",
        DependencyConfig::default()
            .with_timeout(Duration::from_secs(3600))
            .with_max_concurrent(2),
    );
    let calls = Counter::default();
    let (open_gate, gate) = watch::channel(false);
    let tasks: Vec<_> = (0..3).map(|_| gated_call(&dep, &calls, &gate)).collect();
    while calls.get() < 2 {
        tokio::task::yield_now().await;
    }
    // Much later, the third is still waiting for a slot.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls.get(), 2);
    let status = dep.status();
    assert_eq!((status.in_flight, status.max_concurrent), (2, 2));
    assert!(status.to_string().contains("2/2 in flight"), "{status}");

    open_gate.send(true).unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(calls.get(), 3);
    let status = dep.status();
    assert_eq!((status.in_flight, status.calls, status.rejected), (0, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_refuses_after_max_wait() {
    let dep = Dependency::new(
        "gateway",
        DependencyConfig::default()
            .with_timeout(Duration::from_secs(3600))
            .with_max_concurrent(2)
            .with_max_wait(Duration::from_millis(100)),
    );
    let calls = Counter::default();
    let (open_gate, gate) = watch::channel(false);
    let tasks: Vec<_> = (0..2).map(|_| gated_call(&dep, &calls, &gate)).collect();
    while dep.status().in_flight < 2 {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let e = outcome(&dep, &calls, Ok(())).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    match &e {
        CallError::BulkheadFull {
            dependency,
            max_concurrent,
            waited,
        } => {
            assert_eq!((dependency.as_str(), *max_concurrent), ("gateway", 2));
            assert_eq!(*waited, Duration::from_millis(100));
        }
        other => panic!("expected BulkheadFull, got {other:?}"),
    }
    assert!(e.is_transient());
    assert_eq!(calls.get(), 2);
    let status = dep.status();
    assert_eq!((status.in_flight, status.rejected), (2, 1));
    // Refused calls are no failures of the dependency.
    assert_eq!((status.failures, status.breaker), (0, BreakerState::Closed));

    open_gate.send(true).unwrap();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(dep.status().in_flight, 0);
    outcome(&dep, &calls, Ok(())).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_call_that_hangs_times_out_and_counts_against_the_breaker() {
    let dep = Dependency::new(
        "bank",
        no_retries()
            .with_timeout(Duration::from_secs(2))
            .with_failure_threshold(2),
    );
    let calls = Counter::default();
    let hang = || {
        calls.hit();
        std::future::pending::<Result<(), TestError>>()
    };
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(3600), dep.call(hang))
        .await
        .expect("the call was not bounded by the timeout")
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(matches!(
        &e,
        CallError::Timeout { after, attempts: 1, .. } if *after == Duration::from_secs(2)
    ));
    assert!(e.is_transient());
    let status = dep.status();
    assert_eq!(
        (
            status.failures,
            status.timeouts,
            status.consecutive_failures
        ),
        (1, 1, 1)
    );
    assert_eq!(status.in_flight, 0);
    assert_eq!(status.last_error.as_deref(), Some("timed out after 2s"));

    dep.call(hang).await.unwrap_err();
    assert!(dep.status().breaker.is_open());
    assert!(matches!(dep.call(hang).await, Err(CallError::Open { .. })));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_are_retried_up_to_the_limit_permanent_ones_not() {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let config = DependencyConfig::default()
        .with_retries(3)
        .with_backoff(backoff)
        .with_failure_threshold(100);

    let dep = Dependency::new("bank", config.clone());
    let calls = Counter::default();
    let started = Instant::now();
    let e = outcome(&dep, &calls, Err(TestError::Transient))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CallError::Failed {
                attempts: 4,
                transient: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert_eq!(calls.get(), 4);
    // Three waits, each in the upper half of its ceiling (100, 200, 400 ms).
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited <= Duration::from_millis(703),
        "{waited:?}"
    );

    let calls = Counter::default();
    let e = outcome(&dep, &calls, Err(TestError::Permanent))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        CallError::Failed {
            attempts: 1,
            transient: false,
            ..
        }
    ));
    assert!(!e.is_transient());
    assert_eq!(calls.get(), 1);

    // Success after two transient failures.
    let calls = Counter::default();
    let value = dep
        .call(|| {
            calls.hit();
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(TestError::Transient)
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 3);

    // Timeouts are retried too.
    let calls = Counter::default();
    let value = dep
        .call_with(
            |_: &TestError| false,
            || {
                calls.hit();
                let first = calls.get() == 1;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    Ok("answered")
                }
            },
        )
        .await
        .unwrap();
    assert_eq!((value, calls.get()), ("answered", 2));
    assert_eq!(dep.status().timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn retries_of_many_callers_failing_at_once_spread_out() {
    const CALLERS: usize = 200;
    let ceiling = Duration::from_secs(1);
    let dep = Dependency::new(
        "bank",
        DependencyConfig::default()
            .with_retries(1)
            .with_backoff(Backoff::new(ceiling, Duration::from_secs(10)))
            .with_failure_threshold(u32::MAX)
            .with_max_concurrent(CALLERS),
    );
    let t0 = Instant::now();
    let retried_at = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (dep, retried_at) = (dep.clone(), retried_at.clone());
            tokio::spawn(async move {
                let mut attempt = 0;
                dep.call(|| {
                    attempt += 1;
                    let first = attempt == 1;
                    if !first {
                        retried_at.lock().unwrap().push(t0.elapsed());
                    }
                    async move {
                        if first {
                            Err(TestError::Transient)
                        } else {
                            Ok(())
                        }
                    }
                })
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let delays = retried_at.lock().unwrap().clone();
    assert_eq!(delays.len(), CALLERS);
    let distinct: BTreeSet<_> = delays.iter().copied().collect();
    let (min, max) = (*distinct.first().unwrap(), *distinct.last().unwrap());
    assert!(
        distinct.len() > 20,
        "retries in lockstep: {} distinct delays",
        distinct.len()
    );
    assert!(
        max - min >= ceiling / 4,
        "delays span only {min:?}..{max:?}"
    );
    assert!(
        min >= ceiling / 2 && max <= ceiling + Duration::from_millis(1),
        "{min:?}..{max:?}"
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Succeed,
    FailTransient,
    FailPermanent,
    Hang,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Succeed),
        4 => Just(Op::FailTransient),
        1 => Just(Op::FailPermanent),
        1 => Just(Op::Hang),
        3 => (1u64..15_000).prop_map(Op::Advance),
    ]
}

/// The breaker as the docs describe it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    Closed { failures: u32 },
    Open { until: Instant, failures: u32 },
    HalfOpen { failures: u32 },
}

impl Model {
    fn at(self, now: Instant) -> Self {
        match self {
            Self::Open { until, failures } if now >= until => Self::HalfOpen { failures },
            other => other,
        }
    }

    fn state(self, now: Instant) -> (BreakerState, u32) {
        match self.at(now) {
            Self::Closed { failures } => (BreakerState::Closed, failures),
            Self::Open { until, failures } => (
                BreakerState::Open {
                    retry_after: until - now,
                },
                failures,
            ),
            Self::HalfOpen { failures } => (BreakerState::HalfOpen, failures),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn breaker_invariants(
        threshold in 1u32..5,
        open_for_ms in 1u64..20_000,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let open_for = Duration::from_millis(open_for_ms);
            let timeout = Duration::from_millis(500);
            let dep = Dependency::new(
                "prop",
                DependencyConfig::default()
                    .with_retries(0)
                    .with_timeout(timeout)
                    .with_failure_threshold(threshold)
                    .with_open_for(open_for),
            );
            let calls = Counter::default();
            let mut model = Model::Closed { failures: 0 };
            for op in ops {
                let before = dep.status().breaker;
                let called = calls.get();
                let start = Instant::now();
                let result = match op {
                    Op::Advance(ms) => {
                        tokio::time::advance(Duration::from_millis(ms)).await;
                        None
                    }
                    Op::Succeed => Some(outcome(&dep, &calls, Ok(())).await),
                    Op::FailTransient => Some(outcome(&dep, &calls, Err(TestError::Transient)).await),
                    Op::FailPermanent => Some(outcome(&dep, &calls, Err(TestError::Permanent)).await),
                    Op::Hang => Some(
                        dep.call(|| {
                            calls.hit();
                            std::future::pending::<Result<(), TestError>>()
                        })
                        .await,
                    ),
                };
                let now = Instant::now();
                let invoked = calls.get() > called;
                if let Some(result) = &result {
                    // Never calls through while open before open_for has elapsed.
                    if let BreakerState::Open { .. } = before {
                        prop_assert!(!invoked, "called while open: {op:?}");
                        prop_assert!(matches!(result, Err(CallError::Open { .. })), "{:?}", result);
                    } else {
                        prop_assert!(invoked, "refused while {before:?}");
                    }
                }
                let after = dep.status().breaker;
                // Closes only after a healthy answer.
                if after.is_closed() && !before.is_closed() {
                    prop_assert!(invoked && matches!(op, Op::Succeed | Op::FailPermanent), "{op:?}");
                }
                // And exactly as the model says.
                model = match (model.at(start), &op) {
                    (m, Op::Advance(_)) => m,
                    (m @ Model::Open { .. }, _) => m,
                    (Model::Closed { .. } | Model::HalfOpen { .. }, Op::Succeed | Op::FailPermanent) => {
                        Model::Closed { failures: 0 }
                    }
                    (Model::Closed { failures }, Op::FailTransient | Op::Hang) if failures + 1 < threshold => {
                        Model::Closed { failures: failures + 1 }
                    }
                    (Model::Closed { failures } | Model::HalfOpen { failures }, _) => Model::Open {
                        until: now + open_for,
                        failures: failures + 1,
                    },
                };
                let status = dep.status();
                prop_assert_eq!((status.breaker, status.consecutive_failures), model.state(now), "after {:?}", op);
                prop_assert_eq!(status.in_flight, 0);
                if matches!(op, Op::Hang) && invoked {
                    prop_assert_eq!(now - start, timeout);
                }
            }
            Ok(())
        })?;
    }
}
