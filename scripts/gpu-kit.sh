#!/usr/bin/env bash
# The GPU check of st-runtime as one prepared run, for a development session that is lent a GPU machine
# (the `device` tool: at most 64 MiB travel per call, nothing can be downloaded there, 15 minutes in all).
#
#   here:   bash scripts/gpu-kit.sh pack        # .ortgpu/part-1..5 (onnxruntime-gpu) and .gpukit/part-1..6
#                                               # (the all-MiniLM-L6-v2 hub snapshot), then prints the 6 calls
#   there:  calls 1-5  bash scripts/gpu-kit.sh receive   carry [".ortgpu/part-K", ".gpukit/part-K"]
#           call 6     bash scripts/gpu-kit.sh run       carry [".gpukit/part-6", ".gpukit/part-6.sha256"]
#   (pack in the session's own checkout: the device tool sends that one, not a helper's worktree)
#   dry run of `run` on this CPU machine, after pack:  GPUKIT_DRY=1 OUT=/tmp/gpukit-out bash scripts/gpu-kit.sh run
#
# `run` installs onnxruntime-gpu beside the machine's own PyTorch, sentence-transformers and transformers,
# then (results under $OUT): the CUDA tests (tests/gpu), `st-export all-MiniLM-L6-v2 --variants opt,fp16`
# (fp16 is validated on CUDA there), and benchmarks/throughput.py --provider cuda against
# sentence-transformers fp32 and fp16 in the same run, at each system's default batch, then at 512 and
# 2048 texts per batch for all (the GPU default of 128 is not tuned yet: these runs are what tunes it).
# Keep the JSON and PNG under benchmarks/results/ with the card in the name (gpu-h100-minilm.json).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=all-MiniLM-L6-v2
REPO=models--sentence-transformers--all-MiniLM-L6-v2
KIT=${GPUKIT_DIR:-/tmp/st-gpukit}
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((1024 * 1024))

tree_bytes() {  # what travels besides carried paths: tracked files and untracked ones git does not ignore
  { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s + 0}'
}

pack() {
  if [ ! -f .ortgpu/part-5 ]; then
    "${ORT_GPU_CHUNKS:-../shared/tools/ort-gpu-chunks}" || { echo "ort-gpu-chunks failed" >&2; exit 1; }
  fi
  local hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
  if [ ! -d "$hub/$REPO/snapshots" ]; then
    "${GET_REAL_MODELS:-../shared/tools/get-real-models}" minilm || { echo "get-real-models failed" >&2; exit 1; }
  fi
  rm -rf .gpukit && mkdir .gpukit
  # snapshots hold links into blobs/: store the files themselves (-h), without blobs/, so nothing twice
  tar -C "$hub" -h -cf .gpukit/hub.tar "$REPO/refs" "$REPO/snapshots"
  sha256sum .gpukit/hub.tar | cut -c1-64 > .gpukit/hub.sha256
  local tree total off=0 k size
  tree=$(tree_bytes)
  total=$(stat -c %s .gpukit/hub.tar)
  for k in 1 2 3 4 5 6; do
    if [ "$k" -lt 6 ]; then
      size=$((LIMIT - MARGIN - tree - $(stat -c %s ".ortgpu/part-$k")))
    else
      size=$((total - off))
    fi
    [ "$size" -gt $((total - off)) ] && size=$((total - off))
    [ "$size" -lt 0 ] && size=0
    tail -c +"$((off + 1))" .gpukit/hub.tar | head -c "$size" > ".gpukit/part-$k"
    off=$((off + size))
  done
  if [ "$(stat -c %s .gpukit/part-6)" -gt $((LIMIT - MARGIN - tree)) ]; then
    echo "the hub snapshot does not fit in 6 calls" >&2; exit 1
  fi
  mv .gpukit/hub.sha256 .gpukit/part-6.sha256  # travels with the last part
  rm .gpukit/hub.tar
  ls -la .ortgpu .gpukit
  echo "working tree that travels: $tree bytes. Make these device calls back to back (one warm machine):"
  for k in 1 2 3 4 5; do
    echo "  run command='bash scripts/gpu-kit.sh receive' carry=[\".ortgpu/part-$k\", \".gpukit/part-$k\"] timeout_s=120"
  done
  echo "  run command='bash scripts/gpu-kit.sh run' carry=[\".gpukit/part-6\", \".gpukit/part-6.sha256\"] timeout_s=600"
  echo "then give_back. Results (JSON, PNG, logs) come back from \$OUT."
}

