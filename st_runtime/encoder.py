"""SentenceEncoder: sentence-transformers' SentenceTransformer API on an exported embedding model (loading is
:class:`st_runtime.model.Model`'s; inputs and rows are the embedding kind's, st_runtime.kinds.embedding)."""

from __future__ import annotations

import numpy as np

from . import kinds, util
from .chunking import DEFAULT_CHUNK_OVERLAP, Chunks, stitch
from .errors import UnsupportedInputError
from .kinds.embedding import QUANTIZED, EmbeddingKind
from .model import Model, QueryDocumentMixin, check_batch_size
from .progress import progress_bar

__all__ = ["QUANTIZED", "SentenceEncoder", "SentenceTransformer", "progress_bar"]


class SentenceEncoder(QueryDocumentMixin, Model):
    """Drop-in replacement for ``sentence_transformers.SentenceTransformer`` at inference time.

    Args: see :class:`st_runtime.model.Model` (model_path, providers, threads, variant, verify_checksums,
    session_options, io_binding, cuda_graphs, device).
    """

    kind = kinds.instance(EmbeddingKind)

    def __init__(self, model_path, *args, **kwargs):
        super().__init__(model_path, *args, **kwargs)
        self._dim = self.kind.width(self)
        self.similarity_fn_name: str = self.spec.output.get("similarity_fn_name") or "cosine"
        self.truncate_dim: int | None = None

    def get_sentence_embedding_dimension(self) -> int:
        return self.truncate_dim or self._dim

    get_embedding_dimension = get_sentence_embedding_dimension

    def encode(
        self,
        sentences,
        batch_size: int | None = None,
        normalize_embeddings: bool = False,
        show_progress_bar: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        precision: str = "float32",
        ranges: np.ndarray | None = None,
        calibration_embeddings: np.ndarray | None = None,
        truncate_dim: int | None = None,
        output_value: str | None = "sentence_embedding",
        max_seq_length: int | None = None,
        device: str | None = None,
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        **kwargs,
    ):
        """Embed sentences, as ``SentenceTransformer.encode`` does.

        A single string gives a 1-D float32 array; a list gives an array [len, dim] in input order
        (``convert_to_numpy=False``: a list of 1-D arrays). ``convert_to_tensor`` returns the same
        numpy array (there is no torch here). ``show_progress_bar`` draws a tqdm bar over the texts (by default
        when the "st_runtime" logger is at INFO or DEBUG, as sentence-transformers decides with its logger;
        tqdm must be installed, else a warning says so). ``batch_size`` caps the texts per batch; left at None,
        st_runtime sizes batches itself (on the CPU by a budget of tokens per batch, which suits short queries
        and long passages alike). Exact variants give the same results for any batch size up to float rounding; int8
        quantizes activations per batch, so its output moves slightly (within its gate) with batch company.
        ``precision`` "int8", "uint8", "binary" or "ubinary" quantizes as sentence-transformers'
        ``quantize_embeddings`` does: int8/uint8 map each dimension's range onto 256 steps, the ranges taken from
        this call's embeddings unless ``ranges`` ([2, dim]: minima, maxima) or ``calibration_embeddings`` are
        given (both st_runtime extensions; pass them to quantize consistently across calls).
        ``output_value="token_embeddings"`` gives each text's token embeddings [tokens, hidden] (the transformer's
        output that Pooling reads), without padding as sentence-transformers trims it; ``output_value=None`` gives
        per text a dict of its inputs, token embeddings and sentence embedding (unpadded, where sentence-transformers
        leaves them padded to its batch's longest text). Both need an export made by this st-export.
        ``max_seq_length`` (an st_runtime extension) truncates this call's texts at fewer tokens than the
        encoder's ``max_seq_length``, without changing it for other calls or threads.
        ``long_inputs``, ``chunk_overlap``: texts over the limit "truncate", "chunk" or "error" (docs/long-inputs.md).
        """
        truncate_dim = self._check_encode(kwargs, device, output_value, truncate_dim, precision)
        prepared = self.kind.prepare(
            self, sentences, prompt=prompt, prompt_name=prompt_name, max_length=self.call_max_length(max_seq_length),
            long_inputs=long_inputs, chunk_overlap=chunk_overlap,
        )  # fmt: skip
        if output_value != "sentence_embedding":
            return self._token_outputs(prepared, batch_size, output_value, precision, truncate_dim)
        rows = self.run(prepared, batch_size, show_progress_bar)
        out = self.kind.finish(
            self, rows, truncate_dim=truncate_dim, normalize=normalize_embeddings, precision=precision, ranges=ranges,
            calibration_embeddings=calibration_embeddings,
        )  # fmt: skip
        return out[0] if prepared.singular else out if convert_to_numpy or convert_to_tensor else list(out)

    def _check_encode(self, kwargs, device, output_value, truncate_dim, precision) -> int | None:
        """encode's argument checks, before any work; the call's truncate_dim."""
        if kwargs:
            raise TypeError(f"encode() got unexpected keyword arguments {sorted(kwargs)}")
        self.check_device(device)
        if output_value not in ("sentence_embedding", "token_embeddings", None):
            raise ValueError(
                f"output_value {output_value!r} is not supported; choose 'sentence_embedding', 'token_embeddings' "
                "or None."
            )
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        self.kind.check_options(self, truncate_dim, precision)
        return truncate_dim

    def _token_outputs(self, prepared, batch_size, output_value, precision, truncate_dim) -> list:
        """encode(output_value="token_embeddings"): each text's token embeddings [tokens, hidden] without padding;
        output_value=None: per text a dict of its inputs, token embeddings and sentence embedding (without padding,
        where sentence-transformers pads to the longest text of its batch)."""
        check_batch_size(batch_size)
        if prepared.images:
            raise UnsupportedInputError(f"output_value={output_value!r} takes text only; images have no tokens")
        if precision != "float32":
            raise ValueError(
                f"precision={precision!r} applies to sentence embeddings, not to output_value={output_value!r}"
            )
        items = prepared.texts
        outputs = self.text_tower.embed_tokens(items, batch_size, prepared.max_length) if items else []
        if prepared.chunks is not None:
            outputs = self._stitched(outputs, prepared.chunks, output_value)
        if output_value == "token_embeddings":
            outputs = [o["token_embeddings"] for o in outputs]
        elif truncate_dim is not None:  # as sentence-transformers: the sentence embedding is cut, not normalized
            for o in outputs:
                o["sentence_embedding"] = o["sentence_embedding"][:truncate_dim]
        return outputs[0] if prepared.singular else outputs

    @staticmethod
    def _stitched(outputs: list[dict], chunks: Chunks, output_value: str | None) -> list[dict]:
        """Per caller text, its token embeddings once (long texts' windows stitched, see chunking.stitch)."""
        if output_value is None:
            raise ValueError(
                "output_value=None with long_inputs='chunk' is not supported for texts over the limit (their windows "
                "have no single set of model inputs); ask output_value='token_embeddings' or 'sentence_embedding'."
            )
        out = []
        for a, b in zip(chunks.starts.tolist(), [*chunks.starts.tolist()[1:], len(outputs)]):
            spans = chunks.spans[a:b]
            if spans[0] is None:
                out.append(outputs[a])
            else:
                rows = [o["token_embeddings"] for o in outputs[a:b]]
                out.append({"token_embeddings": stitch(rows, spans)})  # type: ignore[arg-type]
        return out

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """All-pairs similarity with the model's similarity function (cosine unless the model says otherwise)."""
        return util.SIMILARITY_FUNCTIONS[self.similarity_fn_name](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        a, b = np.atleast_2d(embeddings1), np.atleast_2d(embeddings2)
        if self.similarity_fn_name == "cosine":
            return util.pairwise_cos_sim(a, b)
        if self.similarity_fn_name == "dot":
            return util.pairwise_dot_score(a, b)
        return np.array([self.similarity(x, y)[0, 0] for x, y in zip(a, b)], dtype=np.float32)


# One-line switch from sentence-transformers: `from st_runtime import SentenceTransformer`.
SentenceTransformer = SentenceEncoder
