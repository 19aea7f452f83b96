//! The Posterior param-server: serves the learner's dynamic weights to
//! predictors over gRPC. Built in the param-server issue; empty for now.
