//! Reads a written result back (`summary.json` + curves CSV), so plots can
//! be redrawn without re-running a long simulation.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::curve::{Band, Checkpoints};
use crate::report::{PolicyResult, ReferenceCurve, ScenarioResult};

/// Loads the result written to `dir` by [`ScenarioResult::write`] with an
/// empty stem.
pub fn load(dir: &Path) -> Result<ScenarioResult> {
    let path = dir.join("summary.json");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let summary: serde_json::Value = serde_json::from_str(&text).context("decode summary")?;
    let scenario = summary["scenario"]
        .as_str()
        .ok_or_else(|| anyhow!("summary has no scenario"))?;
    let csv_path = dir.join(format!("{scenario}-curves.csv"));
    let csv =
        fs::read_to_string(&csv_path).with_context(|| format!("read {}", csv_path.display()))?;
    let rows = parse_csv(&csv)?;
    let mut steps: Vec<u64> = rows.iter().map(|r| r.t).collect();
    steps.sort_unstable();
    steps.dedup();
    let names = |key: &str| -> Vec<String> {
        summary[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let column = |name: &str, pick: fn(&Row) -> f64| -> Vec<f64> {
        rows.iter().filter(|r| r.policy == name).map(pick).collect()
    };
    let policies = names("policies")
        .iter()
        .zip(summary["policies"].as_array().into_iter().flatten())
        .map(|(name, p)| PolicyResult {
            name: name.clone(),
            band: Band {
                mean: column(name, |r| r.mean),
                se: column(name, |r| r.se),
                clicks_mean: column(name, |r| r.clicks),
                seeds: p["seeds"].as_u64().unwrap_or(1) as usize,
            },
            examples_per_s: p["examples_per_s"].as_f64().unwrap_or(f64::NAN),
            note: p["note"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let references = names("references")
        .into_iter()
        .map(|name| ReferenceCurve {
            values: column(&name, |r| r.mean),
            name,
        })
        .collect();
    Ok(ScenarioResult {
        scenario: scenario.to_string(),
        seed: summary["seed"].as_u64().unwrap_or(0),
        params: summary["params"].clone(),
        checkpoints: Checkpoints::from_steps(steps),
        policies,
        references,
        notes: summary["notes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

struct Row {
    t: u64,
    policy: String,
    mean: f64,
    se: f64,
    clicks: f64,
}

fn parse_csv(csv: &str) -> Result<Vec<Row>> {
    csv.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, line)| parse_row(line).with_context(|| format!("curves csv line {}", i + 2)))
        .collect()
}

/// Splits `t,policy,mean,se,clicks` where `policy` may be quoted.
fn parse_row(line: &str) -> Result<Row> {
    let (t, rest) = line.split_once(',').ok_or_else(|| anyhow!("no fields"))?;
    let (policy, rest) = if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted
            .find("\",")
            .ok_or_else(|| anyhow!("unterminated quote"))?;
        (quoted[..end].replace("\"\"", "\""), &quoted[end + 2..])
    } else {
        let (p, r) = rest.split_once(',').ok_or_else(|| anyhow!("no policy"))?;
        (p.to_string(), r)
    };
    let mut numbers = rest.split(',');
    let mut next = || -> f64 {
        numbers
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Row {
        t: t.parse().context("t")?,
        policy,
        mean: next(),
        se: next(),
        clicks: next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::Curve;

    #[test]
    fn write_then_load_round_trip() {
        let checkpoints = Checkpoints::from_steps(vec![1, 10, 100]);
        let band = Band::from_curves(&[
            Curve {
                regret: vec![0.5, 3.0, 8.0],
                clicks: vec![0.0, 1.0, 5.0],
            },
            Curve {
                regret: vec![0.5, 4.0, 9.0],
                clicks: vec![1.0, 2.0, 6.0],
            },
        ]);
        let result = ScenarioResult {
            scenario: "unit".into(),
            seed: 9,
            params: serde_json::json!({"k": 1}),
            checkpoints,
            policies: vec![PolicyResult {
                name: "e-greedy(0.1), \"x\"".into(),
                band,
                examples_per_s: 12.0,
                note: "n".into(),
            }],
            references: vec![ReferenceCurve {
                name: "bound".into(),
                values: vec![0.0, 1.0, 2.0],
            }],
            notes: vec!["hi".into()],
        };
        let dir = tempfile::tempdir().unwrap();
        result.write(dir.path(), "").unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.checkpoints, result.checkpoints);
        assert_eq!(back.policies[0].name, result.policies[0].name);
        assert_eq!(back.policies[0].band, result.policies[0].band);
        assert_eq!(back.references[0].values, result.references[0].values);
        assert_eq!((back.seed, back.notes.clone()), (9, vec!["hi".to_string()]));
    }
}
