//! What a scenario is, how it is timed, and how its outcome becomes a row.

use std::{future::Future, time::Instant};

use futures::future::BoxFuture;

use crate::{
    BenchResult,
    env::Ctx,
    report::{BaselineResult, Row, Stats, Status, Target},
};

/// The fixed description of a scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    /// Stable name, e.g. `pg.append.batched`.
    pub(crate) name: &'static str,
    /// Backend group.
    pub(crate) group: &'static str,
    /// What the framework side does.
    pub(crate) description: &'static str,
    /// What the baseline does.
    pub(crate) baseline: &'static str,
    /// The target from the issues.
    pub(crate) target: Option<Target>,
}

/// What one scenario measured: events per run and events/s of each run of each side.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    /// Events per timed run.
    pub(crate) events: u64,
    /// Framework runs.
    pub(crate) framework: Vec<f64>,
    /// Baseline runs.
    pub(crate) baseline: Vec<f64>,
}

impl Measured {
    /// Nothing measured yet of a scenario whose timed runs handle `events` events each.
    pub(crate) fn new(events: u64) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }
}

/// A scenario: its spec and the function that measures it.
pub(crate) struct Scenario {
    /// The description.
    pub(crate) spec: Spec,
    /// Runs it.
    pub(crate) run: for<'a> fn(&'a Ctx) -> BoxFuture<'a, BenchResult<Measured>>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.spec.fmt(f)
    }
}

/// Times `work`, which handles `events` events, and returns events/s.
///
/// # Errors
/// Whatever `work` returns.
pub(crate) async fn timed<F>(events: u64, work: F) -> BenchResult<f64>
where
    F: Future<Output = BenchResult<()>>,
{
    let start = Instant::now();
    work.await?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(events as f64 / secs)
}

/// Turns a measurement (or the error that stopped it) into a row.
pub(crate) fn row(spec: &Spec, runs: usize, outcome: BenchResult<Measured>) -> Row {
    let mut row = Row {
        scenario: spec.name,
        group: spec.group,
        description: spec.description,
        events: 0,
        runs,
        events_per_sec: None,
        baseline: None,
        ratio: None,
        target: spec.target,
        meets_target: None,
        status: Status::Ok,
        note: None,
    };
    let measured = match outcome {
        Ok(m) => m,
        Err(error) => {
            row.status = Status::Failed;
            row.note = Some(error.to_string());
            return row;
        }
    };
    row.events = measured.events;
    row.baseline = Stats::of(&measured.baseline).map(|s| BaselineResult {
        name: spec.baseline,
        events_per_sec: s,
    });
    row.events_per_sec = Stats::of(&measured.framework);
    if row.events_per_sec.is_none() {
        row.status = Status::Failed;
    }
    if let (Some(fw), Some(base)) = (row.events_per_sec, &row.baseline) {
        let ratio = fw.median / base.events_per_sec.median;
        row.ratio = Some(ratio);
        row.meets_target = spec.target.map(|t| ratio >= t.min_ratio);
    }
    row
}

/// One line for the log above the progress bar.
pub(crate) fn summary(row: &Row) -> String {
    let fw = row.events_per_sec.map_or_else(
        || format!("{:?}", row.status),
        |s| format!("{:.0} ev/s", s.median),
    );
    let base = row.baseline.as_ref().map_or("-".into(), |b| {
        format!("{:.0} ev/s", b.events_per_sec.median)
    });
    let ratio = row.ratio.map_or("-".into(), |r| format!("{r:.2}"));
    let note = row
        .note
        .as_deref()
        .map_or(String::new(), |n| format!(" ({n})"));
    format!(
        "{:<28} {fw:>14}  baseline {base:>14}  ratio {ratio}{note}",
        row.scenario
    )
}
