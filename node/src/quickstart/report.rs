//! What the quickstart prints and writes: a header, a progress line per
//! interval, the summary table, `timeline.csv` and `ctr.png`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use posterior_experiments::plot::{Line, line_plot};
use posterior_learner::runner::RunSummary;

use super::config::{Arm, Policy, QuickstartConfig};
use super::sim::{Freshness, Stats, Tally, locked};

/// The first lines: what runs.
pub fn header(q: &QuickstartConfig, arms: &[Arm], endpoint: &str) {
    let arms: Vec<String> = arms
        .iter()
        .map(|a| format!("{} ({})", a.version, a.policy.name()))
        .collect();
    println!(
        "quickstart: {} requests of {} candidates from {} docs, top {} shown, {:?} CTR, \
         labels joined after {} ms on average (event time)",
        q.requests, q.candidates, q.docs, q.shown, q.ctr, q.mean_label_delay_ms
    );
    println!(
        "quickstart: arms {}; param-server {endpoint}",
        arms.join(", ")
    );
}

/// `p50 / p99` of `h` in ms, or `-` when empty.
fn quantiles_ms(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!("{:.0} / {:.0} ms", ms(0.5), ms(0.99))
}

/// Tally of `now` less `before`, per arm.
fn since(now: &[Tally], before: &[Tally]) -> Vec<Tally> {
    now.iter()
        .zip(before)
        .map(|(n, b)| Tally {
            requests: n.requests - b.requests,
            impressions: n.impressions - b.impressions,
            clicks: n.clicks - b.clicks,
            expected: n.expected - b.expected,
            oracle: n.oracle - b.oracle,
            failed: n.failed - b.failed,
        })
        .collect()
}

/// The oracle's CTR over every arm of `tallies`.
fn oracle_ctr(tallies: &[Tally]) -> f64 {
    let oracle: f64 = tallies.iter().map(|t| t.oracle).sum();
    let impressions: u64 = tallies.iter().map(|t| t.impressions).sum();
    oracle / impressions.max(1) as f64
}

/// Prints a progress line every `every`: the rates since the last line,
/// each arm's true CTR over that interval against the oracle's, and the
/// freshness of the updates seen meanwhile. Runs until aborted.
pub async fn progress(
    stats: Arc<Mutex<Stats>>,
    freshness: Arc<Freshness>,
    arms: Vec<Arm>,
    every: Duration,
) {
    let started = Instant::now();
    let mut last = (Instant::now(), locked(&stats).clone());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let now = (Instant::now(), locked(&stats).clone());
        let seconds = now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        let interval = since(&now.1.total, &last.1.total);
        let requests: u64 = interval.iter().map(|t| t.requests).sum();
        let samples = now.1.samples_sent - last.1.samples_sent;
        let mut line = format!(
            "{:>6.1} s {:>9} requests {:>6.0}/s {:>7.0} samples/s | true CTR %",
            started.elapsed().as_secs_f64(),
            now.1.requests(),
            requests as f64 / seconds,
            samples as f64 / seconds,
        );
        for (arm, tally) in arms.iter().zip(&interval) {
            let _ = write!(line, " {} {:.2}", arm.version, 100.0 * tally.expected_ctr());
        }
        let fresh = {
            let mut recent = locked(&freshness.recent);
            let text = quantiles_ms(&recent);
            recent.reset();
            text
        };
        let _ = write!(
            line,
            " (oracle {:.2}) | freshness p50 / p99 {fresh}",
            100.0 * oracle_ctr(&interval)
        );
        println!("{line}");
        last = now;
    }
}

