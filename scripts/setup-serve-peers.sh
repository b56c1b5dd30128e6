#!/usr/bin/env bash
# Create the venv of benchmarks/serve.py's server peers (default .venv-serve-peers):
#   - infinity (infinity-emb): its torch engine (sentence-transformers) and, if it installs and runs,
#     its optimum engine (ONNX Runtime), for which this script also writes the ONNX folder it serves;
#   - benchmarks/serve_peers/plain_fastapi.py: FastAPI + uvicorn + sentence-transformers by hand.
# Their versions conflict with st-runtime's .venv (infinity needs numpy<2 and sentence-transformers<4).
#   bash scripts/setup-serve-peers.sh [VENV_DIR]
# Idempotent. The model (SERVE_PEERS_MODEL, default sentence-transformers/all-MiniLM-L6-v2) must be in the
# Hugging Face cache: the ONNX export runs with HF_HUB_OFFLINE=1 unless HF_HUB_OFFLINE is set otherwise.
#
# Pins, found by trial with torch 2.13.0 (CPU) on Python 3.11:
#   infinity-emb 0.0.78 (the newest) caps sentence-transformers<4, numpy<2, click<8.2, typer<0.13,
#     uvicorn<0.33, rich<14; sentence-transformers 3.4.1 is the newest below 4; numpy 1.26.4 the newest below 2.
#     It runs with fastapi 0.165 / starlette 1.10 (only a deprecation warning about ORJSONResponse).
#   transformers 4.57.6: accepted by sentence-transformers 3.4.1 (<5) and optimum-onnx 0.1.0 (<4.58).
#   optimum engine: infinity wants optimum[onnxruntime]>=1.24. optimum 1.27 (with transformers<4.54) cannot
#     even be imported with torch 2.13 (optimum.exporters.onnx imports torch.onnx.symbolic_opset14._attention_scale,
#     which torch removed), so optimum 2.1.0 + optimum-onnx 0.1.0 (which provides optimum.onnxruntime there).
#     With them infinity 0.0.78's own ONNX graph optimisation fails (it passes OptimizationConfig's
#     `optimize_with_onnxruntime_only`, removed in optimum-onnx) and it serves the unoptimised graph; so this
#     script runs that same optimisation (level 99, CPU, no fp16) itself and serves model_optimized.onnx.
#   No bettertransformer: optimum 2.x removed optimum.bettertransformer; run infinity with --no-bettertransformer.
#
# infinity's optimum engine offline: for a hub id it lists the repo's files through the hub API (fails with
# HF_HUB_OFFLINE=1; the hub repo's onnx/ graphs are not in the cache either), and for a local folder it passes
# the ONNX file's full path as file_name, which optimum-onnx rejects ("Could not find any ONNX files with
# target file name /.../model.onnx"). What works: the folder written here, served as `--model-id .` from
# inside it, with --pooling-method mean (auto means CLS for this engine) and --onnx-disable-optimize:
#   cd $VENV/models/all-MiniLM-L6-v2-onnx && HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 $VENV/bin/infinity_emb v2 \
#     --model-id . --served-model-name sentence-transformers/all-MiniLM-L6-v2 --engine optimum --device cpu \
#     --pooling-method mean --onnx-disable-optimize --host 127.0.0.1 --port P
# That engine also truncates at config.json's max_position_embeddings (512), not at sentence-transformers'
# max_seq_length (256): the folder's config.json gets max_seq_length, so long texts embed as in ST.
# If the optimum part cannot be installed or run, this script says why and still succeeds (no ONNX folder).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-serve-peers}"
PY="${PYTHON:-python3}"
MODEL="${SERVE_PEERS_MODEL:-sentence-transformers/all-MiniLM-L6-v2}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# Keep the venv out of git even where .gitignore does not list it.
[ -e "$VENV/.gitignore" ] || echo '*' >"$VENV/.gitignore"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU build of torch first: otherwise pip resolves torch to a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
BASE=("torch==2.13.0" "infinity-emb[server]==0.0.78" "sentence-transformers==3.4.1" "transformers==4.57.6"
  "numpy==1.26.4" "fastapi==0.165.0" "starlette==1.10.0" "uvicorn[standard]==0.32.1" "orjson==3.13.0"
  "pydantic==2.14.4" "huggingface_hub==0.36.2" "click==8.1.8" "typer==0.12.5")
"$VENV/bin/python" -m pip install -q "${BASE[@]}"

# infinity's optimum (ONNX Runtime) engine: optional.
OPTIMUM_STATUS="ok"
if ! "$VENV/bin/python" -m pip install -q "${BASE[@]}" "infinity-emb[server,optimum]==0.0.78" "optimum==2.1.0" \
  "optimum-onnx[onnxruntime]==0.1.0" "onnxruntime==1.32.0" "onnx==1.23.2"; then
  OPTIMUM_STATUS="pip install of optimum==2.1.0 optimum-onnx[onnxruntime]==0.1.0 onnxruntime==1.32.0 failed"
