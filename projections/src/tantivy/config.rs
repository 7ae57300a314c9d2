//! Settings of a tantivy read model.

use std::time::Duration;

/// Settings of a tantivy read model.
#[derive(Debug, Clone)]
pub struct TantivyConfig {
    /// The writer's memory budget over all its threads.
    pub memory_budget: usize,
    /// Indexing threads (`None`: tantivy's choice, up to the cores).
    pub threads: Option<usize>,
    /// While catching up or rebuilding, commit at most this often (each commit flushes
    /// segments); live writes commit at once.
    pub commit_interval: Duration,
}

impl Default for TantivyConfig {
    fn default() -> Self {
        Self {
            memory_budget: 256 << 20,
            threads: None,
            commit_interval: Duration::from_secs(10),
        }
    }
}

impl TantivyConfig {
    /// 256 MiB, tantivy's thread count, a commit every 10 s while catching up.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the memory budget (at least 15 MB per thread, tantivy's minimum).
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Sets the number of indexing threads.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// Sets the catch-up commit interval.
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }
}