/// The summary table and the learner's counts.
pub fn summary(
    arms: &[Arm],
    stats: &Stats,
    freshness: &Freshness,
    learner: &RunSummary,
    elapsed: Duration,
) {
    let control = arms
        .iter()
        .position(|a| a.policy == Policy::Random)
        .map(|i| stats.total[i].expected_ctr());
    println!();
    println!(
        "{:<14} {:<9} {:>9} {:>11} {:>7} {:>7} {:>10} {:>9} {:>10} {:>11}",
        "arm",
        "policy",
        "requests",
        "impressions",
        "clicks",
        "CTR %",
        "true CTR %",
        "oracle %",
        "regret",
        "vs control"
    );
    for (arm, t) in arms.iter().zip(&stats.total) {
        let lift = control.filter(|c| *c > 0.0).map_or_else(
            || "-".into(),
            |c| format!("{:+.0} %", 100.0 * (t.expected_ctr() / c - 1.0)),
        );
        println!(
            "{:<14} {:<9} {:>9} {:>11} {:>7} {:>7.3} {:>10.3} {:>9.3} {:>10.1} {:>11}",
            arm.version,
            arm.policy.name(),
            t.requests,
            t.impressions,
            t.clicks,
            100.0 * t.ctr(),
            100.0 * t.expected_ctr(),
            100.0 * t.oracle_ctr(),
            t.regret(),
            lift,
        );
    }
    println!(
        "(true CTR: the shown docs' hidden click probabilities; regret: expected clicks lost to an \
         oracle that knows them, over {} requests per arm on average)",
        stats.requests() / arms.len().max(1) as u64
    );
    let failed: u64 = stats.total.iter().map(|t| t.failed).sum();
    if failed > 0 {
        println!("{failed} requests got no answer from the server and were shown in drawn order");
    }
    let total = locked(&freshness.total);
    println!(
        "freshness (sample handed to the learner → its update on WatchParams): p50 / p99 {} over {} updates, max {:.0} ms",
        quantiles_ms(&total),
        total.len(),
        total.max() as f64 / 1000.0
    );
    println!(
        "learner: {} samples sent, {} applied, dead letters {:?}, {} checkpoints; {:.1} s in all",
        stats.samples_sent,
        learner.counters.applied,
        learner.counters.dead,
        learner.checkpoints,
        elapsed.as_secs_f64()
    );
}

/// Writes `timeline.csv` (one row per window and arm) and `ctr.png` (each
/// arm's true CTR per window, and the oracle's) under `q.out`.
pub fn write(q: &QuickstartConfig, arms: &[Arm], stats: &Stats) -> Result<()> {
    let mut csv = String::from("requests,arm,policy,impressions,clicks,true_ctr,oracle_ctr\n");
    for point in &stats.timeline {
        for (arm, t) in arms.iter().zip(&point.arms) {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{}",
                point.requests,
                arm.version,
                arm.policy.name(),
                t.impressions,
                t.clicks,
                t.expected_ctr(),
                t.oracle_ctr()
            );
        }
    }
    let csv_path = q.out.join("timeline.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("write {}", csv_path.display()))?;
    let x = |p: &super::sim::Point| p.requests as f64;
    let mut lines: Vec<Line> = arms
        .iter()
        .enumerate()
        .map(|(i, arm)| Line {
            name: format!("{} ({})", arm.version, arm.policy.name()),
            points: stats
                .timeline
                .iter()
                .map(|p| (x(p), 100.0 * p.arms[i].expected_ctr()))
                .collect(),
            reference: false,
        })
        .collect();
    lines.push(Line {
        name: "oracle".into(),
        points: stats
            .timeline
            .iter()
            .map(|p| (x(p), 100.0 * oracle_ctr(&p.arms)))
            .collect(),
        reference: true,
    });
    let png = q.out.join("ctr.png");
    let title = format!(
        "True CTR per A/B arm, windows of {} requests (seed {})",
        q.window_requests, q.seed
    );
    match line_plot(
        &png,
        &title,
        "requests",
        "true CTR of the shown docs (%)",
        &lines,
    ) {
        Ok(()) => println!("wrote {} and {}", csv_path.display(), png.display()),
        Err(error) => println!("wrote {}; no plot: {error:#}", csv_path.display()),
    }
    Ok(())
}
