#!/usr/bin/env bash
# Installs what building and testing Posterior needs on a Debian machine,
# and only what is missing: Debian packages, the pinned Rust toolchain, the
# Python venv of the Vowpal Wabbit peer. Idempotent; meant to be sourced by
# run.sh and test.sh (it exports CARGO_TARGET_DIR).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The build cache lives outside the clone, so fresh clones reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/posterior/target}"
mkdir -p "$CARGO_TARGET_DIR"

# Debian packages: a C/C++ toolchain and libclang (rocksdb's bindgen),
# pkg-config, python3-venv (the VW peer), a font for the plots, curl for
# rustup.
packages=(build-essential pkg-config libclang-dev python3-venv fonts-dejavu-core curl ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages ${missing[*]}; install them as root" >&2
    exit 1
  fi
fi

# Rust: rustup reads rust-toolchain.toml and installs the pinned toolchain
# on first use.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
(cd "$root" && rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install)

# The Vowpal Wabbit peer of the experiments.
bash "$root/scripts/setup-vw.sh"
