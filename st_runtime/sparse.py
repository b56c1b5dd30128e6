"""SparseEncoder: sentence-transformers' SPLADE API on an exported sparse encoder (one graph from token ids to the
vocabulary-sized SPLADE activation: masked-language-model logits, relu, log1p, max or sum over tokens).

Embeddings come back as :class:`SparseEmbedding` (a sorted ``indices`` array and its ``values``, per text), not as
scipy or torch sparse matrices: the runtime stays on numpy, onnxruntime and tokenizers, and an (indices, values)
pair is what search engines take for a sparse vector (Qdrant's SparseVector, Milvus, Pinecone's sparse_values,
text-embeddings-inference's /embed_sparse). ``convert_to_sparse_tensor=False`` gives dense rows instead, and
:meth:`SparseEncoder.to_scipy` builds a CSR matrix where scipy is installed.

The graph returns the whole vocabulary-sized row: the masked-language-model head (hidden x vocabulary per token)
costs far more than the [batch, vocabulary] output, and the row lets any ``max_active_dims`` be applied exactly
afterwards, as sentence-transformers applies it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kinds
from .chunking import DEFAULT_CHUNK_OVERLAP
from .kinds.sparse import SparseEmbedding, SparseKind, sparsify
from .model import Model, QueryDocumentMixin

__all__ = ["SparseEmbedding", "SparseEncoder", "sparsify"]


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")


class SparseEncoder(QueryDocumentMixin, Model):
    """Drop-in for ``sentence_transformers.SparseEncoder`` at inference time (SPLADE models): ``encode``,
    ``encode_query``, ``encode_document``, ``decode`` and ``similarity``.

    Args:
        model_path: a folder written by ``st-export`` from a SparseEncoder model (where sentence-transformers takes a
            model name or path).
        providers: ``None`` (CPU), ``"cpu"``, ``"cuda"``, ``"tensorrt"``, an onnxruntime provider name, or an
            explicit list (a list of several is an opt-in to fall back, with a warning).
        threads: onnxruntime intra-op threads; default: the physical cores of this machine.
        variant: the exported graph to run ("fp32", "opt", "int8", "fastest"); default: the fastest that
            reproduces sentence-transformers' results.
        verify_checksums: check the sha256 of every file at load (sizes are always checked).
        session_options: an ``onnxruntime.SessionOptions`` to use as is.
        io_binding: feed the graph through onnxruntime IO binding (default: on for CUDA/TensorRT).
        cuda_graphs: capture each batch shape as a CUDA graph and replay it (CUDA only).
        device: sentence-transformers' ``device``: "cpu", "cuda" or "cuda:N" (in place of ``providers``).
    """

    kind = kinds.instance(SparseKind)

    def _loaded(self) -> None:
        self._dim = self.kind.width(self)
        self.max_active_dims: int | None = self.spec.output.get("max_active_dims")
        self.similarity_fn_name: str = self.spec.output.get("similarity_fn_name") or "dot"

    def __repr__(self) -> str:
        return (
            f"SparseEncoder({str(self.path)!r}, variant={self.variant!r}, dim={self._dim}, "
            f"max_active_dims={self.max_active_dims})"
        )

    def encode(
        self,
        sentences,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        max_active_dims: int | None = None,
        convert_to_tensor: bool = True,
        convert_to_sparse_tensor: bool = True,
        max_seq_length: int | None = None,
        device: str | None = None,
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        **kwargs,
    ):
        """Sparse embeddings of ``sentences``, as ``sentence_transformers.SparseEncoder.encode`` computes them.

        Args:
            sentences: one text or a list of texts.
            batch_size: the most texts per batch; ``None`` lets st_runtime size batches by tokens.
            show_progress_bar: draw a tqdm bar over the texts (default: when the "st_runtime" logger is at INFO).
            prompt_name: the name of one of the model's ``prompts`` to prepend.
            prompt: a prompt string to prepend.
            max_active_dims: keep each text's largest weights, as sentence-transformers' top-k by magnitude
                (default: the model's own setting, recorded at export).
            convert_to_tensor: accepted for sentence-transformers' signature; changes nothing.
            convert_to_sparse_tensor: ``False`` gives dense float32 rows ``[n, vocabulary]`` instead.
            max_seq_length: st_runtime extension: truncate this call's texts at fewer tokens.
            device: accepted when it is the device the model was loaded on.
            long_inputs: st_runtime extension: a text over the limit is "truncate"d (as sentence-transformers
                does), refused ("error") or embedded in windows ("chunk") whose weights merge by the element-wise
                maximum (the sum for sum-pooled models). See docs/long-inputs.md.
            chunk_overlap: tokens shared by consecutive windows (``long_inputs="chunk"``).

        Returns:
            One :class:`SparseEmbedding` (int32 ``indices`` in increasing order, float32 ``values``) per text, a
            list (a single string gives one); or dense rows with ``convert_to_sparse_tensor=False``.
        """
        if kwargs:
            raise TypeError(f"encode() got unexpected keyword arguments {sorted(kwargs)}")
        self.check_device(device)
        _check_positive("max_active_dims", max_active_dims)
        max_length = self.call_max_length(max_seq_length)
        prepared = self.kind.prepare(
            self, sentences, prompt=prompt, prompt_name=prompt_name, max_length=max_length, long_inputs=long_inputs,
            chunk_overlap=chunk_overlap,
        )  # fmt: skip
        rows = self.run(prepared, batch_size, show_progress_bar)
        result = self.kind.finish(self, rows, max_active_dims=max_active_dims)
        if not convert_to_sparse_tensor:
            dense = self.to_dense(result)
            return dense[0] if prepared.singular else dense
        return result[0] if prepared.singular else result

    def to_dense(self, embeddings) -> np.ndarray:
        """Dense float32 rows [n, vocabulary] of SparseEmbeddings (one gives a 1-D row)."""
        if isinstance(embeddings, SparseEmbedding):
            return embeddings.to_dense(self._dim)
        out = np.zeros((len(embeddings), self._dim), dtype=np.float32)
        for row, emb in zip(out, embeddings):
            row[emb.indices] = emb.values
        return out

    def to_scipy(self, embeddings):
        """A scipy.sparse CSR matrix [n, vocabulary] of SparseEmbeddings (needs scipy, which st_runtime does
        not install)."""
        from scipy.sparse import csr_matrix

        embeddings = [embeddings] if isinstance(embeddings, SparseEmbedding) else list(embeddings)
        indptr = np.cumsum([0] + [len(e.indices) for e in embeddings])
        indices = np.concatenate([e.indices for e in embeddings]) if embeddings else np.zeros(0, np.int32)
        values = np.concatenate([e.values for e in embeddings]) if embeddings else np.zeros(0, np.float32)
        return csr_matrix((values, indices, indptr), shape=(len(embeddings), self._dim))

    def _rows(self, embeddings) -> tuple[list[SparseEmbedding], bool]:
        """(embeddings as SparseEmbeddings, whether one was given) from SparseEmbeddings or dense rows."""
        if isinstance(embeddings, SparseEmbedding):
            return [embeddings], True
        if isinstance(embeddings, np.ndarray):
            if embeddings.ndim not in (1, 2) or embeddings.shape[-1] != self._dim:
                raise ValueError(f"dense embeddings must be [{self._dim}] or [n, {self._dim}], got {embeddings.shape}")
            return sparsify(np.atleast_2d(embeddings), None), embeddings.ndim == 1
        rows = list(embeddings)
        if not all(isinstance(e, SparseEmbedding) for e in rows):
            raise TypeError("expected SparseEmbedding(s) from encode, or dense numpy rows")
        return rows, False

    def decode(self, embeddings, top_k: int | None = None):
        """(token, weight) pairs by decreasing weight, at most ``top_k`` per text, as ``SparseEncoder.decode``:
        a list for one embedding, a list of lists for several."""
        _check_positive("top_k", top_k)
        rows, single = self._rows(embeddings)
        tok = self.tokenizer
        out = []
        for emb in rows:
            order = np.argsort(-emb.values, kind="stable")[:top_k]
            out.append([(tok.id_to_token(int(emb.indices[i])), float(emb.values[i])) for i in order])
        return out[0] if single else out

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """All-pairs similarity (dot product for SPLADE models, or the model's similarity function)."""
        from . import util

        a = self.to_dense(self._rows(embeddings1)[0])
        b = self.to_dense(self._rows(embeddings2)[0])
        return util.SIMILARITY_FUNCTIONS[self.similarity_fn_name](a, b)

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        """Embedding i of ``embeddings1`` against embedding i of ``embeddings2`` (SparseEmbeddings or dense rows)."""
        a = self.to_dense(self._rows(embeddings1)[0])
        b = self.to_dense(self._rows(embeddings2)[0])
        return np.array([self.similarity(x, y)[0, 0] for x, y in zip(a, b)], dtype=np.float32)

    def get_sentence_embedding_dimension(self) -> int:
        """The vocabulary size: the width of a dense row, as in sentence-transformers."""
        return self._dim

    get_embedding_dimension = get_sentence_embedding_dimension
