"""The documentation site's generated parts: the manifest schema page covers every key of st_runtime/schema.py,
and every page the site links to exists (mkdocs build --strict in scripts/test.sh checks the rest)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from st_runtime import schema
from st_runtime.kinds import output_blocks

ROOT = Path(__file__).resolve().parents[2]


def _hook():
    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs" / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(spec, out: set[str]) -> set[str]:
    if isinstance(spec, schema.Nullable):
        return _keys(spec.spec, out)
    if isinstance(spec, schema.Obj):
        for key, sub in {**spec.required, **spec.optional}.items():
            out.add(key)
            _keys(sub, out)
    elif isinstance(spec, schema.Map):
        _keys(spec.value, out)
    elif isinstance(spec, schema.List):
        _keys(spec.item, out)
    return out


def test_the_schema_page_lists_every_key_of_the_schema_and_every_kind():
    hook = _hook()
    page = hook.manifest_schema_markdown()
    keys = _keys(schema.MANIFEST, set())
    for task, (block, spec) in output_blocks().items():
        assert f"`{task}`" in page
        keys |= _keys(spec, {block})
    missing = sorted(k for k in keys if f".{k}`" not in page and f"`{k}`" not in page and f"`{k}." not in page)
    assert not missing, f"keys of st_runtime/schema.py missing from the generated page: {missing}"
    assert "capped_at_positions" in page and "the tokenizer declared no limit" in page  # schema.py's comments
    assert hook.MARKER in (ROOT / "docs" / "format.md").read_text()


def test_the_charts_the_speed_page_shows_exist():
    speed = (ROOT / "docs" / "speed.md").read_text()
    charts = [
        line.split("(assets/results/")[1].split(")")[0] for line in speed.splitlines() if "(assets/results/" in line
    ]
    assert charts
    for name in charts:
        assert (ROOT / "benchmarks" / "results" / name).is_file(), name


def _anchors(page: Path) -> set[str]:
    """The heading anchors mkdocs' toc gives a page (lower case, punctuation dropped, spaces to hyphens)."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title)).strip("-"))
    return out


def test_readme_links_into_the_docs_resolve():
    """README is read on GitHub, outside mkdocs' link check: its links to docs/ must name pages and headings."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert len(links) >= 10
    for target, anchor in links:
        page = ROOT / target
        assert page.is_file(), target
        if anchor:
            assert anchor in _anchors(page), f"{target}#{anchor}: no such heading"
