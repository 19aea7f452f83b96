#!/usr/bin/env bash
# Standalone param-server replicas against the tests' broker (nisshi, in
# memory, on a free loopback port; stopped on exit), in release mode:
#
#   scripts/bench-replica.sh [FLAGS]            # time to become ready (issue 4):
#                                               # `param-server/examples/replica_ready`,
#                                               # 1 M keys, d = 32, 4 partitions
#   scripts/bench-replica.sh --keys 100000 --dim 8
#   scripts/bench-replica.sh freshness [FLAGS]  # freshness through Kafka:
#                                               # `param-server/examples/kafka_freshness`
#
# FLAGS go to the example (see its --help); the script creates its topic.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/posterior/target}"
nisshi="${POSTERIOR_NISSHI:-$HOME/.cache/posterior/nisshi/bin/nisshi}"
[ -x "$nisshi" ] || bash "$repo/scripts/setup-nisshi.sh"

example=replica_ready
topic=params-bench
if [ "${1:-}" = freshness ]; then
    example=kafka_freshness
    topic=params-fresh
    shift
fi
partitions=4
for ((i = 1; i <= $#; i++)); do
    if [ "${!i}" = "--partitions" ]; then j=$((i + 1)); partitions="${!j}"; fi
done

cd "$repo"
cargo build --release -q -p posterior-param-server --example "$example"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="tcp://127.0.0.1:$port"
"$nisshi" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://nisshi/ --silent >/dev/null 2>&1 &
broker_pid=$!
trap 'kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done
"$nisshi" topic create "$topic" --silent --broker "$url" --partitions "$partitions"

echo "- commit $(git rev-parse --short HEAD), $("$repo/scripts/machine.sh"), broker nisshi (memory) on loopback"
"$CARGO_TARGET_DIR/release/examples/$example" --brokers "127.0.0.1:$port" \
    --topic "$topic" "$@"
