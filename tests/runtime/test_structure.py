"""The house rules of the runtime, checked on its source: kinds are named only by the kinds registry and the schema,
modules and functions stay small, and no import circle forms."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from st_runtime.kinds import all_kinds

PACKAGE = Path(__file__).resolve().parents[2] / "st_runtime"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _kind_literals(tree: ast.Module, names: set[str]) -> list[int]:
    """Lines where a kind's name is compared with, used as a key or index, or passed as a value: a branch on a
    kind. Docstrings and messages (f-strings) do not count."""
    found = []
    for node in ast.walk(tree):
        consts: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            consts = [node.left, *node.comparators]
        elif isinstance(node, ast.Subscript):
            consts = [node.slice]
        elif isinstance(node, ast.Dict):
            consts = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Call):
            consts = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            consts = list(node.elts)
        found += [c.lineno for c in consts if isinstance(c, ast.Constant) and c.value in names]
    return found


def test_only_the_registry_and_the_schema_name_a_kind():
    names = set(all_kinds())
    assert {"embedding", "cross-encoder", "sparse-embedding"} <= names
    allowed = {PACKAGE / "schema.py", *(PACKAGE / "kinds").glob("*.py")}
    offenders = {
        str(p.relative_to(PACKAGE)): lines
        for p in MODULES
        if p not in allowed and (lines := _kind_literals(_tree(p), names))
    }
    assert not offenders, f"kind names outside st_runtime/kinds and schema.py: {offenders}"


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines without its docstring: the limit is on code, and public docstrings document every
    argument (the API reference is generated from them)."""
    lines = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= 400, f"{path.name} has {lines} lines (at most 400)"
    long = [
        f"{n.name} ({_code_lines(n)} lines without the docstring)"
        for n in ast.walk(_tree(path))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(n) > 60
    ]
    assert not long, f"{path.name}: functions over 60 lines: {long}"


def _imports(path: Path, root: Path) -> set[str]:
    """The project's modules ``path`` imports at module level (imports inside functions run later and cannot
    circle)."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in _tree(path).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m.removesuffix(".__init__") for m in out}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if seen.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in seen and (found := visit(d)):
                return found
        stack.pop()
        seen[m] = 2
        return None

    for m in sorted(graph):
        if m not in seen and (found := visit(m)):
            return found
    return None


@pytest.mark.parametrize("package", ["st_runtime", "exporters", "benchmarks"])
def test_no_import_circle(package):
    root = PACKAGE.parent
    if not (root / package).is_dir():
        pytest.skip(f"{package}/ is not in this checkout")
    graph = {}
    for p in sorted((root / package).rglob("*.py")):
        name = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = _imports(p, root)
    # a package importing its own submodules (kinds/__init__ registering the built-in kinds) is not a circle
    graph = {m: {d for d in deps if d in graph and d != m and not d.startswith(m + ".")} for m, deps in graph.items()}
    circle = _circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])
