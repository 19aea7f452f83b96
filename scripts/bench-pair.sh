#!/usr/bin/env bash
# Bench 1 for two builds at once, one per core, so that both see the same
# host. A binary started second reads several percent better (BENCHMARKS.md,
# "Fewer copies of each sample"), so the rounds alternate which one starts
# first; each row runs as a pair of its own, so that both binaries time the
# same row at the same time. Each binary is pinned to a core (`taskset`),
# and the cores swap every two rounds, so four rounds cover both start
# orders on both cores (a core slowed for a while, by another tenant or
# its interrupts, then weighs on both builds). The same binary against
# itself still spreads by up to 20 % a round (BENCHMARKS.md, "The
# diagonal model's d-long kernels with AVX"). PIN=0 leaves placement to
# the scheduler (for rows with a second thread, such as the channel
# sink's reader, which a pinned process keeps on its one core). Prints
# each row's phase-2 rate for both and the ratio B / A.
#
#   scripts/bench-pair.sh OLD_PIPELINE NEW_PIPELINE [ROUNDS] [ROWS]
#
# ROWS: `pipeline engine --only` filters separated by ';' (default
# "beta, batch 1, NullSink;logistic-d32, batch 1, NullSink").
# Build a binary with
#   CARGO_TARGET_DIR=... cargo build --release --locked -p posterior-benches --bin pipeline
# and copy it out of the target directory before building the other.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,22p' "$0"
    exit 2
fi
a=$1
b=$2
rounds=${3:-4}
rows=${4:-beta, batch 1, NullSink;logistic-d32, batch 1, NullSink}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# "| label | rate | ..." → "label<TAB>rate in samples/s"
rates() {
    awk -F'|' '/^\| (beta|logistic)/ {
        label = $2; rate = $3
        gsub(/^ +| +$/, "", label); gsub(/ /, "", rate)
        unit = substr(rate, length(rate)); value = substr(rate, 1, length(rate) - 1)
        if (unit == "M") value *= 1e6; else if (unit == "k") value *= 1e3; else value = rate
        printf "%s\t%.0f\n", label, value
    }' "$1"
}

pin=${PIN:-1}
if [[ $pin == 1 ]] && ! { command -v taskset >/dev/null && (( $(nproc) >= 2 )); }; then
    echo "not pinned: needs taskset and two cores" >&2
    pin=0
fi

printf 'A = %s\nB = %s\n\n| round | started first | A on core | row | A samples/s | B samples/s | B / A |\n|---|---|---|---|---:|---:|---:|\n' "$a" "$b"
IFS=';' read -r -a filters <<<"$rows"
for round in $(seq 1 "$rounds"); do
    if (( round % 2 )); then first=A; else first=B; fi
    if [[ $pin == 1 ]]; then
        core_a=$(( (round - 1) / 2 % 2 ))
        run_a=(taskset -c "$core_a" "$a")
        run_b=(taskset -c "$(( 1 - core_a ))" "$b")
    else
        core_a=-
        run_a=("$a")
        run_b=("$b")
    fi
    for filter in "${filters[@]}"; do
        if [[ $first == A ]]; then
            "${run_a[@]}" engine --only "$filter" >"$out/a" 2>&1 &
            "${run_b[@]}" engine --only "$filter" >"$out/b" 2>&1 &
        else
            "${run_b[@]}" engine --only "$filter" >"$out/b" 2>&1 &
            "${run_a[@]}" engine --only "$filter" >"$out/a" 2>&1 &
        fi
        wait
        join -t $'\t' <(rates "$out/a" | sort) <(rates "$out/b" | sort) |
            awk -F'\t' -v round="$round" -v first="$first" -v core="$core_a" -v ratios="$out/ratios" '{
                printf "| %d | %s | %s | %s | %.3f M | %.3f M | %.3f |\n", round, first, core, $1, $2 / 1e6, $3 / 1e6, $3 / $2
                printf "%s\t%.3f\n", $1, $3 / $2 >> ratios
            }'
    done
done

# Per row: every round's B / A, sorted, and their median (a single round
# swings by ±15 % on a shared host; the median of several is the figure).
printf '\n| row | rounds | B / A, sorted | median |\n|---|---:|---|---:|\n'
sort -t $'\t' -k1,1 -k2,2n "$out/ratios" |
    awk -F'\t' '
        function flush() {
            if (n == 0) return
            median = n % 2 ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
            list = r[1]; for (i = 2; i <= n; i++) list = list ", " r[i]
            printf "| %s | %d | %s | %.3f |\n", row, n, list, median
        }
        $1 != row { flush(); row = $1; n = 0 }
        { r[++n] = $2 }
        END { flush() }'
