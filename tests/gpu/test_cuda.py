"""The CUDA path on a real GPU: fp16 validated at export, no silent CPU fallback, IO binding and CUDA graphs
giving the same embeddings as plain runs. Skipped where onnxruntime has no CUDA provider (CI, CPU machines);
dev/gpu-kit.sh runs them on a GPU machine."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from helpers import TEXTS, assert_parity

from st_runtime import SentenceEncoder

if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="needs onnxruntime with the CUDA provider (onnxruntime-gpu) and a GPU",
)

# mixed lengths, a one-token text, and one longer than the tiny models' max_seq_length
MIXED = TEXTS + ["word " * 600, "x", "a b c d e f g h i j k l m n o p q"] * 2


@pytest.fixture(scope="module")
def exported(zoo):
    return zoo.model("bert"), zoo.export("bert", variants=("opt", "fp16"))


def test_fp16_is_built_validated_and_chosen_as_fastest_on_cuda(exported):
    manifest = json.loads((exported[1] / "manifest.json").read_text())
    fp16 = manifest["towers"]["text"]["variants"]["fp16"]
    assert fp16["status"] == "passed" and "CUDAExecutionProvider" in fp16["providers"]
    assert fp16["validation"]["min_cosine"] >= 0.999
    assert SentenceEncoder(exported[1], providers="cuda", variant="fastest").variant == "fp16"


@pytest.mark.parametrize("variant,gate", [("fp32", 0.99999), ("opt", 0.99999), ("fp16", 0.999)])
def test_cuda_matches_sentence_transformers(zoo, exported, variant, gate):
    ref = zoo.reference(exported[0]).encode(MIXED)
    enc = SentenceEncoder(exported[1], providers="cuda", variant=variant)
    assert enc.text_tower.session.get_providers()[0] == "CUDAExecutionProvider"  # no silent CPU fallback
    assert enc.text_tower.session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    assert type(enc.text_tower.runner).__name__ == "BoundRunner"
    for bs in (None, 1, 3):
        assert_parity(ref, enc.encode(MIXED, batch_size=bs), gate)
    assert_parity(ref[:1], enc.encode(MIXED[:1]), gate)


@pytest.mark.parametrize("variant", ["opt", "fp16"])
def test_cuda_graphs_replay_gives_the_plain_results(exported, variant):
    plain = SentenceEncoder(exported[1], providers="cuda", variant=variant)
    graphs = SentenceEncoder(exported[1], providers="cuda", variant=variant, cuda_graphs=True)
    want = plain.encode(MIXED, batch_size=4)
    first = graphs.encode(MIXED, batch_size=4)  # captures
    again = graphs.encode(MIXED, batch_size=4)  # replays
    other = graphs.encode(MIXED[::-1], batch_size=4)  # replays with other contents in the same shapes
    np.testing.assert_allclose(first, want, atol=2e-3 if variant == "fp16" else 1e-5)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(other[::-1], want, atol=2e-3 if variant == "fp16" else 1e-5)
    assert graphs.text_tower.runner.slots and graphs.text_tower.runner.uncaptured == 0
