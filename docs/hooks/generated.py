"""mkdocs hook: the parts of the site that are generated at build time, never copied by hand.

- ``<!-- manifest-schema -->`` in a page is replaced by the manifest's schema, walked from ``st_runtime.schema``
  (every key at every depth, whether it is required, its type, and the comment that schema.py gives it), with the
  output block of every registered model kind (``st_runtime.kinds``).
- The benchmark charts in ``benchmarks/results/*.png`` are served under ``assets/results/`` so the speed page shows
  them as images without a committed copy.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- manifest-schema -->"


def _schema_comments() -> dict[str, str]:
    """Each key's comment in schema.py: trailing (``"key": spec,  # comment``) or on the lines just above the key;
    a key commented in several places keeps every comment."""
    comments: dict[str, list[str]] = {}
    above: list[str] = []
    for line in (ROOT / "st_runtime" / "schema.py").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r'"(\w+)":[^#]*(?:#\s*(.+))?$', stripped)
        if match:
            found = [c for c in (" ".join(above), (match.group(2) or "").strip()) if c]
            for comment in found:
                if comment not in comments.setdefault(match.group(1), []):
                    comments[match.group(1)].append(comment)
        above = []
    return {k: "; ".join(v) for k, v in comments.items()}


def _type_text(spec: Any) -> str:
    from st_runtime import schema as s

    if isinstance(spec, tuple):
        return "number" if set(spec) == {int, float} else " or ".join(_type_text(x) for x in spec)
    if isinstance(spec, type):
        return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(spec, spec.__name__)
    if isinstance(spec, s.Obj):
        return "object"
    if isinstance(spec, s.Map):
        return f"object of {_type_text(spec.value)}" + (" (at least one)" if spec.nonempty else "")
    if isinstance(spec, s.List):
        return f"list of {_type_text(spec.item)}"
    if isinstance(spec, s.OneOf):
        return "one of " + ", ".join(f"`{v}`" for v in spec.values)
    if isinstance(spec, s.Nullable):
        return _type_text(spec.spec) + " or null"
    return "any JSON (a record for people)"


def _rows(spec: Any, path: str, required: bool, comments: dict[str, str], out: list[tuple]) -> None:
    from st_runtime import schema as s

    key = path.rsplit(".", 1)[-1].split("[")[0]
    if path:
        out.append((path, required, _type_text(spec), comments.get(key, "")))
    if isinstance(spec, s.Nullable):
        spec = spec.spec
    if isinstance(spec, s.Obj):
        for name, sub in spec.required.items():
            _rows(sub, f"{path}.{name}" if path else name, True, comments, out)
        for name, sub in spec.optional.items():
            _rows(sub, f"{path}.{name}" if path else name, False, comments, out)
    elif isinstance(spec, s.Map) and isinstance(spec.value, (s.Obj, s.Map, s.List)):
        _rows(spec.value, f"{path}.<{_map_name(key)}>", True, comments, out)
    elif isinstance(spec, s.List) and isinstance(spec.item, (s.Obj, s.Map)):
        _rows(spec.item, f"{path}[]", True, comments, out)


def _map_name(key: str) -> str:
    return {"towers": "tower", "variants": "variant", "files": "file", "rejected_variants": "variant"}.get(key, "name")


def manifest_schema_markdown() -> str:
    """The manifest's schema as Markdown tables: the top level, then each model kind's output block."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import st_runtime
    from st_runtime import kinds
    from st_runtime import schema as s

    comments = _schema_comments()
    blocks = kinds.output_blocks()
    rows: list[tuple] = []
    _rows(s.MANIFEST, "", True, comments, rows)
    block_keys = {key for key, _ in blocks.values()}
    rows = [r for r in rows if r[0].split(".")[0] not in block_keys]  # each kind's block has its own table below
    lines = [
        f"Generated from `st_runtime/schema.py` by st-runtime {st_runtime.__version__} "
        f"(manifest format {st_runtime.FORMAT_VERSION}). `<tower>`, `<variant>` and `<file>` stand for any name.",
        "",
        "| key | required | type | note |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{p}` | {'yes' if r else ''} | {t} | {c} |" for p, r, t, c in rows]
    tasks = ", ".join(f"`{t}`" for t in sorted(blocks))
    lines += [
        "",
        f"`task` is one of the registered model kinds ({tasks}); absent, it means `{s.DEFAULT_TASK}`. Each kind",
        "requires its output block at the top level of the manifest:",
        "",
    ]
    for task, (key, spec) in sorted(blocks.items()):
        block: list[tuple] = []
        _rows(spec, key, True, comments, block)
        lines += [f"### `{key}`: the output block of `{task}`", "", "| key | required | type | note |"]
        lines += ["|---|---|---|---|"]
        lines += [f"| `{p}` | {'yes' if r else ''} | {t} | {c} |" for p, r, t, c in block]
        lines.append("")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, manifest_schema_markdown())
    return markdown


def on_files(files, config):
    from mkdocs.structure.files import File

    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"assets/results/{png.name}", abs_src_path=str(png)))
    return files
