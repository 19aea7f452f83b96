#!/usr/bin/env bash
# Creates the Python venv of the experiments' Vowpal Wabbit peer, idempotently:
# $HOME/.cache/posterior/venv with experiments/python/requirements.txt.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${POSTERIOR_VENV:-$HOME/.cache/posterior/venv}"
requirements="$repo/experiments/python/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if "$venv/bin/python" - "$requirements" <<'PY'
import sys
from importlib import metadata
wanted = [l.split("#")[0].strip() for l in open(sys.argv[1])]
for line in filter(None, wanted):
    name, version = line.split("==")
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
PY
then
    echo "setup-vw: $venv already has $(tr '\n' ' ' < <(grep -v '^#' "$requirements"))"
else
    "$venv/bin/pip" install --quiet -r "$requirements"
    echo "setup-vw: installed $requirements into $venv"
fi
