#!/usr/bin/env bash
# Runs the posterior-benches: the criterion suite of the maths, and the
# learner pipeline benches of issue 3 (`src/bin/pipeline.rs`).
#
#   benches/run.sh                      # both: criterion suite, then `pipeline all`
#   benches/run.sh diagonal_update      # criterion only; arguments go to criterion
#   benches/run.sh pipeline [SUB ...]   # pipeline only (default `all`; see --help)
#
# For criterion it prints, from criterion's JSON of this run, a Markdown
# table of throughput (samples/s, draws/s or states/s) with the ratio to
# the project's goals, plus the machine it ran on; the pipeline binary
# prints its own tables with the ratios. Goals and ratios are computed in
# the same run because the machines are noisy: compare ratios, not
# absolute figures, across runs.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/posterior/target}"

# The commit being built, and whether the crates it measures have
# uncommitted edits (the working tree is shared), recorded before building.
commit="$(git -C "$repo" rev-parse --short HEAD)"
if [ -n "$(git -C "$repo" status --porcelain -- learner benches/src benches/benches benches/Cargo.toml)" ]; then
    commit="$commit + uncommitted edits in learner/ or benches/"
fi

machine() {
    echo "- CPU: $("$repo/scripts/machine.sh")"
    echo "- toolchain: $(cd "$repo" && rustc -V)"
}

pipeline() {
    (cd "$repo" && cargo build --release -p posterior-benches --bin pipeline)
    echo
    echo "## pipeline benches, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
    echo
    machine
    "$CARGO_TARGET_DIR/release/pipeline" "${@:-all}"
}

if [ "${1:-}" = pipeline ]; then
    shift
    pipeline "$@"
    exit
fi
run_pipeline_after=false
if [ $# -eq 0 ]; then
    run_pipeline_after=true
fi

marker="$(mktemp)"
trap 'rm -f "$marker"' EXIT
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
(cd "$repo" && cargo bench -p posterior-benches -- "$@")
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "## posterior-benches, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
echo
machine
echo "- load average (1, 5, 15 min) before: $load_before, after: $load_after"
echo
python3 - "$CARGO_TARGET_DIR/criterion" "$marker" <<'PY'
import json
import os
import re
import sys

root, marker = sys.argv[1], sys.argv[2]
since = os.path.getmtime(marker)

# Unit of one element, by criterion group.
UNITS = {
    "beta_update": "samples/s",
    "beta_observe": "samples/s",
    "diagonal_update": "samples/s",
    "diagonal_update_fresh": "samples/s",
    "full_update": "samples/s",
    "thompson_draw": "draws/s",
    "state_encoding": "states/s",
}
# (benchmark id prefix, goal in elements/s): the project's one-core goals.
GOALS = [
    ("beta_update/", 20e6),
    ("beta_observe/", 20e6),
    ("diagonal_update/d32/", 2e6),
    ("diagonal_update_fresh/d32/", 2e6),
]


def natural(key):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def rate(elements, ns):
    return elements / (ns * 1e-9)


def human(per_s):
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= scale:
            return f"{per_s / scale:.3g} {suffix}"
    return f"{per_s:.3g}"


rows = []
for dirpath, _, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    estimates_path = os.path.join(dirpath, "estimates.json")
    if os.path.getmtime(estimates_path) < since:
        continue  # not from this run
    with open(os.path.join(dirpath, "benchmark.json")) as f:
        bench = json.load(f)
    if bench["group_id"] not in UNITS or not bench.get("throughput"):
        continue  # another crate's bench sharing the target dir
    with open(estimates_path) as f:
        estimates = json.load(f)
    # Criterion's own "typical" figure: the regression slope when it
    # sampled linearly, else the mean.
    typical = estimates.get("slope") or estimates["mean"]
    elements = next(iter(bench["throughput"].values()))
    interval = typical["confidence_interval"]
    goal = next((g for prefix, g in GOALS if bench["full_id"].startswith(prefix)), None)
    rows.append((bench["full_id"], bench["group_id"], elements, typical["point_estimate"],
                 interval["upper_bound"], interval["lower_bound"], goal))

if not rows:
    sys.exit("run.sh: no criterion results from this run")
print("| benchmark | per second | 95% CI | goal | ratio to goal |")
print("|---|---:|---:|---:|---:|")
for full_id, group, elements, ns, slow_ns, fast_ns, goal in sorted(rows, key=lambda r: natural(r[0])):
    per_s = rate(elements, ns)
    unit = "scores/s" if "mean_score" in full_id else UNITS[group]
    ci = f"{human(rate(elements, slow_ns))}–{human(rate(elements, fast_ns))}"
    goal_cell = f"≥ {human(goal)} {unit}" if goal else "—"
    ratio = f"{per_s / goal:.2f}" if goal else "—"
    print(f"| {full_id} | {human(per_s)} {unit} | {ci} | {goal_cell} | {ratio} |")
print()
print("For scale only (published figures from Fwumious Wabbit's benchmark, not measured")
print("here): Vowpal Wabbit trains about 0.1 M examples/s per core, Fwumious Wabbit about 0.6 M/s.")
PY

if $run_pipeline_after; then
    pipeline all
fi
