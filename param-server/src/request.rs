//! Wire requests → checked domain requests. This is where bad input is
//! rejected, before any work is done, with an error that names it.

use posterior_proto::v1;

use crate::error::ServeError;
use crate::limits::Limits;

/// A checked `GetParams` request.
#[derive(Debug, Clone, PartialEq)]
pub struct DocsRequest {
    /// The version.
    pub version: String,
    /// The docs, in request order (repeats allowed).
    pub doc_ids: Vec<u64>,
}

/// A checked `SampleScores` request (the context's length is checked
/// against the version's dimension once the version is known).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    /// The version and docs.
    pub docs: DocsRequest,
    /// Every value finite.
    pub context: Vec<f32>,
    /// Seed of the draws, for reproducible scores.
    pub seed: Option<u64>,
}

/// A checked `WatchParams` request.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRequest {
    /// The version.
    pub version: String,
    /// `None` follows every doc of the version.
    pub doc_ids: Option<Vec<u64>>,
    /// Live updates with a seq at or below this are not sent.
    pub from_seq: u64,
}

fn checked_docs(
    version: String,
    doc_ids: Vec<u64>,
    limits: &Limits,
) -> Result<DocsRequest, ServeError> {
    if version.is_empty() {
        return Err(ServeError::MissingVersion);
    }
    if doc_ids.len() > limits.max_docs_per_request {
        return Err(ServeError::TooManyDocs {
            got: doc_ids.len(),
            max: limits.max_docs_per_request,
        });
    }
    Ok(DocsRequest { version, doc_ids })
}

impl DocsRequest {
    /// Checks a `GetParams` request.
    pub fn checked(request: v1::GetParamsRequest, limits: &Limits) -> Result<Self, ServeError> {
        checked_docs(request.version, request.doc_ids, limits)
    }
}

impl SampleRequest {
    /// Checks a `SampleScores` request: version, doc count, finite context.
    pub fn checked(request: v1::SampleScoresRequest, limits: &Limits) -> Result<Self, ServeError> {
        let docs = checked_docs(request.version, request.doc_ids, limits)?;
        if let Some(index) = request.context.iter().position(|x| !x.is_finite()) {
            return Err(ServeError::NonFiniteContext {
                index,
                value: request.context[index],
            });
        }
        Ok(Self {
            docs,
            context: request.context,
            seed: request.seed,
        })
    }
}

impl WatchRequest {
    /// Checks a `WatchParams` request.
    pub fn checked(request: v1::WatchParamsRequest, limits: &Limits) -> Result<Self, ServeError> {
        let docs = checked_docs(request.version, request.doc_ids, limits)?;
        Ok(Self {
            version: docs.version,
            doc_ids: (!docs.doc_ids.is_empty()).then_some(docs.doc_ids),
            from_seq: request.from_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_name_the_problem() {
        let limits = Limits {
            max_docs_per_request: 3,
            ..Limits::default()
        };
        let get = |version: &str, docs: Vec<u64>| v1::GetParamsRequest {
            version: version.into(),
            doc_ids: docs,
        };
        assert_eq!(
            DocsRequest::checked(get("", vec![1]), &limits),
            Err(ServeError::MissingVersion)
        );
        assert_eq!(
            DocsRequest::checked(get("a", vec![1, 2, 3, 4]), &limits),
            Err(ServeError::TooManyDocs { got: 4, max: 3 })
        );
        assert!(DocsRequest::checked(get("a", vec![1, 1, 2]), &limits).is_ok());
        let sample = v1::SampleScoresRequest {
            version: "a".into(),
            doc_ids: vec![1],
            context: vec![0.5, f32::NAN],
            seed: None,
        };
        let err = SampleRequest::checked(sample, &limits).unwrap_err();
        assert!(matches!(err, ServeError::NonFiniteContext { index: 1, .. }));
        assert!(err.to_string().contains("context[1]"), "{err}");
        let watch = v1::WatchParamsRequest {
            version: "a".into(),
            doc_ids: vec![],
            from_seq: 4,
        };
        let watch = WatchRequest::checked(watch, &limits).unwrap();
        assert_eq!((watch.doc_ids, watch.from_seq), (None, 4));
    }
}
