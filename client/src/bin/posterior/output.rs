//! Results as JSON (`--json`, and every `watch` line) or as aligned
//! text tables for people.

use posterior_client::{Model, Params, Precision, Scores, VersionInfo, WatchEvent};
use posterior_learner::posterior::{CovarianceForm, ModelKind};
use serde_json::{Value, json};

/// A table: a header and rows of cells, printed with aligned columns.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    /// The table as text, columns separated by two spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut out = line(self.header.clone());
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// A short text form of a vector: every value up to 4, then an ellipsis.
fn short(values: &[f64]) -> String {
    let shown: Vec<String> = values.iter().take(4).map(|v| format!("{v:.4}")).collect();
    let more = if values.len() > 4 { ", …" } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

/// `get`'s table.
pub fn params_table(params: &[Params]) -> Table {
    let mut table = Table::new(vec![
        "doc_id",
        "seq",
        "prior",
        "samples",
        "updated_ms",
        "model",
        "parameters",
    ]);
    for p in params {
        let (model, parameters) = match &p.model {
            Model::Beta { alpha, beta } => (
                "beta",
                format!(
                    "alpha={alpha} beta={beta} mean={:.6}",
                    alpha / (alpha + beta)
                ),
            ),
            Model::Gaussian {
                mean,
                variance,
                precision,
            } => (
                match precision {
                    Precision::Diagonal(_) => "gaussian-diagonal",
                    Precision::Full(_) => "gaussian-full",
                },
                format!("mean={} variance={}", short(mean), short(variance)),
            ),
        };
        table.rows.push(vec![
            p.doc_id.to_string(),
            p.seq.to_string(),
            p.is_prior.to_string(),
            p.sample_count.to_string(),
            p.updated_event_time_ms.to_string(),
            model.to_owned(),
            parameters,
        ]);
    }
    table
}

/// `sample`'s JSON: one object per doc.
pub fn scores_json(doc_ids: &[u64], scores: &Scores) -> Value {
    doc_ids
        .iter()
        .zip(scores.sampled.iter().zip(&scores.mean))
        .map(|(doc, (sampled, mean))| json!({"doc_id": doc, "sampled": sampled, "mean": mean}))
        .collect()
}

/// `sample`'s table.
pub fn scores_table(doc_ids: &[u64], scores: &Scores) -> Table {
    let mut table = Table::new(vec!["doc_id", "sampled", "mean"]);
    for (doc, (sampled, mean)) in doc_ids.iter().zip(scores.sampled.iter().zip(&scores.mean)) {
        table.rows.push(vec![
            doc.to_string(),
            format!("{sampled:.6}"),
            format!("{mean:.6}"),
        ]);
    }
    table
}

/// One `watch` line.
pub fn event_json(event: &WatchEvent) -> Value {
    match event {
        WatchEvent::Snapshot(p) => json!({"event": "snapshot", "params": p}),
        WatchEvent::SnapshotDone => json!({"event": "snapshot_done"}),
        WatchEvent::Update(p) => json!({"event": "update", "params": p}),
        WatchEvent::Resync(reason) => json!({"event": "resync", "reason": reason}),
    }
}

/// A version as JSON: the fields of its TOML spec, plus its state.
pub fn version_json(info: &VersionInfo) -> Value {
    let spec = &info.spec;
    let mut value = json!({
        "name": spec.name,
        "reward_label": spec.reward.label,
        "reward_threshold": spec.reward.threshold,
        "forgetting_half_life_ms": spec.model.forgetting.map(|f| f.half_life_ms()),
        "use_sample_weight": spec.use_sample_weight,
        "retired": info.retired,
        "keys": info.keys,
    });
    let model = match &spec.model.kind {
        ModelKind::Beta(prior) => json!({
            "model": "beta", "alpha0": prior.alpha(), "beta0": prior.beta(),
        }),
        ModelKind::Logistic(prior) => json!({
            "model": "logistic",
            "dim": prior.dim(),
            "covariance": covariance(prior.form()),
            "prior_mean": prior.mean().to_vec(),
            "prior_precision": prior.precision(),
        }),
    };
    if let (Value::Object(all), Value::Object(model)) = (&mut value, model) {
        all.extend(model);
    }
    value
}

fn covariance(form: CovarianceForm) -> &'static str {
    match form {
        CovarianceForm::Diagonal => "diagonal",
        CovarianceForm::Full => "full",
    }
}

/// `versions list`'s table.
pub fn versions_table(versions: &[VersionInfo]) -> Table {
    let mut table = Table::new(vec![
        "name",
        "model",
        "reward",
        "half_life_ms",
        "weights",
        "retired",
        "keys",
    ]);
    for info in versions {
        let spec = &info.spec;
        let model = match &spec.model.kind {
            ModelKind::Beta(p) => format!("beta({}, {})", p.alpha(), p.beta()),
            ModelKind::Logistic(p) => {
                format!("logistic(dim={}, {})", p.dim(), covariance(p.form()))
            }
        };
        table.rows.push(vec![
            spec.name.clone(),
            model,
            format!("{} >= {}", spec.reward.label, spec.reward.threshold),
            spec.model
                .forgetting
                .map_or("-".to_owned(), |f| f.half_life_ms().to_string()),
            spec.use_sample_weight.to_string(),
            info.retired.to_string(),
            info.keys.to_string(),
        ]);
    }
    table
}
