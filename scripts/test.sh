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
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
