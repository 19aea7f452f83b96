//! Results of a scenario and their outputs: the printed table,
//! `summary.json` and the curves' CSV.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::curve::{Band, Checkpoints};

/// One policy's aggregated outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    /// Row label, e.g. `ts-beta` or `vw squarecb gamma_scale=100`.
    pub name: String,
    /// Regret mean ± s.e. over seeds, per checkpoint.
    pub band: Band,
    /// Requests (steps) simulated per second of wall time, per job.
    pub examples_per_s: f64,
    /// Free text (e.g. the VW command line).
    pub note: String,
}

impl PolicyResult {
    /// Final click-through rate: mean clicks per step at the horizon.
    pub fn ctr(&self, horizon: u64) -> f64 {
        match self.band.clicks_mean.last() {
            Some(&clicks) if horizon > 0 => clicks / horizon as f64,
            _ => f64::NAN,
        }
    }
}

/// A reference curve drawn beside the policies (e.g. the shifted bound).
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceCurve {
    /// Label.
    pub name: String,
    /// Value per checkpoint.
    pub values: Vec<f64>,
}

/// Everything a scenario produced.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name, also the file-name stem of its outputs.
    pub scenario: String,
    /// The `--seed` the run replays from.
    pub seed: u64,
    /// Every parameter of the run.
    pub params: serde_json::Value,
    /// The checkpoint steps shared by all curves.
    pub checkpoints: Checkpoints,
    /// One row per policy.
    pub policies: Vec<PolicyResult>,
    /// Reference curves (bounds).
    pub references: Vec<ReferenceCurve>,
    /// Remarks printed under the table (skipped peers, tuning choices).
    pub notes: Vec<String>,
}

impl ScenarioResult {
    /// The horizon (last checkpoint).
    pub fn horizon(&self) -> u64 {
        self.checkpoints.horizon()
    }

    /// The plain-text table: final regret, CTR and speed per policy, then
    /// regret at each power of ten.
    pub fn table(&self) -> String {
        let horizon = self.horizon();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} (seed {}, T = {horizon})",
            self.scenario, self.seed
        );
        let name_width = self
            .policies
            .iter()
            .map(|p| p.name.len())
            .chain(self.references.iter().map(|r| r.name.len()))
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "{:<name_width$}  {:>22}  {:>8}  {:>12}",
            "policy", "regret@T (mean ± s.e.)", "CTR %", "examples/s"
        );
        for p in &self.policies {
            let (mean, se) = p.band.last();
            let _ = writeln!(
                out,
                "{:<name_width$}  {:>22}  {:>8.3}  {:>12.0}",
                p.name,
                mean_se(mean, se, p.band.seeds),
                100.0 * p.ctr(horizon),
                p.examples_per_s
            );
        }
        for r in &self.references {
            let last = r.values.last().copied().unwrap_or(f64::NAN);
            let _ = writeln!(out, "{:<name_width$}  {:>22.1}", r.name, last);
        }
        out.push_str(&self.decade_table(name_width));
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    fn decade_table(&self, name_width: usize) -> String {
        let decades: Vec<(usize, u64)> = self
            .checkpoints
            .steps()
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t >= 1_000 && is_power_of_ten(t))
            .map(|(i, &t)| (i, t))
            .collect();
        if decades.is_empty() {
            return String::new();
        }
        let mut out = String::from("regret at T =\n");
        let _ = write!(out, "{:<name_width$}", "policy");
        for &(_, t) in &decades {
            let _ = write!(out, "  {:>18}", format!("1e{}", t.ilog10()));
        }
        out.push('\n');
        for p in &self.policies {
            let _ = write!(out, "{:<name_width$}", p.name);
            for &(i, _) in &decades {
                let cell = match (p.band.mean.get(i), p.band.se.get(i)) {
                    (Some(m), Some(s)) => mean_se(*m, *s, p.band.seeds),
                    _ => "-".to_string(),
                };
                let _ = write!(out, "  {cell:>18}");
            }
            out.push('\n');
        }
        for r in &self.references {
            let _ = write!(out, "{:<name_width$}", r.name);
            for &(i, _) in &decades {
                let cell = r
                    .values
                    .get(i)
                    .map_or("-".to_string(), |v| format!("{v:.1}"));
                let _ = write!(out, "  {cell:>18}");
            }
            out.push('\n');
        }
        out
    }

    /// The compact JSON summary: parameters, and per policy the final
    /// regret (mean, s.e.), CTR, speed and regret at powers of ten.
    pub fn summary_json(&self) -> serde_json::Value {
        let horizon = self.horizon();
        let steps = self.checkpoints.steps();
        let at_decades = |values: &[f64]| -> serde_json::Map<String, serde_json::Value> {
            steps
                .iter()
                .zip(values)
                .filter(|&(&t, _)| is_power_of_ten(t) || t == horizon)
                .map(|(t, v)| (t.to_string(), serde_json::json!(v)))
                .collect()
        };
        let policies: Vec<_> = self
            .policies
            .iter()
            .map(|p| {
                let (mean, se) = p.band.last();
                serde_json::json!({
                    "name": p.name,
                    "final_regret_mean": mean,
                    "final_regret_se": se,
                    "ctr": p.ctr(horizon),
                    "examples_per_s": p.examples_per_s,
                    "seeds": p.band.seeds,
                    "regret_mean_at": at_decades(&p.band.mean),
                    "regret_se_at": at_decades(&p.band.se),
                    "note": p.note,
                })
            })
            .collect();
        let references: Vec<_> = self
            .references
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "at": at_decades(&r.values)}))
            .collect();
        serde_json::json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "horizon": horizon,
            "params": self.params,
            "policies": policies,
            "references": references,
            "notes": self.notes,
        })
    }

    /// The curves as CSV: `t,policy,regret_mean,regret_se,clicks_mean`.
    pub fn csv(&self) -> String {
        let mut out = String::from("t,policy,regret_mean,regret_se,clicks_mean\n");
        for p in &self.policies {
            for (i, t) in self.checkpoints.steps().iter().enumerate() {
                let (Some(m), Some(s), Some(c)) = (
                    p.band.mean.get(i),
                    p.band.se.get(i),
                    p.band.clicks_mean.get(i),
                ) else {
                    break;
                };
                let _ = writeln!(out, "{t},{},{m},{s},{c}", csv_field(&p.name));
            }
        }
        for r in &self.references {
            for (t, v) in self.checkpoints.steps().iter().zip(&r.values) {
                let _ = writeln!(out, "{t},{},{v},0,", csv_field(&r.name));
            }
        }
        out
    }

    /// Writes `<dir>/summary.json` (or `<stem>-summary.json`) and
    /// `<dir>/<stem>-curves.csv`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let summary_name = if stem.is_empty() {
            "summary.json".to_string()
        } else {
            format!("{stem}-summary.json")
        };
        let json = serde_json::to_string_pretty(&self.summary_json()).context("encode summary")?;
        let summary = dir.join(summary_name);
        fs::write(&summary, json + "\n").with_context(|| format!("write {}", summary.display()))?;
        let csv = dir.join(format!("{}-curves.csv", self.file_stem(stem)));
        fs::write(&csv, self.csv()).with_context(|| format!("write {}", csv.display()))?;
        Ok(())
    }

    /// The stem used for CSV and PNG names.
    pub fn file_stem(&self, stem: &str) -> String {
        if stem.is_empty() {
            self.scenario.clone()
        } else {
            stem.to_string()
        }
    }
}

