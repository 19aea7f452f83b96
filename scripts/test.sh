#!/usr/bin/env bash
# The whole test suite: sets up what is missing (including the tests'
# broker), checks formatting, clippy (-D warnings), that the learner builds
# without its `io` feature and that docs/API.md matches the protos'
# comments, then runs every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
# The Kafka-protocol broker the tests start (built once, cached).
bash "$root/scripts/setup-nisshi.sh"
cd "$root"
# No incremental caches: they gain nothing in a run from a fresh clone and
# held 3.6-8.7 GB of the shared target directory on this machine.
export CARGO_INCREMENTAL=0
cargo fmt --all -- --check
python3 scripts/api-doc.py --check
# Under the test profile, as `cargo test` builds: the profile's name is in
# every unit's hash, so under `dev` RocksDB's C++ was compiled twice, once
# for clippy and once for the tests (~20 min each on 2 cores, cold). The
# build dependencies' debug info must match too (Cargo.toml,
# `[profile.dev.build-override]`; scripts/check-shared-build.py checks it).
cargo clippy --profile test --locked --workspace --all-targets -- -D warnings
# The param-server, the client and the experiments use the learner without
# its `io` feature (no RocksDB, no Kafka): in the workspace build the
# feature is on, so only a build of the learner alone shows what it left
# gated in.
cargo check --locked -p posterior-learner --no-default-features --lib
cargo test --locked --workspace --all-targets
