#!/usr/bin/env python3
"""Checks that `cargo clippy` and `cargo test`, as scripts/test.sh runs them,
share librocksdb-sys's build-script run, i.e. that a cold machine compiles
RocksDB's C++ (~20 min on 2 cores) once, not once per command.

Cargo names a unit's build directory by a hash of the unit and, recursively,
of its dependencies (profile, features, mode, target). This script reads
both commands' unit graphs (`--unit-graph`, which needs nightly cargo; no
build runs) and compares the subgraph under librocksdb-sys's
`run-custom-build` unit. Exit status 1 and the first differing units when
they differ.

    python3 scripts/check-shared-build.py
"""

import json
import subprocess
import sys

COMMANDS = [
    ["clippy", "--profile", "test", "--locked", "--workspace", "--all-targets"],
    ["test", "--locked", "--workspace", "--all-targets", "--no-run"],
]


def unit_graph(args):
    out = subprocess.run(
        ["cargo", "+nightly", *args, "-Z", "unstable-options", "--unit-graph"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["units"]


def subgraph(units):
    """Every unit under librocksdb-sys's build-script run, each as a
    canonical line naming what its hash depends on, plus the root's key."""
    lines, memo = {}, {}

    def key(i):
        if i in memo:
            return memo[i]
        u = units[i]
        own = json.dumps(
            [u["pkg_id"], u["target"]["name"], u["target"]["kind"], u["mode"],
             u["profile"], sorted(u["features"]), u.get("platform")],
            sort_keys=True,
        )
        deps = sorted(key(d["index"]) for d in u["dependencies"])
        lines[own] = deps
        memo[i] = own + "<" + ",".join(deps) + ">"
        return memo[i]

    roots = [
        i for i, u in enumerate(units)
        if "librocksdb-sys" in u["pkg_id"] and u["mode"] == "run-custom-build"
    ]
    if len(roots) != 1:
        sys.exit(f"expected one librocksdb-sys build-script run, found {len(roots)}")
    return key(roots[0]), lines


def main():
    (root_a, a), (root_b, b) = (subgraph(unit_graph(c)) for c in COMMANDS)
    if root_a == root_b:
        print(f"shared: librocksdb-sys's build script and its {len(a)} units "
              "are the same for clippy and the tests")
        return
    print("NOT shared: clippy and the tests would each compile RocksDB's C++")
    for name, only in (("clippy only", a.keys() - b.keys()), ("tests only", b.keys() - a.keys())):
        for line in sorted(only)[:5]:
            print(f"  {name}: {line}")
    sys.exit(1)


if __name__ == "__main__":
    main()
