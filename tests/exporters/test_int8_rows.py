"""int8 whose results do not depend on batch company: activations quantized per token row (st-export's "int8"),
against the per-batch form of earlier exports ("int8-dynamic", built on request). A text alone, among short texts
and beside the longest texts gives the same vector (within float rounding of the graph's fp32 parts); the export
gate checks it and the manifest records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TEXTS

pytest.importorskip("torch")

LONG = " ".join(["a much longer text sets the width and, per batch, the activation range of everything"] * 8)
SHORT = ["a", "ok", "two words", "the cat sat"]


@pytest.fixture(scope="module")
def both(zoo):
    return zoo.export("bert", variants=("int8", "int8-dynamic"))


def _company_diff(enc, texts) -> float:
    alone = np.stack([enc.encode([t])[0] for t in texts])
    worst = 0.0
    for company in ([*texts, *SHORT], [*texts, LONG, LONG[:200]]):
        together = enc.encode(company, batch_size=len(company))[: len(texts)]
        worst = max(worst, float(np.abs(together.astype(np.float64) - alone).max()))
    return worst


def test_int8_vectors_do_not_depend_on_batch_company(both):
    from st_runtime import SentenceEncoder

    rows = _company_diff(SentenceEncoder(both, variant="int8"), TEXTS)
    per_batch = _company_diff(SentenceEncoder(both, variant="int8-dynamic"), TEXTS)
    assert rows <= 1e-6, rows
    assert per_batch > 1e-5, per_batch  # the per-batch form moves: the check can fail


def test_manifest_records_the_scheme_and_the_gate(both):
    variants = json.loads((both / "manifest.json").read_text())["towers"]["text"]["variants"]
    rows, per_batch = variants["int8"], variants["int8-dynamic"]
    assert rows["build"]["scheme"] == "per_row" and per_batch["build"]["scheme"] == "per_tensor"
    company = rows["validation"]["batch_company"]
    assert company["gate_max_abs_diff"] == 1e-6 and company["max_abs_diff"] <= 1e-6
    assert per_batch["validation"]["batch_company"]["gate_max_abs_diff"] is None
    assert rows["validation"]["passed"] and rows["validation"]["min_cosine"] >= 0.99


def test_int8_dynamic_is_built_only_on_request():
    from exporters.export import default_variants

    assert "int8" in default_variants() and "int8-dynamic" not in default_variants()


def test_company_gate_fails_an_export_whose_outputs_move(zoo, monkeypatch):
    """The gate itself: a variant whose outputs move with batch company is refused."""
    from exporters import validate

    calls = {"n": 0}

    class Moving:
        def encode(self, texts, batch_size):
            calls["n"] += 1
            rng = np.random.default_rng(batch_size)
            return np.ones((len(texts), 4), np.float32) + (batch_size > 1) * rng.normal(0, 1e-3, (len(texts), 4))

    items = [("query", t) for t in ("a", "bb", "ccc")]
    ref = np.ones((3, 4), np.float32)
    report = validate.validate(ref, Moving(), 0.99, items, company_gate=1e-6)
    assert not report["passed"] and any(f["run"] == "batch_company" for f in report["failures"])
    assert validate.validate(ref, Moving(), 0.99, items)["passed"]  # recorded only, without the gate


def test_cross_encoder_int8_scores_do_not_depend_on_batch_company(tmp_path):
    from tiny_models import build_tiny_cross_encoder

    from exporters import export_model
    from st_runtime import CrossEncoder

    src = build_tiny_cross_encoder(tmp_path / "src", "bert", 1, False)
    out = export_model(str(src), output=tmp_path / "out", variants=["int8"], log=lambda _m: None)
    enc = CrossEncoder(out, variant="int8")
    pairs = [("How big is London", t) for t in TEXTS if t]
    alone = np.concatenate([enc.logits([p], batch_size=1) for p in pairs])
    together = enc.logits([*pairs, ("q", LONG), ("q", "a")], batch_size=len(pairs) + 2)[: len(pairs)]
    assert float(np.abs(together - alone).max()) <= 1e-6
    report = json.loads((out / "manifest.json").read_text())["towers"]["text"]["variants"]["int8"]["validation"]
    assert report["batch_company"]["max_abs_diff"] <= 1e-6
