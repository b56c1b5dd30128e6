#!/usr/bin/env bash
# Create the venv of the benchmark's peers (default .venv-peers): sentence-transformers' own ONNX
# backend (sentence-transformers[onnx]: optimum-onnx) and fastembed. Their versions conflict with
# st-runtime's .venv, so they get their own; benchmarks/throughput.py uses .venv-peers when it exists.
#   bash scripts/setup-peers.sh [VENV_DIR]
# Idempotent. Pinned to the versions the benchmark was written and checked with.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-peers}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU build of torch first: otherwise pip resolves torch to a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "sentence-transformers[onnx]==5.7.0" "fastembed==0.9.1" \
  "optimum==2.1.0" "optimum-onnx==0.1.0" "onnxruntime==1.32.0" "transformers==4.57.6" "numpy==2.4.6"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import fastembed, onnxruntime, optimum.onnxruntime, sentence_transformers, torch  # noqa: F401
from sentence_transformers.backend import export_dynamic_quantized_onnx_model, export_optimized_onnx_model  # noqa: F401
print("peers:", " | ".join(f"{d} {md.version(d)}" for d in
      ("sentence-transformers", "optimum-onnx", "onnxruntime", "fastembed", "torch", "transformers")))
PY
