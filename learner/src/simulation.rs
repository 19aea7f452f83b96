//! Simulated traffic, shared with the experiments: a world of docs with
//! hidden logistic click models whose request t is a pure function of
//! (seed, t). Pure: no I/O, no clock, no global RNG.
//!
//! Layout:
//! - [`seed`]: seed derivation and the simulation RNG.
//! - [`world`]: the contextual world and its common random numbers.

pub mod seed;
pub mod world;
