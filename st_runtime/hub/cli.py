"""st-runtime cache: show and clean the export cache (st_runtime.hub).

st-runtime cache ls [NAME]              every cached folder: model, revision, how it was made, variants, size
st-runtime cache path NAME [--revision REV]   the folder(s) a load of NAME uses (nothing is downloaded)
st-runtime cache rm NAME [--revision COMMIT]  remove NAME's folders (of one commit, when given)
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ModelNameError
from ..manifest import MANIFEST_NAME
from . import cache


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="st-runtime", description="st-runtime's tools.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "cache", help=f"show and clean the export cache (default {cache.cache_root()}; $ST_RUNTIME_CACHE)"
    )
    csub = c.add_subparsers(dest="action", required=True)
    ls = csub.add_parser("ls", help="list the cached folders")
    ls.add_argument("name", nargs="?", default=None, help="only this model (hub id or short name)")
    path = csub.add_parser("path", help="print the cached folder(s) of a model, newest first")
    path.add_argument("name", help="hub id or short name")
    path.add_argument("--revision", default=None, help="branch, tag or commit (default: main when known, else all)")
    rm = csub.add_parser("rm", help="remove a model's cached folders")
    rm.add_argument("name", help="hub id or short name")
    rm.add_argument("--revision", default=None, help="only this commit (or a prefix of it)")
    return p


def _repo(name: str) -> str:
    repo_id = cache.repo_id_of("hf://" + name.removeprefix("hf://"))
    if repo_id is None:  # repo_id_of refuses a malformed hf:// name itself; this keeps the type checker informed
        raise ModelNameError(f"{name!r} is not a model name")
    return repo_id


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _describe(entry: cache.Entry) -> list[str]:
    manifest = json.loads((entry.path / MANIFEST_NAME).read_text(encoding="utf-8"))
    variants = sorted({v for t in manifest.get("towers", {}).values() for v in t.get("variants", {})})
    present = [
        v
        for v in variants
        if all(
            (entry.path / t["variants"][v]["file"]).is_file() for t in manifest["towers"].values() if v in t["variants"]
        )
    ]
    source = manifest.get("source", {})
    origin = f"{source.get('model')}@{str(source.get('revision') or '-')[:12]}"
    return [entry.repo_id, entry.commit[:12], entry.origin, ",".join(present), _human(entry.size()), origin]


def _ls(name: str | None) -> int:
    found = cache.entries(_repo(name) if name else None)
    print(f"export cache: {cache.cache_root()}")
    if not found:
        print("(empty)" if name is None else f"nothing cached for {name}")
        return 0
    rows = [["MODEL", "REVISION", "MADE", "VARIANTS", "SIZE", "SOURCE"], *(_describe(e) for e in found)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"total {_human(sum(e.size() for e in found))} in {len(found)} folder(s)")
    return 0


def _path(name: str, revision: str | None) -> int:
    repo_id = _repo(name)
    commit = cache.read_ref(repo_id, revision)
    found = [e for e in cache.entries(repo_id) if commit is None or e.commit == commit]
    if revision is not None and commit is None:
        found = [e for e in found if e.commit.startswith(revision)]
    if not found:
        print(
            f"st-runtime: {repo_id} at {revision or 'any revision'} is not in the export cache "
            f"({cache.cache_root()}); loading it by name puts it there.",
            file=sys.stderr,
        )
        return 1
    for e in found:
        print(e.path)
    return 0


def _rm(name: str, revision: str | None) -> int:
    repo_id = _repo(name)
    gone = cache.remove(repo_id, revision)
    if not gone:
        print(f"st-runtime: nothing cached for {repo_id}" + (f" at {revision}" if revision else ""), file=sys.stderr)
        return 1
    for path in gone:
        print(f"removed {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..errors import StRuntimeError

    try:
        if args.action == "ls":
            return _ls(args.name)
        if args.action == "path":
            return _path(args.name, args.revision)
        return _rm(args.name, args.revision)
    except StRuntimeError as exc:
        print(f"st-runtime: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
