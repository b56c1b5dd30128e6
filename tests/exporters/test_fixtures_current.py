"""The committed fixtures cannot rot: rebuilding the BERT one from scratch gives the same graph, tokenizer and
sentence-transformers outputs (run `python tests/fixtures/make_fixtures.py` when a dependency changes them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fixtures.make_fixtures import make

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_rebuilt_bert_fixture_matches_the_committed_one(tmp_path):
    fresh = make("bert", tmp_path)
    for name in ("model.onnx", "tokenizer.json"):  # int8 depends on the CPU's kernels; it is checked by its gate
        assert (fresh / "export" / name).read_bytes() == (FIXTURES / "bert" / "export" / name).read_bytes(), name
    for name in ("model.safetensors", "tokenizer.json", "modules.json"):
        assert (fresh / "source" / name).read_bytes() == (FIXTURES / "bert" / "source" / name).read_bytes(), name
    # config.json records the transformers release that wrote it, which is a record, not the model
    configs = [json.loads((d / "source" / "config.json").read_text()) for d in (fresh, FIXTURES / "bert")]
    for config in configs:
        config.pop("transformers_version", None)
    assert configs[0] == configs[1]
    got, want = np.load(fresh / "reference.npz"), np.load(FIXTURES / "bert" / "reference.npz")
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-6)
