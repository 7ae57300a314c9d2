//! Ownership of a projection: one runner at a time, with a fencing number.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

use crate::{Fence, Result};

/// Where runners take turns owning projections.
///
/// A lease lasts `ttl` unless renewed; taking a lease (a new owner, or the same owner again)
/// always hands out a fence higher than every earlier one of that projection. The runner
/// keeps the lease object behind `Arc<dyn LeaseStore>`, so the methods return boxed futures.
pub trait LeaseStore: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the lease of `projection` for `owner` if it is free or expired; returns the new
    /// fence, or `None` while another owner holds it.
    ///
    /// # Errors
    /// Backend errors (transient ones are retried by the runner).
    fn try_acquire<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Fence>>>;

    /// Extends the lease held by `owner` with `fence`; `false` when it is no longer held.
    ///
    /// # Errors
    /// Backend errors.
    fn renew<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Gives the lease up so another runner can take it at once.
    ///
    /// # Errors
    /// Backend errors.
    fn release<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
    ) -> BoxFuture<'a, Result<()>>;
}

/// Leases in process memory: the single-process mode, which needs no database. Clones share
/// the leases.
///
/// **One process only.** Fences start again at 1 in every process, while a persistent read
/// model (Redis, tantivy, SQL tables) remembers the highest fence it saw: a second process
/// (or the next run of a command-line tool) over the same read model would be refused as
/// fenced. Use a lease store kept beside the data for that: `PgLeases` or `SqliteLeases`
/// (crate `annals-projections-sql`), whose fences grow across processes. It fits the
/// in-process read model, which lives and dies with its process.
#[derive(Debug, Clone, Default)]
pub struct InMemoryLeases {
    leases: Arc<Mutex<HashMap<String, MemLease>>>,
}

#[derive(Debug, Clone)]
struct MemLease {
    owner: String,
    fence: Fence,
    expires: Instant,
}

impl InMemoryLeases {
    /// No leases taken yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, MemLease>) -> T) -> T {
        // Every update below is a single insert or field write: a poisoned map is consistent.
        let mut map = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut map)
    }
}

impl LeaseStore for InMemoryLeases {
    fn try_acquire<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Fence>>> {
        let now = Instant::now();
        let fence = self.with(|map| match map.get_mut(projection) {
            Some(lease) if lease.owner != owner && lease.expires > now => None,
            Some(lease) => {
                lease.owner = owner.to_owned();
                lease.fence += 1;
                lease.expires = now + ttl;
                Some(lease.fence)
            }
            None => {
                map.insert(
                    projection.to_owned(),
                    MemLease {
                        owner: owner.to_owned(),
                        fence: 1,
                        expires: now + ttl,
                    },
                );
                Some(1)
            }
        });
        Box::pin(async move { Ok(fence) })
    }

    fn renew<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let now = Instant::now();
        let held = self.with(|map| match map.get_mut(projection) {
            Some(lease) if lease.owner == owner && lease.fence == fence && lease.expires > now => {
                lease.expires = now + ttl;
                true
            }
            _ => false,
        });
        Box::pin(async move { Ok(held) })
    }

    fn release<'a>(
        &'a self,
        projection: &'a str,
        owner: &'a str,
        fence: Fence,
    ) -> BoxFuture<'a, Result<()>> {
        self.with(|map| {
            if let Some(lease) = map.get_mut(projection)
                && lease.owner == owner
                && lease.fence == fence
            {
                lease.expires = Instant::now();
            }
        });
        Box::pin(async { Ok(()) })
    }
}

/// The runner's local view of a held lease: valid until the last successful renewal's start
/// plus the ttl minus a safety margin, so a paused runner knows on waking that it may no
/// longer write, without asking anyone.
#[derive(Debug, Clone)]
pub(crate) struct LeaseGuard {
    pub(crate) fence: Fence,
    projection: Arc<str>,
    valid_until: Arc<Mutex<Instant>>,
}

impl LeaseGuard {
    pub(crate) fn new(projection: &str, fence: Fence, acquired_at: Instant, ttl: Duration) -> Self {
        Self {
            fence,
            projection: projection.into(),
            valid_until: Arc::new(Mutex::new(acquired_at + margin(ttl))),
        }
    }

