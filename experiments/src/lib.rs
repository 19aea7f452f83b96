//! Simulations that check Posterior's Thompson sampling learns: the
//! Chapelle & Li (2011) Bernoulli reproduction, a contextual world with
//! per-doc logistic TS, drifting click-rates, delayed micro-batched labels,
//! and Vowpal Wabbit as a peer. Every policy calls the learner's
//! `posterior` module; every random stream derives from one `--seed`. The
//! contextual world and the seed derivation are the learner's
//! `simulation` module, which its simulator source draws samples from.
//!
//! Layout:
//! - [`cli`] — command-line arguments.
//! - [`run`] — runs a parsed command and writes its outputs.
//! - [`bernoulli`] — the K-armed Bernoulli scenario (TS, UCB1, ε-greedy, uniform).
//! - [`ucb`] — UCB1.
//! - [`bound`] — Bernoulli KL and the Lai–Robbins bound.
//! - [`policy`] — contextual policies over the learner's posteriors.
//! - [`feedback`] — delayed, micro-batched label delivery.
//! - [`contextual`] — the contextual runner and lineup.
//! - [`drift`] — the drift scenario's world and lineup.
//! - [`delayed`] — the delayed-labels scenario's world and lineup.
//! - [`curve`] — checkpoints, per-run curves, mean ± s.e. over seeds.
//! - [`parallel`] — jobs on a few threads with a progress bar.
//! - [`report`] — tables, `summary.json` and curve CSVs.
//! - [`plot`] — PNG regret plots.
//! - [`reload`] — reads a written result back, to redraw its plots.
//! - [`vw`] — the Vowpal Wabbit peer (file format, Python driver).

pub mod bernoulli;
pub mod bound;
pub mod cli;
pub mod contextual;
pub mod curve;
pub mod delayed;
pub mod drift;
pub mod feedback;
pub mod parallel;
pub mod plot;
pub mod policy;
pub mod reload;
pub mod report;
pub mod run;
pub mod ucb;
pub mod vw;
