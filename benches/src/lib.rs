//! Shared input builders for the criterion benches in `benches/`.