fn is_power_of_ten(mut t: u64) -> bool {
    while t >= 10 && t.is_multiple_of(10) {
        t /= 10;
    }
    t == 1
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// "mean ± s.e.", or the mean alone when one seed leaves the error undefined.
fn mean_se(mean: f64, se: f64, seeds: usize) -> String {
    if seeds < 2 {
        format!("{mean:.1}")
    } else {
        format!("{mean:.1} ± {se:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::Curve;

    fn sample() -> ScenarioResult {
        let checkpoints = Checkpoints::from_steps(vec![1, 10, 100, 1000, 2000]);
        let curve = Curve {
            regret: vec![0.1, 1.0, 5.0, 9.0, 10.0],
            clicks: vec![0.0, 1.0, 10.0, 100.0, 200.0],
        };
        ScenarioResult {
            scenario: "unit".into(),
            seed: 3,
            params: serde_json::json!({"arms": 2}),
            checkpoints,
            policies: vec![PolicyResult {
                name: "a,b".into(),
                band: Band::from_curves(&[curve]),
                examples_per_s: 1e6,
                note: String::new(),
            }],
            references: vec![ReferenceCurve {
                name: "bound".into(),
                values: vec![0.0, 0.0, 0.0, 1.0, 2.0],
            }],
            notes: vec!["hello".into()],
        }
    }

    #[test]
    fn table_csv_and_summary() {
        let r = sample();
        let table = r.table();
        // One seed: the standard error is undefined and not printed.
        let row = table.lines().find(|l| l.starts_with("a,b")).unwrap();
        assert!(row.contains("10.0") && !row.contains('±'), "{table}");
        assert_eq!(mean_se(10.0, 0.5, 2), "10.0 ± 0.5");
        assert!(table.contains("1e3"), "{table}");
        assert!(table.contains("note: hello"));
        let csv = r.csv();
        assert!(csv.starts_with("t,policy,"));
        assert!(csv.contains("2000,\"a,b\",10,0,200"), "{csv}");
        let json = r.summary_json();
        assert_eq!(json["seed"], 3);
        assert_eq!(json["policies"][0]["ctr"], 0.1);
        assert_eq!(json["policies"][0]["regret_mean_at"]["1000"], 9.0);
        assert_eq!(json["policies"][0]["regret_mean_at"]["2000"], 10.0);
    }

    #[test]
    fn powers_of_ten() {
        assert!(is_power_of_ten(1) && is_power_of_ten(1000));
        assert!(!is_power_of_ten(20) && !is_power_of_ten(0));
    }
}
