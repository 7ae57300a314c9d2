//! Results: per-scenario statistics, the printed table and the JSON file.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

/// Median, minimum and maximum of the events/s of several runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// The median (the mean of the two middle runs for an even count).
    pub median: f64,
    /// The slowest run.
    pub min: f64,
    /// The fastest run.
    pub max: f64,
}

impl Stats {
    /// Statistics of the runs, or `None` when there are none.
    pub fn of(runs: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = runs.iter().copied().filter(|r| r.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let (first, last) = (sorted.first()?, sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Some(Self {
            median,
            min: *first,
            max: *last,
        })
    }
}

/// A target from the issues: the framework must reach `min_ratio` of its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Target {
    /// Lowest acceptable framework/baseline ratio.
    pub min_ratio: f64,
    /// Where the target comes from.
    pub source: &'static str,
}

/// The baseline's part of a row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineResult {
    /// What the baseline does.
    pub name: &'static str,
    /// Its events/s.
    pub events_per_sec: Stats,
}

/// Whether a scenario produced numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured.
    Ok,
    /// It ran and failed; see the note.
    Failed,
}

/// One line of the table and one object of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Stable scenario name, e.g. `pg.append.batched`.
    pub scenario: &'static str,
    /// Which backend it measures.
    pub group: &'static str,
    /// What the framework side does.
    pub description: &'static str,
    /// Events per run.
    pub events: u64,
    /// Timed runs of each side.
    pub runs: usize,
    /// Framework events/s.
    pub events_per_sec: Option<Stats>,
    /// Baseline events/s.
    pub baseline: Option<BaselineResult>,
    /// Framework median / baseline median.
    pub ratio: Option<f64>,
    /// The target from the issues, if any.
    pub target: Option<Target>,
    /// Whether the ratio meets the target (`None` without a target or a ratio).
    pub meets_target: Option<bool>,
    /// Measured or not.
    pub status: Status,
    /// Why it is missing or failed, or a remark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The whole JSON document.
#[derive(Debug, Serialize)]
pub(crate) struct Report<'a> {
    /// The machine and sizes.
    pub environment: &'a serde_json::Value,
    /// One object per scenario.
    pub scenarios: &'a [Row],
}

fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// The table as Markdown-compatible text.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | events | median ev/s | min | max | baseline ev/s (median) | ratio | target |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let (median, min, max) = match row.events_per_sec {
            Some(s) => (rate(s.median), rate(s.min), rate(s.max)),
            None => ("failed".into(), "-".into(), "-".into()),
        };
        let baseline = row
            .baseline
            .as_ref()
            .map_or("-".into(), |b| rate(b.events_per_sec.median));
        let ratio = row.ratio.map_or("-".into(), |r| format!("{r:.2}"));
        let target = match (row.target, row.meets_target) {
            (Some(t), Some(true)) => format!(">= {:.2} met", t.min_ratio),
            (Some(t), Some(false)) => format!(">= {:.2} MISSED", t.min_ratio),
            (Some(t), None) => format!(">= {:.2}", t.min_ratio),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {median} | {min} | {max} | {baseline} | {ratio} | {target} |",
            row.scenario, row.events
        );
    }
    out
}

/// Writes the JSON report, creating the parent directory.
///
/// # Errors
/// I/O errors.
pub(crate) fn write_json(path: &Path, report: &Report<'_>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(207_000.0), "207k");
        assert_eq!(rate(3_400.0), "3.4k");
        assert_eq!(rate(1_500_000.0), "1.50M");
    }
}
