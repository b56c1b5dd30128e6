#!/usr/bin/env bash
# Set everything up and run the test suite (the command .ci/run runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Optional real-weights test of all-mpnet-base-v2: place it in the HF cache when the tool is here.
if [ -x ../shared/tools/get-real-models ]; then
  PYTHON=.venv/bin/python ../shared/tools/get-real-models mpnet >/dev/null 2>&1 \
    || echo "note: could not place all-mpnet-base-v2 in the HF cache; its test will skip"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy st_runtime
# The documentation site: a broken link, a page missing from the nav or an unresolved API reference fails.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
# The runtime's own tests once more on the slim install (numpy, onnxruntime, tokenizers; no torch, no
# transformers; with the [hub] extra, huggingface_hub): they run on the committed fixtures in tests/fixtures.
if [ $# -eq 0 ]; then
  [ -x .venv-slim/bin/python ] || "${PYTHON:-python3}" -m venv .venv-slim
  .venv-slim/bin/python -m pip install -q --upgrade pip
  .venv-slim/bin/python -m pip install -q ".[test,hub]"
  .venv-slim/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers', 'sentence_transformers', 'onnx')))" \
    || { echo "the slim venv holds torch, transformers, sentence_transformers or onnx" >&2; exit 1; }
  (cd "$(mktemp -d)" && "$OLDPWD/.venv-slim/bin/python" -m pytest -q -p no:cacheprovider "$OLDPWD/tests/runtime")
fi
