#!/usr/bin/env python3
"""Renders the comments of proto/posterior/v1/*.proto into docs/API.md, the
API reference of `posterior.v1`.

    scripts/api-doc.py           # rewrite docs/API.md
    scripts/api-doc.py --check   # fail if docs/API.md is not what the protos give

The parser knows the subset of proto3 the project writes: one declaration
per line; `//` comments directly above a declaration (or at the end of its
line) document it; a comment block above `syntax` documents the file.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "posterior" / "v1"
OUT = ROOT / "docs" / "API.md"

SERVICE = re.compile(r"^service\s+(\w+)\s*\{")
RPC = re.compile(r"^rpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*;")
MESSAGE = re.compile(r"^message\s+(\w+)\s*\{")
ENUM = re.compile(r"^enum\s+(\w+)\s*\{")
ONEOF = re.compile(r"^oneof\s+(\w+)\s*\{")
FIELD = re.compile(r"^((?:repeated|optional)\s+)?(map\s*<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")
VALUE = re.compile(r"^(\w+)\s*=\s*(-?\d+)\s*;")


def cell(text):
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def render_file(path):
    lines = path.read_text().splitlines()
    out = []
    comment = []
    file_doc = None
    # Stack of open blocks: (kind, name, rows) where rows collect table
    # lines; a oneof's fields go to its message's table.
    stack = []
    blocks = []

    def take_comment(trailing=""):
        text = " ".join(comment)
        if trailing:
            text = f"{text} {trailing}".strip()
        comment.clear()
        return text

    for raw in lines:
        line = raw.strip()
        trailing = ""
        if "//" in line and not line.startswith("//"):
            line, trailing = line.split("//", 1)
            line, trailing = line.strip(), trailing.strip()
        if not line:
            # A blank line detaches a comment from what follows.
            comment.clear()
            continue
        if line.startswith("//"):
            comment.append(line[2:].strip())
            continue
        if line.startswith("syntax"):
            file_doc = take_comment()
            continue
        if line.split()[0] in ("package", "import", "option"):
            comment.clear()
            continue
        m = SERVICE.match(line) or MESSAGE.match(line) or ENUM.match(line)
        if m:
            kind = line.split()[0]
            block = {"kind": kind, "name": m.group(1), "doc": take_comment(trailing), "rows": []}
            if stack and stack[-1]["kind"] in ("message", "oneof"):
                parent = stack[-1] if stack[-1]["kind"] == "message" else stack[-2]
                block["name"] = f"{parent['name']}.{block['name']}"
            stack.append(block)
            blocks.append(block)
            continue
        m = ONEOF.match(line)
        if m:
            stack.append({"kind": "oneof", "name": m.group(1), "doc": take_comment(trailing), "rows": None})
            continue
        if line.startswith("}"):
            if stack:
                stack.pop()
            comment.clear()
            continue
        if not stack:
            raise SystemExit(f"{path.name}: unexpected line outside a block: {raw!r}")
        top = stack[-1]
        owner = top if top["kind"] != "oneof" else stack[-2]
        m = RPC.match(line)
        if m and top["kind"] == "service":
            req = ("stream " if m.group(2) else "") + m.group(3)
            resp = ("stream " if m.group(4) else "") + m.group(5)
            owner["rows"].append((m.group(1), f"`{req}`", f"`{resp}`", take_comment(trailing)))
            continue
        m = FIELD.match(line)
        if m and owner["kind"] == "message":
            label = (m.group(1) or "").strip()
            typ = " ".join(m.group(2).split())
            typ = f"{label} {typ}".strip()
            doc = take_comment(trailing)
            if top["kind"] == "oneof":
                doc = f"(oneof `{top['name']}`) {doc}".strip()
            owner["rows"].append((m.group(3), f"`{typ}`", m.group(4), doc))
            continue
        m = VALUE.match(line)
        if m and top["kind"] == "enum":
            top["rows"].append((m.group(1), m.group(2), take_comment(trailing)))
            continue
        raise SystemExit(f"{path.name}: cannot read {raw!r}")

    out.append(f"## `{path.relative_to(ROOT / 'proto')}`\n")
    if file_doc:
        out.append(file_doc + "\n")
    for block in blocks:
        out.append(f"### {block['kind']} `{block['name']}`\n")
        if block["doc"]:
            out.append(block["doc"] + "\n")
        if block["kind"] == "service":
            out.append("| rpc | request | response | |\n|---|---|---|---|")
            out.extend(f"| `{n}` | {q} | {r} | {cell(d)} |" for n, q, r, d in block["rows"])
        elif block["kind"] == "message":
            if not block["rows"]:
                out.append("No fields.")
            else:
                out.append("| field | type | # | |\n|---|---|---|---|")
                out.extend(f"| `{n}` | {t} | {k} | {cell(d)} |" for n, t, k, d in block["rows"])
        else:
            out.append("| value | # | |\n|---|---|---|")
            out.extend(f"| `{n}` | {k} | {cell(d)} |" for n, k, d in block["rows"])
        out.append("")
    return "\n".join(out)


def render():
    parts = [
        "# API reference: `posterior.v1`\n",
        "Generated from the comments of `proto/posterior/v1/*.proto` by "
        "`scripts/api-doc.py`; the test command fails when it is stale. "
        "The servers also answer gRPC reflection, so `grpcurl -plaintext "
        "HOST:PORT describe posterior.v1.ParamService` shows the same.\n",
    ]
    for path in sorted(PROTO_DIR.glob("*.proto")):
        parts.append(render_file(path))
    return "\n".join(parts).rstrip() + "\n"


def main():
    text = render()
    if sys.argv[1:] == ["--check"]:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT.relative_to(ROOT)} is stale: run scripts/api-doc.py")
        return
    if sys.argv[1:]:
        sys.exit(__doc__)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
