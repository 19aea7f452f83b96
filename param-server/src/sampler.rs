//! Server-side Thompson draws: for each requested doc, one draw of its
//! score and its posterior mean score, by the learner's maths unchanged
//! (`KeyState::sample_score` / `mean_score`): θ ~ Beta(α, β) for Beta
//! versions, σ(w̃·x) with w̃ ~ N(m, Σ) for logistic ones.
//!
//! Draws come from a xoshiro256++ generator seeded by the request's seed
//! (or a fresh random one) and are taken in request order, so the same
//! seed over the same parameters gives the same scores.

use std::borrow::Cow;

use posterior_learner::KeyState;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::error::ServeError;
use crate::request::SampleRequest;
use crate::version::ServedVersion;

/// Scores of a batch of docs, in request order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scores {
    /// One Thompson draw per doc.
    pub sampled: Vec<f64>,
    /// Posterior mean score per doc.
    pub mean: Vec<f64>,
}

/// How the request's context maps onto its docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContextShape {
    /// Beta versions: no context.
    None,
    /// One context shared by every doc.
    Shared,
    /// One context per doc, in request order.
    PerDoc,
}

fn context_shape(
    version: &ServedVersion,
    docs: usize,
    given: usize,
) -> Result<ContextShape, ServeError> {
    let dim = version.dim();
    let shape = match dim {
        0 if given == 0 => Some(ContextShape::None),
        0 => None,
        _ if given == dim => Some(ContextShape::Shared),
        _ if Some(given) == dim.checked_mul(docs) => Some(ContextShape::PerDoc),
        _ => None,
    };
    shape.ok_or_else(|| ServeError::WrongDimension {
        version: version.name().to_owned(),
        dim,
        docs,
        got: given,
    })
}

/// Draws and mean scores for `request`'s docs in `version`.
pub fn sample_scores(
    version: &ServedVersion,
    request: &SampleRequest,
) -> Result<Scores, ServeError> {
    let doc_ids = &request.docs.doc_ids;
    let shape = context_shape(version, doc_ids.len(), request.context.len())?;
    let dim = version.dim();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(request.seed.unwrap_or_else(rand::random));
    let table = version.table();
    let mut scores = Scores {
        sampled: Vec::with_capacity(doc_ids.len()),
        mean: Vec::with_capacity(doc_ids.len()),
    };
    // The table reads the docs in prefetched groups; the first error
    // stops the scoring (the request is refused whole).
    let mut i = 0;
    let mut outcome = Ok(());
    table.read_each(doc_ids, |_, stored| {
        if outcome.is_err() {
            return;
        }
        let context = match shape {
            ContextShape::None => &[][..],
            ContextShape::Shared => &request.context[..],
            ContextShape::PerDoc => &request.context[i * dim..(i + 1) * dim],
        };
        i += 1;
        let state: Cow<'_, KeyState> = match stored {
            Some(stored) => Cow::Owned(stored.to_key_state()),
            None => Cow::Borrowed(version.prior()),
        };
        outcome = state.sample_score(context, &mut rng).and_then(|sampled| {
            scores.sampled.push(sampled);
            scores.mean.push(state.mean_score(context)?);
            Ok(())
        });
    });
    outcome?;
    Ok(scores)
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