receive() {
  mkdir -p "$KIT"
  local f
  for f in .ortgpu/part-* .gpukit/part-*; do
    [ -f "$f" ] || continue
    cp "$f" "$KIT/$(basename "$(dirname "$f")")-$(basename "$f")"
  done
  ls -la "$KIT"
}

step() {  # step NAME SECONDS COMMAND...: runs with a time limit, logs, and goes on after a failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date -u +%T), limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0))s"
  echo "$name $rc $((SECONDS - t0))" >> "$OUT/steps.txt"
}

run() {
  OUT=${OUT:-$PWD/gpukit-out}
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/run.log") 2>&1
  receive
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=true
  local py=${PYTHON:-python3} provider=cuda variants=opt,fp16 bench_args=()
  if [ -n "${GPUKIT_DRY:-}" ]; then  # this CPU machine: its own onnxruntime, a small corpus
    provider=cpu variants=opt
    bench_args=(--no-peers --queries 256 --passages 32 --rounds 1)
  else
    for k in 1 2 3 4 5; do
      [ -f "$KIT/.ortgpu-part-$k" ] || { echo "missing onnxruntime-gpu part $k: make calls 1-5 first" >&2; exit 1; }
    done
    cat "$KIT"/.ortgpu-part-{1,2,3,4,5} > "$KIT/onnxruntime_gpu-0-cp312-cp312-manylinux_2_28_x86_64.whl.zip"
    # pip wants the wheel's own file name: read it from the archive's dist-info
    local whl
    whl=$("$py" - "$KIT/onnxruntime_gpu-0-cp312-cp312-manylinux_2_28_x86_64.whl.zip" <<'EOF'
import re, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
wheel = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
dist = wheel.split("/")[0][: -len(".dist-info")]
tag = re.search(r"^Tag: (.+)$", z.read(wheel).decode(), re.M).group(1)
print(f"{dist}-{tag}.whl")
EOF
)
    mv "$KIT/onnxruntime_gpu-0-cp312-cp312-manylinux_2_28_x86_64.whl.zip" "$KIT/$whl"
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$KIT/site" "$KIT/$whl" || exit 1
    export PYTHONPATH="$KIT/site"
  fi
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
  for k in 1 2 3 4 5 6; do
    [ -f "$KIT/.gpukit-part-$k" ] || { echo "missing hub part $k" >&2; exit 1; }
  done
  cat "$KIT"/.gpukit-part-{1,2,3,4,5,6} > "$KIT/hub.tar"
  if [ "$(sha256sum "$KIT/hub.tar" | cut -c1-64)" != "$(cat "$KIT/.gpukit-part-6.sha256")" ]; then
    echo "the reassembled hub snapshot does not match its checksum" >&2; exit 1
  fi
  mkdir -p "$KIT/hub" && tar -C "$KIT/hub" -xf "$KIT/hub.tar" && rm "$KIT/hub.tar"
  export HF_HUB_CACHE="$KIT/hub"
  : > "$OUT/steps.txt"
  # Step limits total 570 s inside the call's 600; each step writes its results as it goes, so a step cut
  # short keeps what it finished. Correctness first, then the figures.
  step providers 30 "$py" -c "import onnxruntime as o; getattr(o, 'preload_dlls', lambda: None)(); \
print(o.__version__, o.__file__, o.get_available_providers())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step tests 90 "$py" -m pytest -q -p no:cacheprovider -rs tests/gpu
  local folder="$KIT/export/$MODEL"
  step export 150 "$py" -m exporters.cli "$MODEL" --variants "$variants" -o "$folder"
  cp "$folder/manifest.json" "$OUT/manifest-$MODEL.json"
  step bench 150 "$py" benchmarks/throughput.py "$folder" --provider "$provider" --variants "$variants" \
    --rounds 3 --json "$OUT/$provider-minilm.json" --png "$OUT/$provider-minilm.png" "${bench_args[@]}"
  step bench512 80 "$py" benchmarks/throughput.py "$folder" --provider "$provider" --variants "$variants" \
    --batch-size 512 --rounds 3 --queries 16384 --passages 2048 --json "$OUT/$provider-minilm-b512.json" \
    "${bench_args[@]}"
  step bench2048 70 "$py" benchmarks/throughput.py "$folder" --provider "$provider" --variants "${variants#*,}" \
    --batch-size 2048 --rounds 3 --queries 16384 --passages 2048 --json "$OUT/$provider-minilm-b2048.json" \
    "${bench_args[@]}"
  cat "$OUT/steps.txt"
}

case "${1:-}" in
  pack) pack ;;
  receive) receive ;;
  run) run ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