    /// Records a renewal that was sent at `sent_at`.
    pub(crate) fn renewed(&self, sent_at: Instant, ttl: Duration) {
        let mut until = self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        *until = (*until).max(sent_at + margin(ttl));
    }

    /// Marks the lease as lost.
    pub(crate) fn lose(&self) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Fails with [`Error::LeaseLost`](crate::Error::LeaseLost) once the lease may have
    /// expired.
    pub(crate) fn check(&self) -> Result<()> {
        let until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() < until {
            Ok(())
        } else {
            Err(crate::Error::LeaseLost {
                projection: self.projection.to_string(),
            })
        }
    }
}

/// The part of a ttl a holder may use: 80%, so clock drift and a slow renewal never let two
/// owners believe they hold one lease.
fn margin(ttl: Duration) -> Duration {
    ttl.mul_f64(0.8)
}

/// Renews the lease every quarter of its ttl; reports a loss. Each renewal waits at most half
/// the ttl (a silent network to the lease store is a failed renewal, not a wait without
/// end), so a lease that can no longer be renewed is reported lost once it may have expired.
pub(crate) async fn renew(
    leases: Arc<dyn LeaseStore>,
    projection: String,
    owner: Arc<str>,
    guard: LeaseGuard,
    ttl: Duration,
    lost: tokio::sync::watch::Sender<bool>,
) {
    loop {
        tokio::time::sleep(ttl / 4).await;
        let sent = Instant::now();
        let renewal =
            tokio::time::timeout(ttl / 2, leases.renew(&projection, &owner, guard.fence, ttl))
                .await;
        match renewal {
            Ok(Ok(true)) => guard.renewed(sent, ttl),
            Ok(Ok(false)) => {
                guard.lose();
                let _ = lost.send(true);
                return;
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", ttl / 2),
                };
                tracing::warn!(projection, error, "renewing the lease failed");
                if guard.check().is_err() {
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease store that grants once and then never answers (a silent network).
    #[derive(Debug)]
    struct Silent;

    impl LeaseStore for Silent {
        fn try_acquire<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<Option<Fence>>> {
            Box::pin(async { Ok(Some(1)) })
        }
        fn renew<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: Fence,
            _: Duration,
        ) -> BoxFuture<'a, Result<bool>> {
            Box::pin(futures::future::pending())
        }
        fn release<'a>(&'a self, _: &'a str, _: &'a str, _: Fence) -> BoxFuture<'a, Result<()>> {
            Box::pin(futures::future::pending())
        }
    }

    #[tokio::test]
    async fn a_silent_lease_store_is_a_lost_lease_within_the_ttl() {
        let ttl = Duration::from_millis(200);
        let start = Instant::now();
        let guard = LeaseGuard::new("p", 1, start, ttl);
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(renew(
            Arc::new(Silent),
            "p".into(),
            "me".into(),
            guard.clone(),
            ttl,
            tx,
        ));
        tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|lost| *lost))
            .await
            .expect("the loss was reported")
            .unwrap();
        // Lost once the lease may have expired (80% of the ttl), give or take one renewal.
        assert!(start.elapsed() < ttl * 3, "{:?}", start.elapsed());
        assert!(guard.check().is_err());
        task.abort();
    }

    #[tokio::test]
    async fn fences_increase_and_leases_expire() {
        let leases = InMemoryLeases::new();
        let ttl = Duration::from_millis(50);
        let a = leases.try_acquire("p", "a", ttl).await.unwrap();
        assert_eq!(a, Some(1));
        assert_eq!(leases.try_acquire("p", "b", ttl).await.unwrap(), None);
        assert!(leases.renew("p", "a", 1, ttl).await.unwrap());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(leases.try_acquire("p", "b", ttl).await.unwrap(), Some(2));
        assert!(!leases.renew("p", "a", 1, ttl).await.unwrap());
        leases.release("p", "b", 2).await.unwrap();
        assert_eq!(leases.try_acquire("p", "a", ttl).await.unwrap(), Some(3));
    }

    #[test]
    fn guard_expires() {
        let guard = LeaseGuard::new("p", 1, Instant::now(), Duration::from_secs(60));
        assert!(guard.check().is_ok());
        guard.lose();
        assert!(guard.check().unwrap_err().is_ownership_lost());
    }
}
