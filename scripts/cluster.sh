#!/usr/bin/env bash
# Posterior's multi-process topology on loopback, run and checked: a
# Kafka-protocol broker (nisshi), two learners splitting the `samples`
# partitions, two param-server replicas fed by the `params` topic, and
# predictors calling GetParams / SampleScores on both replicas. A sample
# joiner produces a generated log (with defects) over 30 s; half way, one
# learner is killed with SIGKILL and restarted. At the end it checks that
# the two learners together equal one learner alone over the same log,
# bit for bit, and that both replicas serve exactly those parameters.
# Every process's config, log and state stays under out/cluster.
#
# Sets up what is missing (as scripts/test.sh does, broker included) and
# builds the debug binaries as the test command does (`cargo test
# --no-run`: nothing to do right after the test suite). Extra arguments go to the `cluster` binary: --records, --docs,
# --partitions, --seconds, --predictors, --batch, --seed, --out.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
bash "$root/scripts/setup-nisshi.sh"
cd "$root"
cargo test --locked --workspace --all-targets --no-run
"$CARGO_TARGET_DIR/debug/cluster" "$@"
