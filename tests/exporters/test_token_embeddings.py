"""encode(output_value="token_embeddings") on every architecture of the tiny grid, exact variants included: each
text's token embeddings as sentence-transformers gives them (trimmed of padding), from the graph's second
output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TEXTS
from tiny_models import TINY_ARCHITECTURES

from st_runtime import SentenceEncoder


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_token_embeddings_on_every_architecture(zoo, arch):
    src, out = zoo.model(arch), zoo.export(arch)
    ref = zoo.reference(src)
    want = [t.numpy() for t in ref.encode(TEXTS, output_value="token_embeddings", batch_size=1)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["towers"]["text"]["token_output"] == "token_embeddings"
    for variant in manifest["towers"]["text"]["variants"]:
        enc = SentenceEncoder(out, variant=variant)
        for bs in (None, 1):
            got = enc.encode(TEXTS, output_value="token_embeddings", batch_size=bs)
            assert [g.shape for g in got] == [w.shape for w in want], variant
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, atol=5e-5, err_msg=variant)
    # sentence embeddings from the same graph are unchanged by the second output
    np.testing.assert_allclose(SentenceEncoder(out).encode(TEXTS), ref.encode(TEXTS), atol=1e-5)
