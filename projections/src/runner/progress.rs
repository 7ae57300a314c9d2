//! Rebuild progress: in the status (watch it with `ProjectionRunner::watch`) and, unless
//! silenced, as `tracing` events every few seconds. The library draws nothing itself: an
//! application that wants a bar draws it from the watched status.

use std::time::{Duration, Instant};

use crate::{Generation, RebuildProgress};

/// How a rebuild reports its progress beside the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressDisplay {
    /// `tracing` info events every few seconds (the same as `Tracing`).
    #[default]
    Auto,
    /// `tracing` info events every few seconds.
    Tracing,
    /// Nothing but the status.
    Silent,
}

/// Tracks one rebuild.
#[derive(Debug)]
pub(crate) struct Progress {
    projection: String,
    generation: Generation,
    total: u64,
    done: u64,
    started: Instant,
    window_start: (Instant, u64),
    rate: f64,
    last_log: Instant,
    log: bool,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub(crate) fn new(
        projection: &str,
        generation: Generation,
        total: u64,
        display: ProgressDisplay,
    ) -> Self {
        let now = Instant::now();
        tracing::info!(
            projection,
            generation = generation.0,
            total,
            "rebuild started"
        );
        Self {
            projection: projection.to_owned(),
            generation,
            total,
            done: 0,
            started: now,
            window_start: (now, 0),
            rate: 0.0,
            last_log: now,
            log: display != ProgressDisplay::Silent,
        }
    }

    /// Records that the rebuild has read up to `done` events.
    pub(crate) fn advance(&mut self, done: u64) -> RebuildProgress {
        self.done = done;
        self.total = self.total.max(done);
        let now = Instant::now();
        let window = now.duration_since(self.window_start.0);
        if window >= Duration::from_millis(500) {
            let n = done.saturating_sub(self.window_start.1);
            self.rate = n as f64 / window.as_secs_f64();
            self.window_start = (now, done);
        } else if self.rate == 0.0 {
            let secs = now.duration_since(self.started).as_secs_f64();
            if secs > 0.0 {
                self.rate = done as f64 / secs;
            }
        }
        let progress = self.snapshot();
        if self.log && now.duration_since(self.last_log) >= LOG_EVERY {
            self.last_log = now;
            tracing::info!(
                projection = %self.projection,
                generation = self.generation.0,
                done,
                total = self.total,
                events_per_second = progress.events_per_second.round(),
                seconds_left = progress.seconds_left.map(f64::round),
                "rebuild progress"
            );
        }
        progress
    }

    pub(crate) fn snapshot(&self) -> RebuildProgress {
        let left = self.total.saturating_sub(self.done);
        RebuildProgress {
            generation: self.generation,
            events_done: self.done,
            events_total: self.total,
            events_per_second: self.rate,
            seconds_left: (self.rate > 0.0).then(|| left as f64 / self.rate),
        }
    }

    pub(crate) fn finish(self) {
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(
            projection = %self.projection,
            generation = self.generation.0,
            events = self.done,
            seconds = secs,
            events_per_second = if secs > 0.0 { (self.done as f64 / secs).round() } else { 0.0 },
            "rebuild finished"
        );
    }
}
