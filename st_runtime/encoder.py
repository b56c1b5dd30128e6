"""SentenceEncoder: sentence-transformers' SentenceTransformer API on an exported embedding model (loading is
:class:`st_runtime.model.Model`'s; inputs and rows are the embedding kind's, st_runtime.kinds.embedding)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kinds, util
from .chunking import DEFAULT_CHUNK_OVERLAP, Chunks, stitch
from .errors import UnsupportedInputError
from .kinds.embedding import QUANTIZED, EmbeddingKind
from .model import Model, QueryDocumentMixin, check_batch_size
from .progress import progress_bar

__all__ = ["QUANTIZED", "SentenceEncoder", "SentenceTransformer", "progress_bar"]


class SentenceEncoder(QueryDocumentMixin, Model):
    """Drop-in replacement for ``sentence_transformers.SentenceTransformer`` at inference time, on a folder written
    by ``st-export``. ``st_runtime.SentenceTransformer`` is this class.

    Args:
        model_path: a folder written by ``st-export`` (where sentence-transformers takes a model name or path).
        providers: ``None`` (CPU), ``"cpu"``, ``"cuda"``, ``"tensorrt"``, an onnxruntime provider name, or an
            explicit list (a list of several is an opt-in to fall back, with a warning).
        threads: onnxruntime intra-op threads; default: the physical cores of this machine.
        variant: the exported graph to run ("fp32", "opt", "int8", "fp16", "fastest"); default: the fastest that
            reproduces sentence-transformers' fp32 embeddings.
        verify_checksums: check the sha256 of every file at load (sizes are always checked).
        session_options: an ``onnxruntime.SessionOptions`` to use as is.
        io_binding: feed the graph through onnxruntime IO binding (default: on for CUDA/TensorRT).
        cuda_graphs: capture each batch shape as a CUDA graph and replay it (CUDA only).
        device: sentence-transformers' ``device``: "cpu", "cuda" or "cuda:N" (in place of ``providers``).
    """

    kind = kinds.instance(EmbeddingKind)

    def _loaded(self) -> None:
        self._dim = self.kind.width(self)
        self.similarity_fn_name: str = self.spec.output.get("similarity_fn_name") or "cosine"
        self.truncate_dim: int | None = None

    def get_sentence_embedding_dimension(self) -> int:
        """The embedding's width (``truncate_dim`` when set), as in sentence-transformers."""
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
        """Embed sentences (or CLIP images), as ``sentence_transformers.SentenceTransformer.encode`` does.

        Args:
            sentences: one text, or a list (tuple, numpy array, generator) of texts; ``[text, text_pair]`` items are
                tokenized as pairs. For CLIP models an item may also be an image: a PIL image, a 3-D uint8 array, an
                image file's path or a ``data:image/...;base64,`` URI.
            batch_size: the most texts per batch, as in sentence-transformers. ``None`` (the default) lets
                st_runtime size batches: on the CPU by the budget of padded tokens st-export measured, on GPUs up to
                1,024 texts. Every variant gives a text the same result in any batch up to float rounding (int8
                quantizes each token's activations on its own), except "int8-dynamic", whose activations are
                quantized per batch, so its output moves slightly (within its gate) with batch company.
            normalize_embeddings: L2-normalize each embedding, as in sentence-transformers.
            show_progress_bar: draw a tqdm bar over the texts; ``None`` draws it when the "st_runtime" logger is at
                INFO or DEBUG, as sentence-transformers decides with its own logger.
            prompt_name: the name of one of the model's ``prompts`` to prepend, as in sentence-transformers.
            prompt: a prompt string to prepend (takes precedence over ``prompt_name``).
            convert_to_numpy: ``False`` gives a list of 1-D arrays instead of one 2-D array.
            convert_to_tensor: accepted for compatibility; returns the same numpy array (there is no torch here).
            precision: "float32", "int8", "uint8", "binary" or "ubinary", quantized as sentence-transformers'
                ``quantize_embeddings`` does.
            ranges: st_runtime extension: ``[2, dim]`` minima and maxima for int8/uint8 (default: this call's).
            calibration_embeddings: st_runtime extension: embeddings to take int8/uint8 ranges from.
            truncate_dim: keep the first ``truncate_dim`` dimensions (Matryoshka), as in sentence-transformers.
            output_value: "sentence_embedding" (default); "token_embeddings" gives each text's token embeddings
                ``[tokens, hidden]`` without padding; ``None`` gives per text a dict of its inputs, token embeddings
                and sentence embedding. Both need an export made by this st-export. st_runtime extension:
                "sentence_embedding_unnormalized" gives the embedding before the model's final Normalize module (the
                usual one for a model without it), from exports that have that output.
            max_seq_length: st_runtime extension: truncate this call's texts at fewer tokens than the model's
                ``max_seq_length``, without changing it for other calls or threads.
            device: accepted when it is the device the model was loaded on (another needs another session).
            long_inputs: st_runtime extension: what happens to a text over the limit: "truncate" (keep its first
                tokens, as sentence-transformers does), "chunk" (embed it in windows of the limit and pool them:
                the token-weighted mean before the model's Normalize, then Normalize) or "error" (raise
                InputTooLongError naming its token count). See docs/long-inputs.md.
            chunk_overlap: tokens shared by consecutive windows (``long_inputs="chunk"``).

        Returns:
            For one text a 1-D float32 array ``[dim]``; for a list an array ``[n, dim]`` in input order (the
            ``precision``'s dtype), or what ``output_value`` asks for.

        Raises:
            UnsupportedInputError: an input that is neither text nor (for CLIP) an image; a CLIP text over the
                limit with ``long_inputs="chunk"``.
            InputTooLongError: a text over the limit with ``long_inputs="error"``.
            ValueError: a bad ``batch_size``, an unknown ``prompt_name``, a ``truncate_dim`` over the dimension.
        """
        truncate_dim = self._check_encode(kwargs, device, output_value, truncate_dim, precision)
        long = {"long_inputs": long_inputs, "chunk_overlap": chunk_overlap}
        prepared = self._prepare(sentences, prompt, prompt_name, max_seq_length, output_value, **long)
        if output_value not in ("sentence_embedding", UNNORMALIZED):
            return self._token_outputs(prepared, batch_size, output_value, precision, truncate_dim)
        rows = self.run(prepared, batch_size, show_progress_bar)
        out = self.kind.finish(
            self, rows, truncate_dim=truncate_dim, normalize=normalize_embeddings, precision=precision, ranges=ranges,
            calibration_embeddings=calibration_embeddings,
        )  # fmt: skip
        return out[0] if prepared.singular else out if convert_to_numpy or convert_to_tensor else list(out)

    def _prepare(self, sentences, prompt, prompt_name, max_seq_length, output_value, **long):
        """encode's Prepared call (``long``: long_inputs and chunk_overlap)."""
        max_length = self.call_max_length(max_seq_length)
        raw = output_value == UNNORMALIZED
        return self.kind.prepare(
            self, sentences, prompt=prompt, prompt_name=prompt_name, max_length=max_length, unnormalized=raw, **long
        )

    def _check_encode(self, kwargs, device, output_value, truncate_dim, precision) -> int | None:
        """encode's argument checks, before any work; the call's truncate_dim."""
        if kwargs:
            raise TypeError(f"encode() got unexpected keyword arguments {sorted(kwargs)}")
        self.check_device(device)
        if output_value not in _OUTPUT_VALUES:
            raise ValueError(
                f"output_value {output_value!r} is not supported; choose 'sentence_embedding', 'token_embeddings', "
                "'sentence_embedding_unnormalized' or None."
            )
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        self.kind.check_options(self, truncate_dim, precision)
        return truncate_dim

    def _token_outputs(self, prepared, batch_size, output_value, precision, truncate_dim) -> Any:
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
        """Row i of ``embeddings1`` against row i of ``embeddings2`` with the model's similarity function."""
        a, b = np.atleast_2d(embeddings1), np.atleast_2d(embeddings2)
        if self.similarity_fn_name == "cosine":
            return util.pairwise_cos_sim(a, b)
        if self.similarity_fn_name == "dot":
            return util.pairwise_dot_score(a, b)
        return np.array([self.similarity(x, y)[0, 0] for x, y in zip(a, b)], dtype=np.float32)


UNNORMALIZED = "sentence_embedding_unnormalized"
_OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", UNNORMALIZED, None)

# One-line switch from sentence-transformers: `from st_runtime import SentenceTransformer`.
SentenceTransformer = SentenceEncoder