fi
ONNX_DIR="$VENV/models/$(basename "$MODEL")-onnx"
if [ "$OPTIMUM_STATUS" = ok ]; then
  if ! OPTIMUM_STATUS="$(HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" DO_NOT_TRACK=1 "$VENV/bin/python" - "$MODEL" "$ONNX_DIR" <<'PY'
# Export the model for infinity's optimum engine, optimise it as infinity would, then load it with
# infinity's own OptimumEmbedder and compare it with SentenceTransformer. Prints "ok" or the reason.
import json, os, shutil, sys, tempfile, traceback
from pathlib import Path

model, out = sys.argv[1], Path(sys.argv[2]).resolve()
try:
    if not list(out.glob("*.onnx")):
        from optimum.exporters.onnx import main_export
        from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
        from optimum.onnxruntime.configuration import OptimizationConfig

        shutil.rmtree(out, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            # library transformers: the bare encoder with last_hidden_state, which infinity pools itself
            main_export(model, output=tmp, task="feature-extraction", library_name="transformers")
            try:  # infinity 0.0.78's utils_optimum.optimize_model config, minus optimize_with_onnxruntime_only
                ORTOptimizer.from_pretrained(ORTModelForFeatureExtraction.from_pretrained(tmp)).optimize(
                    optimization_config=OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False),
                    save_dir=out, one_external_file=True)
            except Exception as ex:  # serve the plain export then
                print(f"ONNX optimisation failed ({ex!r}); serving the plain export", file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(tmp, out)
    onnx_files = sorted(p.name for p in out.glob("*.onnx"))
    assert len(onnx_files) == 1, f"infinity needs exactly one .onnx file in {out}, found {onnx_files}"
    import numpy as np
    from infinity_emb.args import EngineArgs
    from infinity_emb.transformer.embedder.optimum import OptimumEmbedder
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device="cpu")
    # infinity's optimum engine truncates at config.max_position_embeddings (512 here), sentence-transformers
    # at max_seq_length (256 here): lower the former in the served folder, or long texts embed differently.
    config = json.loads((out / "config.json").read_text())
    if st.max_seq_length and config.get("max_position_embeddings", 0) > st.max_seq_length:
        config["max_position_embeddings"] = st.max_seq_length
        (out / "config.json").write_text(json.dumps(config, indent=2))
    os.chdir(out)  # infinity serves a local ONNX folder only as "." (see the comment in the shell script)
    emb = OptimumEmbedder(engine_args=EngineArgs(model_name_or_path=".", engine="optimum", device="cpu",
                                                 pooling_method="mean", onnx_disable_optimize=True))
    texts = ["The quick brown fox jumps over the lazy dog.", "hello world", "word " * 600]
    got = np.asarray(emb.encode_post(emb.encode_core(emb.encode_pre(texts))))
    ref = st.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    cos = float((got * ref).sum(1).min())
    assert cos > 0.9999, f"infinity optimum engine disagrees with SentenceTransformer: min cosine {cos}"
    print("ok")
    print(f"infinity optimum engine: {out / onnx_files[0]} matches SentenceTransformer (min cosine {cos:.6f})",
          file=sys.stderr)
except Exception as ex:
    traceback.print_exc()
    print(f"{type(ex).__name__}: {ex}".splitlines()[0][:300])
PY
)"; then OPTIMUM_STATUS="the ONNX export/check crashed"; fi
  OPTIMUM_STATUS="$(printf '%s\n' "$OPTIMUM_STATUS" | tail -n 1)"
fi
if [ "$OPTIMUM_STATUS" = ok ]; then
  echo "infinity optimum engine: available; serve $ONNX_DIR as --model-id . from inside it"
else
  rm -rf "$ONNX_DIR"
  echo "infinity optimum engine: UNAVAILABLE: $OPTIMUM_STATUS" >&2
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import fastapi, infinity_emb, orjson, sentence_transformers, torch, uvicorn  # noqa: F401
from infinity_emb.infinity_server import create_server  # noqa: F401

names = ["infinity-emb", "sentence-transformers", "torch", "transformers", "numpy", "fastapi", "uvicorn", "orjson"]
try:
    import optimum.onnxruntime  # noqa: F401
    names += ["optimum", "optimum-onnx", "onnxruntime"]
except Exception as ex:
    print(f"(optimum.onnxruntime does not import: {ex!r})")
print("serve peers:", " | ".join(f"{d} {md.version(d)}" for d in names))
PY
