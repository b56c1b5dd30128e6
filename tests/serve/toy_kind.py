"""A toy fourth model kind, defined in this one file and nowhere else: dense embeddings returned with each row's
L1 norm as one more column (``[e_1, ..., e_dim, |e|_1]``), plus a route of its own. It reuses the embedding
kind's inputs and the existing "embedding" manifest block; tests/serve/test_fourth_kind.py drives it through
``st_runtime.load``, in process, st-serve's routes and st-embed."""

from __future__ import annotations

import numpy as np

from st_runtime import kinds
from st_runtime.encoder import SentenceEncoder
from st_runtime.kinds.embedding import EmbeddingKind
from st_runtime.serve.requests import EmbedRequest

TASK = "l1-embedding"


@kinds.register
class L1Kind(EmbeddingKind):
    task = TASK
    reproduces = "sentence_transformers.SentenceTransformer, with each embedding's L1 norm"
    public_class = f"{__name__}:L1Encoder"
    routes = (*EmbeddingKind.routes, kinds.Route("/embed_l1", f"{__name__}:embed_l1"))

    def finish(self, model, rows, **options):
        emb = super().finish(model, rows, **options)
        return np.hstack([emb, np.abs(emb).sum(axis=1, keepdims=True, dtype=np.float32)])

    def bulk_width(self, model, **options) -> int:
        return self.width(model) + 1


class L1Encoder(SentenceEncoder):
    kind = kinds.instance(L1Kind)


async def embed_l1(call):
    """POST /embed_l1 {"inputs"}: [{"embedding", "l1"}] per input."""
    req = call.parse(EmbedRequest)
    rows, _tokens = await call.run(await call.prepare(req.inputs, **req.text.prepare_args()))
    out = call.finish(rows)
    return [{"embedding": row[:-1].tolist(), "l1": float(row[-1])} for row in out]
