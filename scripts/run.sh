#!/usr/bin/env bash
# The main job on the embedded default: sets up what is missing, then runs
# `learner quickstart` — the learner with its param-server embedded, in the
# closed loop of a simulated ranking system (a predictor asking SampleScores
# over gRPC, users clicking, a sample joiner feeding the learner), with
# three A/B arms: Beta Thompson sampling, logistic Thompson sampling and a
# random control. Prints progress and a summary; writes
# out/quickstart/timeline.csv and out/quickstart/ctr.png.
#
# Extra arguments go to `learner quickstart` (e.g. --requests 300000,
# --seed 2, --config FILE). The experiments' headline comparison (TS vs
# UCB1 and the Lai–Robbins bound, logistic TS vs Vowpal Wabbit) runs with
# `cargo run --release -p posterior-experiments --bin experiments -- headline`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
cargo run --release --locked -p posterior-node --bin learner -- \
  quickstart --config config/quickstart.toml "$@"
