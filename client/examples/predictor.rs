//! A predictor's loop: mirror a version locally, then rank candidate docs
//! by Thompson draws made in process — no request on the ranking path.
//!
//! `cargo run -p posterior-client --example predictor -- http://127.0.0.1:50051 ctr 1 2 3`

use anyhow::{Context, Result};
use posterior_client::{Client, ClientConfig, Mirror, MirrorConfig};
use rand::SeedableRng;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoint = args
        .next()
        .context("usage: predictor ENDPOINT VERSION DOC...")?;
    let version = args
        .next()
        .context("usage: predictor ENDPOINT VERSION DOC...")?;
    let candidates: Vec<u64> = args
        .map(|a| a.parse().context("doc ids are integers"))
        .collect::<Result<_>>()?;

    let client = Client::connect(endpoint, ClientConfig::default()).await?;
    let mirror = Mirror::start(client.clone(), version.as_str(), MirrorConfig::default());
    mirror.caught_up().await?;

    // Docs the mirror has never seen have the version's prior: ask once.
    let unseen: Vec<u64> = candidates
        .iter()
        .copied()
        .filter(|&d| mirror.get(d).is_none())
        .collect();
    let priors = client.get_params(&version, &unseen).await?;

    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
    let mut ranked = Vec::with_capacity(candidates.len());
    for doc in candidates {
        let params = match mirror.get(doc) {
            Some(params) => (*params).clone(),
            None => priors
                .iter()
                .find(|p| p.doc_id == doc)
                .cloned()
                .context("GetParams answers every doc")?,
        };
        // A Beta version ignores the context; a logistic one needs the
        // static model's vector for (user, doc).
        let score = params.to_key_state()?.sample_score(&[], &mut rng)?;
        ranked.push((score, doc));
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (score, doc) in ranked {
        println!("{doc}\t{score:.4}");
    }
    Ok(())
}
