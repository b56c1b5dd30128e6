"""Importing and using st_runtime never loads torch, transformers, sentence_transformers or onnx."""

from __future__ import annotations

import os
import subprocess
import sys

HEAVY = (
    "torch",
    "transformers",
    "sentence_transformers",
    "onnx",
    "optimum",
    "exporters",
    "starlette",
    "pyarrow",
    "ray",
    "uvicorn",
    "prometheus_client",
    "orjson",
    "huggingface_hub",  # the [hub] extra: imported only when a model name (not a folder) is loaded
)

SCRIPT = """
import sys
from st_runtime import SentenceEncoder, util
m = SentenceEncoder(sys.argv[1])
e = m.encode(["How big is London", "London has 9,787,426 inhabitants"])
util.semantic_search(e, e)
m.similarity(e, e)
heavy = sorted(k for k in sys.modules if k.split(".")[0] in {heavy!r})
print("HEAVY:", heavy)
sys.exit(1 if heavy else 0)
""".replace("{heavy!r}", repr(set(HEAVY)))


def test_encode_imports_no_heavy_module(tiny_bert):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_bert[1])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "HEAVY: []" in r.stdout


def test_the_check_itself_detects_a_heavy_import(tiny_bert, tmp_path):
    """Guard against a test that cannot fail: a forbidden module imported first must trip it (a stand-in named
    onnx, so that the guard is tested on the slim install too)."""
    (tmp_path / "onnx.py").write_text("")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    r = subprocess.run(
        [sys.executable, "-c", "import onnx\n" + SCRIPT, str(tiny_bert[1])],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 1 and "onnx" in r.stdout
