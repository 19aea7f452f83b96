#!/usr/bin/env bash
# Bench 1's instruction counts for two builds, side by side: one row of
# `pipeline engine` under `valgrind --tool=callgrind` for each binary (at
# once, one per core; the counts do not depend on the host's speed), then
# the inclusive instructions of the engine's main functions per sample
# (the publish's per published key) and the ratio B / A. Rates on a
# shared host spread by 20-50 % between rounds; these counts repeat
# within 0.1 % at batch 1 (BENCHMARKS.md, "The dual solve from two
# Gauss-Seidel sweeps"), so they resolve changes of a few percent.
#
#   scripts/bench-count.sh OLD_PIPELINE NEW_PIPELINE [ROW] [KEYS] [SAMPLES]
#
# ROW: a `pipeline engine --only` filter (default "beta, batch 1,
# NullSink"); KEYS: the workload's keys (default 200000: the table fills
# fast, and the counts of the batch-1 rows repeat); SAMPLES: phase-2
# samples (default 2000000). About two minutes. Micro-batch rows publish on
# a wall-clock interval, so their counts move between runs: compare the
# functions, not the totals, and check that both runs applied, updated and
# published the same numbers (printed below the table). The hash tables'
# functions also move by a few percent between runs of one build (random
# hash seeds per process): a run of a build against itself shows how far.
# Build a binary with
#   CARGO_TARGET_DIR=... cargo build --release --locked -p posterior-benches --bin pipeline
# and copy it out of the target directory before building the other.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,24p' "$0"
    exit 2
fi
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
a=$(realpath "$1")
b=$(realpath "$2")
row=${3:-beta, batch 1, NullSink}
keys=${4:-200000}
samples=${5:-2000000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Both models' sample counts, so that either row runs with `samples`.
for side in a b; do
    bin=${!side}
    # From the output directory: the annotations name this repository's
    # files by absolute path either way.
    (cd "$out" && valgrind --tool=callgrind --callgrind-out-file="$out/$side.cg" \
        "$bin" engine --only "$row" --keys "$keys" \
        --beta-samples "$samples" --logistic-samples "$samples" >"$out/$side.txt" 2>&1) &
done
wait

# The row's "| label | ... | applied | updates | published | drain |" line.
counts() {
    awk -F'|' '/^\| (beta|logistic)/ { gsub(/ /, "", $9); gsub(/ /, "", $10); gsub(/ /, "", $11); print $9, $10, $11; exit }' "$1"
}
read -r a_applied a_updates a_published < <(counts "$out/a.txt")
read -r b_applied b_updates b_published < <(counts "$out/b.txt")

# Inclusive instructions of each function (its own and its callees').
inclusive() {
    callgrind_annotate --inclusive=yes "$1" 2>/dev/null |
        awk '/\[/ { n = $1; gsub(/,/, "", n); name = $0; sub(/^[^:]*:/, "", name); sub(/ \[.*$/, "", name); print n "\t" name }'
}
# From a directory outside the repository, as BENCHMARKS.md's counts were
# read: run from the checkout, callgrind_annotate attributes inlined code
# differently and the inclusive figures move by a few percent.
(cd "$out" && inclusive a.cg >a.inc && inclusive b.cg >b.inc)

printf 'A = %s\nB = %s\nrow: %s, %s keys, %s phase-2 samples\n\n' "$a" "$b" "$row" "$keys" "$samples"
printf '| function | per | A | B | B / A |\n|---|---|---:|---:|---:|\n'
for entry in \
    'posterior_learner::engine::Engine::ingest_at:sample' \
    'posterior_benches::driver::Driver::publish:published key' \
    'posterior_learner::engine::Engine::release:sample' \
    'posterior_learner::reorder::ReorderBuffer::insert:sample' \
    'posterior_learner::reorder::ReorderBuffer::release_below_into:sample' \
    'posterior_learner::sample_log::SampleLog::append:sample' \
    'posterior_learner::codec::put_sample_record:sample' \
    'posterior_learner::watermark::Watermarks::observe:sample' \
    'posterior_learner::batcher::Batcher::push_pending:sample' \
    'posterior_learner::batcher::Batcher::due_into:sample' \
    'posterior_learner::posterior::key::KeyState::update:update' \
    'posterior_learner::posterior::newton::map_step:update'; do
    name=${entry%:*}
    per=${entry##*:}
    case $per in
        sample) da=$a_applied; db=$b_applied ;;
        update) da=$a_updates; db=$b_updates ;;
        *) da=$a_published; db=$b_published ;;
    esac
    # A function inlined everywhere, or absent from the row, has no line.
    x=$(awk -F'\t' -v n="$name" '$2 == n { s += $1 } END { printf "%.0f\n", s }' "$out/a.inc")
    y=$(awk -F'\t' -v n="$name" '$2 == n { s += $1 } END { printf "%.0f\n", s }' "$out/b.inc")
    [[ $x == 0 && $y == 0 ]] && continue
    awk -v n="$(awk -F'::' '{ print $(NF - 1) "::" $NF }' <<<"$name")" -v per="$per" -v x="$x" -v y="$y" -v da="$da" -v db="$db" 'BEGIN {
        pa = da > 0 ? x / da : 0; pb = db > 0 ? y / db : 0
        ratio = pa > 0 ? sprintf("%.3f", pb / pa) : "-"
        printf "| %s | %s | %.1f | %.1f | %s |\n", n, per, pa, pb, ratio
    }'
done
printf '\n| run | applied | updates | published |\n|---|---:|---:|---:|\n'
printf '| A | %s | %s | %s |\n| B | %s | %s | %s |\n' \
    "$a_applied" "$a_updates" "$a_published" "$b_applied" "$b_updates" "$b_published"
if [[ "$a_applied $a_updates $a_published" != "$b_applied $b_updates $b_published" ]]; then
    echo "(the runs differ in what they applied or published: compare per-sample figures with care)"
fi
