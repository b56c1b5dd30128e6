#!/usr/bin/env bash
# Development tooling (not for users): the GPU check of st-runtime as one prepared run, for a development
# session that is lent a GPU machine (the `device` tool: at most 64 MiB travel per call, nothing can be
# downloaded there, 15 minutes of device time in all, machine start and transfers included).
#
#   here:   bash dev/gpu-kit.sh pack        # .gpukit/part-1..N: one xz bundle, split to fit the transfers
#   there:  calls 1..N-1  bash dev/gpu-kit.sh receive   carry [".gpukit/part-K"]
#           call N        bash dev/gpu-kit.sh run       carry [".gpukit/part-N", ".gpukit/bundle.sha256"]
#   (pack in the session's own checkout: the device tool sends that one, not a helper's worktree)
#   dry run of `run` on this CPU machine, after pack:  GPUKIT_DRY=1 OUT=/tmp/gpukit-out bash dev/gpu-kit.sh run
#
# The bundle (about 150 MB, 3 transfers where the old kit took 6):
#   ort/   onnxruntime-gpu unpacked, without its TensorRT provider (the machine has no TensorRT) and with the
#          CUDA kernels of other GPU generations than GPUKIT_SM (default 90: H100/H200) zeroed in place, so
#          they compress to nothing. The fatbin entry headers stay intact; the driver loads only the sm_90 ones.
#   hub/   the all-MiniLM-L6-v2 hub snapshot (real weights).
#   all-mpnet-base-v2-random/  all-mpnet-base-v2's config, tokenizer and module files without its weights;
#          `run` writes random weights at the real shape (speed does not depend on weight values).
#
# `run` (results under $OUT, each step time-limited, each writing as it goes): the onnxruntime providers, the
# native tokenizer's C extension built in place,
# `st-export all-MiniLM-L6-v2 --variants opt,fp16 --no-timing` (fp16 validated on CUDA), benchmarks/gpu_sweep.py on it
# (st_runtime fp16/opt x CUDA graphs x batch sizes against sentence-transformers fp32 and fp16 in the same run,
# GPU busy %, tokenizer rate, graph-only ceiling), the CUDA tests (tests/gpu), then the random-weight
# all-mpnet-base-v2: export and a smaller sweep. Keep the JSON and PNG under benchmarks/results/ with the
# card in the name (gpu-h200-minilm.json).
#
# Seen on the H200 (2026-11-28): a fresh machine starts in about 30 s, a receive call takes 1-4 s, the whole
# run about 340 s (export 26 s, MiniLM sweep 136 s of which sentence-transformers at batch 32 takes half,
# tests 23 s, mpnet 150 s). The sweeps stop starting new systems at --budget-s; GPUKIT_MINILM_ARGS with
# --configs and --st-rounds measures a chosen few (benchmarks/gpu_sweep.py --help).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=all-MiniLM-L6-v2
REPO=models--sentence-transformers--all-MiniLM-L6-v2
MPNET_REPO=models--sentence-transformers--all-mpnet-base-v2
KIT=${GPUKIT_DIR:-/tmp/st-gpukit}
SM=${GPUKIT_SM:-90}
ORT_VERSION=${GPUKIT_ORT_VERSION:-1.31.1}
LIMIT=$((64 * 1024 * 1024))
MARGIN=$((1024 * 1024))

tree_bytes() {  # what travels besides carried paths: tracked files and untracked ones git does not ignore
  { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s + 0}'
}

strip_cubins() {  # strip_cubins FILE SM: zero the ELF cubins of every fatbin entry built for another sm
  python3 - "$1" "$2" <<'EOF'
import struct, sys
path, keep = sys.argv[1], int(sys.argv[2])
data = bytearray(open(path, "rb").read())
magic = struct.pack("<I", 0xBA55ED50)  # fatbin header: magic, u16 version, u16 header size, u64 entries size
pos = fatbins = zeroed = kept = 0
while (i := data.find(magic, pos)) >= 0:
    version, header, size = struct.unpack_from("<HHQ", data, i + 4)
    if version != 1 or header != 16:
        pos = i + 4
        continue
    off, end = i + 16, i + 16 + size
    while off < end:  # entry: u16 kind (1 PTX, 2 ELF), u16, u32 header size, u64 payload size, ..., u32 sm at 28
        kind, _, eh, payload = struct.unpack_from("<HHIQ", data, off)
        sm = struct.unpack_from("<I", data, off + 28)[0]
        if kind == 2 and sm != keep:
            data[off + eh:off + eh + payload] = bytes(payload)
            zeroed += payload
        elif sm == keep:
            kept += 1
        off += eh + payload
    if off != end:
        sys.exit(f"{path}: fatbin at {i} does not parse ({off} != {end}); not stripping")
    fatbins += 1
    pos = end
if not kept:
    sys.exit(f"{path}: no sm_{keep} kernels in {fatbins} fatbins; not stripping")
open(path, "wb").write(data)
print(f"{path}: {fatbins} fatbins, {kept} sm_{keep} entries kept, {zeroed >> 20} MiB of other sms zeroed")
EOF
}

