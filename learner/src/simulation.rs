//! Simulated traffic, shared by the learner's simulator source and the
//! experiments: a world of docs with hidden logistic click models whose
//! request t is a pure function of (seed, t). Pure: no I/O, no clock, no
//! global RNG.
//!
//! Layout:
//! - [`seed`]: seed derivation and the simulation RNG.
//! - [`world`]: the contextual world and its common random numbers.
//! - [`source`]: the simulator source — joined samples from the world,
//!   sample t at offset t.

pub mod seed;
pub mod source;
pub mod world;
