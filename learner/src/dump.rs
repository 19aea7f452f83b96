//! `learner dump`: every key's state as JSONL, sorted by (version, doc),
//! with floats printed in shortest round-trip form (so two dumps are equal
//! as text exactly when the states are equal bit for bit).

use std::io::Write;

use serde_json::json;

use crate::engine::Engine;
use crate::posterior::Posterior;

/// Writes every key of `engine` as one JSON object per line.
pub fn dump(engine: &Engine, out: &mut impl Write) -> std::io::Result<()> {
    let mut keys: Vec<_> = engine.params().map(|(k, _)| *k).collect();
    keys.sort_by(|a, b| {
        let name = |k: &crate::registry::ParamKey| {
            engine
                .registry()
                .get(k.version)
                .map(|e| e.spec.name.clone())
        };
        (name(a), a.doc_id).cmp(&(name(b), b.doc_id))
    });
    for key in keys {
        let state = engine.param(&key).expect("listed keys exist");
        let version = engine
            .registry()
            .get(key.version)
            .map(|e| e.spec.name.as_str())
            .unwrap_or("?");
        let model = match &state.posterior {
            Posterior::Beta(b) => json!({"model": "beta", "alpha": b.alpha(), "beta": b.beta()}),
            Posterior::Diagonal(g) => json!({
                "model": "logistic-diagonal",
                "mean": g.mean().to_vec(),
                "precision": g.precision().to_vec(),
            }),
            Posterior::Full(g) => json!({
                "model": "logistic-full",
                "mean": g.mean().to_vec(),
                "precision": g.precision().rows().into_iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
            }),
        };
        let line = json!({
            "version": version,
            "doc_id": key.doc_id,
            "seq": state.seq,
            "sample_count": state.sample_count,
            "updated_event_time_ms": state.updated_event_time_ms,
            "state": model,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}