pack() {
  local dl="$HOME/.cache/st-real-models" whl hub stage
  whl=$(ls "$dl"/onnxruntime_gpu-"$ORT_VERSION"-cp312-*.whl 2>/dev/null | head -1)
  if [ -z "$whl" ]; then
    mkdir -p "$dl"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$dl" "onnxruntime-gpu==$ORT_VERSION" || { echo "could not download onnxruntime-gpu" >&2; exit 1; }
    whl=$(ls "$dl"/onnxruntime_gpu-"$ORT_VERSION"-cp312-*.whl | head -1)
  fi
  hub="${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}"
  for r in "$REPO:minilm" "$MPNET_REPO:mpnet"; do
    if [ ! -d "$hub/${r%%:*}/snapshots" ]; then
      "${GET_REAL_MODELS:-../shared/tools/get-real-models}" "${r##*:}" || { echo "get-real-models failed" >&2; exit 1; }
    fi
  done
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/ort" "$stage/hub" "$stage/all-mpnet-base-v2-random"
  python3 -m zipfile -e "$whl" "$stage/ort" || exit 1
  rm -f "$stage"/ort/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
  strip_cubins "$stage/ort/onnxruntime/capi/libonnxruntime_providers_cuda.so" "$SM" || exit 1
  # snapshots hold links into blobs/: copy the files themselves (-L), without blobs/, so nothing twice
  mkdir -p "$stage/hub/$REPO"
  cp -rL "$hub/$REPO/refs" "$hub/$REPO/snapshots" "$stage/hub/$REPO/"
  local snap
  snap=$(ls -d "$hub/$MPNET_REPO"/snapshots/* | head -1)
  (cd "$snap" && find -L . -type f ! -name '*.safetensors' ! -name '*.bin' ! -name '*.onnx' ! -name '*.h5' \
    ! -path './onnx/*' ! -path './openvino/*' -print0 | xargs -0 -I{} cp --parents -L {} "$stage/all-mpnet-base-v2-random/")
  rm -rf .gpukit && mkdir .gpukit
  echo "compressing (xz -9, a minute or two)"
  tar -C "$stage" -cf - ort hub all-mpnet-base-v2-random | xz -9 -T0 > .gpukit/bundle.tar.xz || exit 1
  sha256sum .gpukit/bundle.tar.xz | cut -c1-64 > .gpukit/bundle.sha256
  local tree part
  tree=$(tree_bytes)
  part=$((LIMIT - MARGIN - tree - 4096))
  split -b "$part" -d -a 1 .gpukit/bundle.tar.xz .gpukit/piece-
  rm .gpukit/bundle.tar.xz
  local n=0 f
  for f in .gpukit/piece-*; do n=$((n + 1)); mv "$f" ".gpukit/part-$n"; done
  ls -la .gpukit
  echo "working tree that travels: $tree bytes. Make these $n device calls back to back (one warm machine):"
  for k in $(seq 1 $((n - 1))); do
    echo "  run command='bash dev/gpu-kit.sh receive' carry=[\".gpukit/part-$k\"] timeout_s=60"
  done
  echo "  run command='bash dev/gpu-kit.sh run' carry=[\".gpukit/part-$n\", \".gpukit/bundle.sha256\"] timeout_s=600"
  echo "then give_back. Results (JSON, PNG, logs) come back from \$OUT."
}

receive() {
  mkdir -p "$KIT"
  local f
  for f in .gpukit/part-* .gpukit/bundle.sha256; do
    [ -f "$f" ] && cp "$f" "$KIT/"
  done
  ls -la "$KIT"
}

step() {  # step NAME SECONDS COMMAND...: runs with a time limit, logs, and goes on after a failure
  local name=$1 limit=$2
  shift 2
  case " ${GPUKIT_SKIP:-} " in *" $name "*) echo "=== $name: skipped (GPUKIT_SKIP)"; return ;; esac
  echo "=== $name ($(date -u +%T), limit ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0))s"
  echo "$name $rc $((SECONDS - t0))" >> "$OUT/steps.txt"
}

write_random_weights_script() {  # $KIT/random_weights.py FOLDER: random weights at the folder config's shape
  cat > "$KIT/random_weights.py" <<'EOF'
import sys
import torch
from transformers import AutoConfig, AutoModel
torch.manual_seed(0)
folder = sys.argv[1]
model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
model.save_pretrained(folder)
print(f"{folder}: random {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
EOF
}

run() {
  OUT=${OUT:-$PWD/gpukit-out}
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/run.log") 2>&1
  receive
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=true
  py=${PYTHON:-python3}
  local provider=cuda variants=opt,fp16 sweep_args=() mpnet_sweep_args=()
  local parts
  parts=$(ls "$KIT"/part-* 2>/dev/null | sort -t- -k2 -n)
  [ -n "$parts" ] || { echo "no parts in $KIT: make the receive calls first" >&2; exit 1; }
  # shellcheck disable=SC2086
  cat $parts > "$KIT/bundle.tar.xz"
  if [ "$(sha256sum "$KIT/bundle.tar.xz" | cut -c1-64)" != "$(cat "$KIT/bundle.sha256")" ]; then
    echo "the reassembled bundle does not match its checksum (parts: $parts)" >&2; exit 1
  fi
  "$py" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$KIT/bundle.tar.xz" "$KIT" \
    || exit 1
  rm "$KIT/bundle.tar.xz"
  if [ -n "${GPUKIT_DRY:-}" ]; then  # this CPU machine: its own onnxruntime, small corpora
    provider=cpu variants=opt
    sweep_args=(--queries 512 --passages 64 --rounds 1 --batch-sizes 128,512 --st-batch-sizes 32)
    mpnet_sweep_args=("${sweep_args[@]}")
  else
    export PYTHONPATH="$KIT/ort"
    # sentence-transformers at batch 32 took half of the first run's sweep: 2 timed rounds of it, and its
    # larger batches only after st_runtime's systems (gpu_sweep orders them so)
    sweep_args=(--budget-s 130 --st-rounds 2)
    mpnet_sweep_args=(--budget-s 70 --batch-sizes 256,1024,4096 --variants fp16 --st-batch-sizes 32,256
                      --st-precisions fp16 --st-rounds 1 --queries 16384 --passages 2048)
  fi
  # a follow-up run can measure other things: GPUKIT_MINILM_ARGS / GPUKIT_MPNET_ARGS replace the sweeps'
  # arguments, GPUKIT_SKIP="tests ..." skips steps by name
  # shellcheck disable=SC2206
  [ -n "${GPUKIT_MINILM_ARGS:-}" ] && sweep_args=(${GPUKIT_MINILM_ARGS})
  # shellcheck disable=SC2206
  [ -n "${GPUKIT_MPNET_ARGS:-}" ] && mpnet_sweep_args=(${GPUKIT_MPNET_ARGS})
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
  export HF_HUB_CACHE="$KIT/hub"
  : > "$OUT/steps.txt"
  # Step limits total about 530 s inside the call's 600; each step writes its results as it goes, so a step
  # cut short keeps what it finished. The MiniLM figures first, then correctness, then mpnet.
  step providers 30 "$py" -c "import onnxruntime as o; getattr(o, 'preload_dlls', lambda: None)(); \
print(o.__version__, o.__file__, o.get_available_providers())"
  # the native tokenizer (st_runtime/_wordpiece.c) is not carried (a build output): built here, where a compiler is
  step native 60 "$py" setup.py -q build_ext --inplace
  "$py" -c "import st_runtime.nativetok as n; print('native tokenizer:', n.available())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  local folder="$KIT/export/$MODEL"
  # --no-timing: the CPU timing would measure this machine's CPU for nothing (the GPU runs by rank and the sweep
  # names its variants), and leaves the device time to the sweeps
  step export 80 "$py" -m exporters.cli "$MODEL" --variants "$variants" --no-timing -o "$folder"
  [ -f "$folder/manifest.json" ] ||
    step export-opt 60 "$py" -m exporters.cli "$MODEL" --variants opt --no-timing -o "$folder"
  cp "$folder/manifest.json" "$OUT/manifest-minilm.json"
  step sweep 160 "$py" -m benchmarks.gpu_sweep "$folder" --provider "$provider" --json "$OUT/sweep-minilm.json" \
    --png "$OUT/sweep-minilm.png" "${sweep_args[@]}"
  step tests 80 "$py" -m pytest -q -p no:cacheprovider -rs tests/gpu
  local mpnet="$KIT/all-mpnet-base-v2-random"
  write_random_weights_script
  step mpnet-weights 30 "$py" "$KIT/random_weights.py" "$mpnet"
  step mpnet-export 90 "$py" -m exporters.cli "$mpnet" --variants "$variants" --no-timing -o "$KIT/export/mpnet"
  [ -f "$KIT/export/mpnet/manifest.json" ] ||
    step mpnet-export-opt 60 "$py" -m exporters.cli "$mpnet" --variants opt --no-timing -o "$KIT/export/mpnet"
  cp "$KIT/export/mpnet/manifest.json" "$OUT/manifest-mpnet.json"
  step mpnet-sweep 90 "$py" -m benchmarks.gpu_sweep "$KIT/export/mpnet" --provider "$provider" \
    --json "$OUT/sweep-mpnet.json" --png "$OUT/sweep-mpnet.png" "${mpnet_sweep_args[@]}"
  command -v nvidia-smi >/dev/null && nvidia-smi
  cat "$OUT/steps.txt"
}

case "${1:-}" in
  pack) pack ;;
  receive) receive ;;
  run) run ;;
  *) awk 'NR > 1 && /^#/ {print} /^set -uo/ {exit}' "$0"; exit 2 ;;
esac
