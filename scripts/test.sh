#!/usr/bin/env bash
# The whole test suite: sets up what is missing (including the tests'
# broker), checks formatting and clippy (-D warnings), then runs every
# test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
# The Kafka-protocol broker the tests start (built once, cached).
bash "$root/scripts/setup-nisshi.sh"
cd "$root"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace --all-targets
