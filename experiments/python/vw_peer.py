#!/usr/bin/env python3
"""Vowpal Wabbit peer for Posterior's contextual experiments.

Reads a pre-drawn environment written by `experiments` (src/vw.rs): per
request K doc ids, K contexts, K true click probabilities and K would-be
clicks. Runs one VW `--cb_explore_adf` variant over it with bandit feedback
only (the chosen candidate's click), sampling the shown candidate from VW's
pmf with a seeded generator, and writes the cumulative regret and clicks at
the file's checkpoints plus examples/s as JSON.

Features: namespace `d` holds the doc id and namespace `x` the context, and
`-q dx` lets VW learn one weight vector per doc, the same information the
logistic Thompson-sampling policies get.

Usage: vw_peer.py --env FILE --name NAME --args "VW ARGS" --seed S --out FILE
"""

import argparse
import json
import struct
import sys
import time

import numpy as np
import vowpalwabbit

MAGIC = b"PSTRENV1"


def read_env(path):
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic != MAGIC:
            sys.exit(f"vw_peer: {path}: bad magic {magic!r}")
        (header_len,) = struct.unpack("<I", f.read(4))
        header = json.loads(f.read(header_len).decode("utf-8"))
        offset = 12 + header_len
    k, d = header["candidates"], header["dim"]
    record = np.dtype(
        [
            ("docs", "<u4", (k,)),
            ("contexts", "<f4", (k, d)),
            ("probs", "<f8", (k,)),
            ("clicks", "u1", (k,)),
        ]
    )
    data = np.memmap(path, dtype=record, mode="r", offset=offset, shape=(header["requests"],))
    return header, data


def sample_index(pmf, u):
    """Index drawn from the (possibly unnormalised) pmf with uniform u."""
    target = u * sum(pmf)
    acc = 0.0
    for a, p in enumerate(pmf):
        acc += p
        if target < acc:
            return a
    return len(pmf) - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--args", required=True, help="VW arguments after --cb_explore_adf")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    opts = ap.parse_args()

    header, data = read_env(opts.env)
    checkpoints = header["checkpoints"]
    rng = np.random.default_rng(opts.seed)
    vw_args = f"--cb_explore_adf {opts.args} -q dx --quiet --random_seed {opts.seed % (2**31)}"
    ws = vowpalwabbit.Workspace(vw_args)

    regret, clicks = 0.0, 0
    out_regret, out_clicks = [], []
    next_cp = 0
    chunk = 4096
    started = time.perf_counter()
    for start in range(0, header["requests"], chunk):
        # Plain Python lists per chunk: formatting numpy scalars is slow.
        rows = data[start : start + chunk]
        docs_rows = rows["docs"].tolist()
        ctx_rows = rows["contexts"].tolist()
        probs_rows = rows["probs"].tolist()
        clicks_rows = rows["clicks"].tolist()
        uniforms = rng.random(len(docs_rows)).tolist()
        for i, (docs, ctxs, probs, would_click) in enumerate(
            zip(docs_rows, ctx_rows, probs_rows, clicks_rows)
        ):
            lines = [
                f"|d {doc} |x " + " ".join(f"{j}:{v:.5g}" for j, v in enumerate(ctx))
                for doc, ctx in zip(docs, ctxs)
            ]
            pmf = ws.predict(lines)
            a = sample_index(pmf, uniforms[i])
            click = bool(would_click[a])
            regret += max(probs) - probs[a]
            clicks += int(click)
            lines[a] = f"0:{-1.0 if click else 0.0}:{max(pmf[a], 1e-6)} " + lines[a]
            ws.learn(lines)
            t = start + i + 1
            if next_cp < len(checkpoints) and t == checkpoints[next_cp]:
                out_regret.append(regret)
                out_clicks.append(float(clicks))
                next_cp += 1
    elapsed = max(time.perf_counter() - started, 1e-9)
    ws.finish()
    result = {
        "name": opts.name,
        "vw_args": vw_args,
        "regret": out_regret,
        "clicks": out_clicks,
        "examples_per_s": header["requests"] / elapsed,
        "vowpalwabbit": getattr(vowpalwabbit, "__version__", "unknown"),
    }
    with open(opts.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
