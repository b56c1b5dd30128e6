"""st-serve with a StaticEmbedding model: its texts are tokenized without special tokens, as in encode."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import needs_export

pytestmark = [needs_export, pytest.mark.filterwarnings("ignore")]

httpx = pytest.importorskip("httpx")

TEXTS = ["How big is London", "", "a", " ".join(["a long text past the maximum sequence length"] * 30)]


def test_static_model_served_as_encode_runs_it(start_server, tmp_path):
    from tiny_models import build_tiny_static

    from exporters import export_model
    from st_runtime import SentenceEncoder

    out = export_model(str(build_tiny_static(tmp_path / "src")), output=tmp_path / "onnx", log=lambda _m: None)
    local = SentenceEncoder(out)
    server = start_server(out)
    r = httpx.post(server.url + "/embed", json={"inputs": TEXTS, "normalize": False}, timeout=30)
    assert r.status_code == 200, r.text
    want = local.encode(TEXTS, output_value="sentence_embedding_unnormalized")  # normalize=false: before Normalize
    np.testing.assert_allclose(np.array(r.json(), np.float32), want, atol=1e-6)
    r = httpx.post(server.url + "/embed", json={"inputs": TEXTS}, timeout=30)
    np.testing.assert_allclose(np.array(r.json(), np.float32), local.encode(TEXTS), atol=1e-6)
    toks = httpx.post(server.url + "/tokenize", json={"inputs": ["How big is London"]}, timeout=30).json()
    ids = local.text_tower.tokenize(["How big is London"])[0].ids
    assert [t["id"] for t in toks[0]] == ids and not any(t["special"] for t in toks[0])
    with_special = httpx.post(
        server.url + "/tokenize", json={"inputs": ["How big is London"], "add_special_tokens": True}, timeout=30
    ).json()
    assert len(with_special[0]) == len(ids) + 2 and with_special[0][0]["special"]
