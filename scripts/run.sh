#!/usr/bin/env bash
# The main job on the embedded default: sets up what is missing, then runs
# the experiments' headline comparison (Thompson sampling vs UCB1 and the
# Lai–Robbins bound; logistic TS vs Vowpal Wabbit), printing its tables and
# writing plots under out/headline/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
cargo run --release --locked -p posterior-experiments --bin experiments -- \
  headline --seed "${SEED:-1}" --out "${OUT:-out/headline}" "$@"
