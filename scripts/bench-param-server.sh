#!/usr/bin/env bash
# The param-server's load generator side by side with Redis (issue 4):
# installs `redis-server` if missing, starts it on a free loopback port
# with persistence off (pinned to the first core, like the param-server's
# runtime thread), runs `param-server/examples/loadgen` in release mode
# and prints its Markdown report. Redis is stopped on exit.
#
#   scripts/bench-param-server.sh                 # defaults: 1 M keys, d = 32
#   scripts/bench-param-server.sh --seconds 5 --rounds 3   # loadgen flags (see --help)
#   HUGEPAGES=0 scripts/bench-param-server.sh     # without transparent huge pages
#   LOADGEN=/tmp/old/loadgen scripts/bench-param-server.sh   # a loadgen built elsewhere
#                                                 # (another commit), not rebuilt here
#
# By default glibc's malloc is told to back its heap with transparent huge
# pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, with THP in `madvise`
# mode): the store's 1 M keys then cost far fewer TLB misses per lookup
# (BENCHMARKS.md, "Param-server vs Redis"). Redis keeps its own allocator (jemalloc)
# and its default `disable-thp yes`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/posterior/target}"

if ! command -v redis-server >/dev/null; then
    echo "installing redis-server ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

# A free loopback port: bind port 0 and read what the kernel gave.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
workdir="$(mktemp -d)"
pin=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    pin=(taskset -c 0)
fi

redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

# Persistence off (no RDB snapshots, no AOF), loopback only, no memory cap.
"${pin[@]}" redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$workdir" --daemonize no --protected-mode yes --loglevel warning \
    --logfile "$workdir/redis.log" &
redis_pid=$!
for _ in $(seq 50); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then break; fi
    sleep 0.1
done
redis-cli -p "$port" ping >/dev/null || { echo "redis did not start:" >&2; cat "$workdir/redis.log" >&2; exit 1; }
echo "redis $(redis-server --version | grep -o 'v=[^ ]*') on 127.0.0.1:$port (pid $redis_pid${pin:+, pinned to cpu 0})" >&2

cd "$repo"
echo "- commit $(git rev-parse --short HEAD)$( [ -n "$(git status --porcelain -- param-server)" ] && echo ' + uncommitted edits in param-server/')${LOADGEN:+ (but loadgen: $LOADGEN)}, $("$repo/scripts/machine.sh"), $(rustc -V)"
echo "- redis $(redis-server --version | grep -o 'v=[^ ]*'), persistence off, one connection per client"
loadgen="${LOADGEN:-}"
if [ -z "$loadgen" ]; then
    cargo build --release --locked -q -p posterior-param-server --example loadgen
    loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
fi
tunables=""
if [ "${HUGEPAGES:-1}" = 1 ]; then
    tunables="glibc.malloc.hugetlb=1"
fi
echo "- param-server heap: GLIBC_TUNABLES=${tunables:-none} (THP $(grep -o '\[[a-z]*\]' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown))"
GLIBC_TUNABLES="$tunables" "$loadgen" --redis "127.0.0.1:$port" --redis-pid "$redis_pid" "$@"
