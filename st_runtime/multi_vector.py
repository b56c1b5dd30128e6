"""MultiVectorEncoder: sentence-transformers' late-interaction (ColBERT) API on an exported multi-vector model (one
graph from token ids to every token's vector and role; the kind, st_runtime.kinds.multi_vector, keeps the tokens
that count for queries and documents and scores by MaxSim)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kinds
from .cross_encoder import ranking
from .errors import UnsupportedInputError
from .kinds.multi_vector import MultiVectorKind, check_task, maxsim
from .model import Model, check_batch_size

__all__ = ["MultiVectorEncoder", "maxsim"]


class MultiVectorEncoder(Model):
    """Drop-in for ``sentence_transformers.MultiVectorEncoder`` at inference time: ``encode``, ``encode_query``,
    ``encode_document`` (each text's token vectors, a list of [tokens, dim] float32 arrays), ``similarity`` and
    ``similarity_pairwise`` (MaxSim, or MeanMaxSim where the model says so) and ``rank``.

    Args: see :class:`st_runtime.model.Model` (``model_path`` a folder written by ``st-export`` from a
    MultiVectorEncoder, or a PyLate / Stanford-NLP ColBERT checkpoint). ``cuda_graphs`` is not offered: batches
    return per-token rows whose shape the graph widens for query expansion.
    """

    kind = kinds.instance(MultiVectorKind)

    def __init__(self, model_path, *args, **kwargs):
        if kwargs.get("cuda_graphs"):
            raise ValueError(
                "cuda_graphs=True is not offered for multi-vector models: their per-token output's width varies with "
                "query expansion, and CUDA graphs replay fixed output shapes. Leave cuda_graphs off."
            )
        super().__init__(model_path, *args, **kwargs)
        block = self.spec.output
        self._dim = int(block["dimension"])
        self.similarity_fn_name: str = block.get("similarity_fn_name") or "maxsim"
        self.truncate_dim: int | None = block.get("truncate_dim")
        self.query_length: int | None = self.kind.max_length(self, "query")
        self.document_length: int | None = self.kind.max_length(self, "document")

    def __repr__(self) -> str:
        return (
            f"MultiVectorEncoder({str(self.path)!r}, variant={self.variant!r}, dim={self._dim}, "
            f"query_length={self.query_length}, document_length={self.document_length})"
        )

    def encode(
        self,
        sentences,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        output_value: str = "token_embeddings",
        convert_to_numpy: bool = True,
        device: str | None = None,
        normalize_embeddings: bool = False,
        token_pooling: Any = None,
        truncate_dim: int | None = None,
        task: str | None = None,
    ):
        """Each text's token vectors, as ``MultiVectorEncoder.encode`` gives them: a list of [tokens, dim] float32
        arrays (one array for a single string). ``task``: "query" (query prompt, query_length, [MASK] expansion),
        "document" (document prompt and length, skiplist) or None (the model's max_seq_length; masked as a document).
        ``token_pooling``: None applies the model's own (HierarchicalTokenPooling, if it has one), False none, or a
        dict of HierarchicalTokenPooling's settings. ``convert_to_numpy`` is accepted and changes nothing."""
        if output_value != "token_embeddings":
            raise ValueError(f"output_value must be 'token_embeddings', got {output_value!r}.")
        check_task(task)
        check_batch_size(batch_size)
        self.check_device(device)
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or not 0 < truncate_dim <= self._dim):
            raise ValueError(f"truncate_dim must be an integer in 1..{self._dim}, got {truncate_dim!r}.")
        prepared = self.kind.prepare(self, sentences, task=task, prompt=prompt, prompt_name=prompt_name)
        rows = self.run(prepared, batch_size, show_progress_bar)
        out = self.kind.finish(
            self,
            rows,
            task=task,
            normalize=normalize_embeddings,
            truncate_dim=truncate_dim,
            token_pooling=token_pooling,
        )
        return out[0] if prepared.singular else out

    def encode_query(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with task="query": the query prompt, query length and [MASK] expansion."""
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, task="query", **kwargs)

    def encode_document(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with task="document": the document prompt, document length and skiplist."""
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, task="document", **kwargs)

    @staticmethod
    def _many(embeddings) -> list[np.ndarray]:
        if isinstance(embeddings, np.ndarray) and embeddings.ndim == 2:
            return [embeddings]
        if isinstance(embeddings, np.ndarray) and embeddings.ndim == 3:
            return list(embeddings)
        many = [np.asarray(e, dtype=np.float32) for e in embeddings]
        bad = next((i for i, e in enumerate(many) if e.ndim != 2), None)
        if bad is not None:
            raise ValueError(f"embedding {bad} has shape {many[bad].shape}; expected [tokens, dim] arrays")
        return many

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """[queries, documents] MaxSim scores (MeanMaxSim for a model whose similarity_fn_name says so), as
        ``MultiVectorEncoder.similarity``."""
        return maxsim(self._many(embeddings1), self._many(embeddings2), self.similarity_fn_name == "meanmaxsim")

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        """The score of each (query i, document i)."""
        a, b = self._many(embeddings1), self._many(embeddings2)
        if len(a) != len(b):
            raise ValueError(f"similarity_pairwise needs as many queries as documents, got {len(a)} and {len(b)}")
        norm = self.similarity_fn_name == "meanmaxsim"
        return np.array([maxsim([x], [y], norm)[0, 0] for x, y in zip(a, b)], dtype=np.float32)

    def rank(
        self,
        query: str,
        documents: list[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[dict[str, Any]]:
        """``documents`` ranked for ``query`` by MaxSim: ``{"corpus_id", "score"(, "text")}`` by decreasing score, at
        most ``top_k``, as ``CrossEncoder.rank`` returns them."""
        if not isinstance(query, str):
            raise UnsupportedInputError(f"query must be a string, got {type(query).__name__}")
        if isinstance(documents, str):
            raise UnsupportedInputError("documents must be a list of strings, not one string")
        documents = list(documents)
        q = self.encode_query([query], batch_size=batch_size, show_progress_bar=show_progress_bar)
        d = self.encode_document(documents, batch_size=batch_size, show_progress_bar=show_progress_bar)
        scores = self.similarity(q, d)[0]
        return ranking(scores, documents if return_documents else None, top_k, "corpus_id", "score")

    def get_embedding_dimension(self) -> int:
        """Width of each token vector."""
        return self.truncate_dim or self._dim

    get_sentence_embedding_dimension = get_embedding_dimension
