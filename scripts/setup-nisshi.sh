#!/usr/bin/env bash
# Installs the tests' Kafka-protocol broker, nisshi 0.8.1, once, into
# $HOME/.cache/posterior/nisshi (outside the clone, reused by every clone).
# It needs rustc >= 1.96, newer than the project's pinned toolchain, so it
# is built with rustup's nightly toolchain (installed here if missing).
# The first build takes 20 min to 2 h on 2 shared cores; later runs only
# check the binary's version.
set -euo pipefail
version=0.8.1
prefix="${POSTERIOR_NISSHI_ROOT:-$HOME/.cache/posterior/nisshi}"
bin="$prefix/bin/nisshi"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
    echo "setup-nisshi: $("$bin" --version) at $bin"
    exit 0
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "setup-nisshi: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal
fi
echo "setup-nisshi: building nisshi $version (once; this takes a while)" >&2
# Its own target dir: nisshi's dependencies never mix with the project's.
CARGO_TARGET_DIR="$prefix/target" cargo +nightly install nisshi \
    --version "$version" --locked --root "$prefix"
rm -rf "$prefix/target"
"$bin" --version
