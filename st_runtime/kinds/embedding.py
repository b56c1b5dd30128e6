"""Dense embeddings: sentence_transformers.SentenceTransformer (text, and images for CLIP models)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import util
from ..errors import UnsupportedInputError
from ..inputs import classify
from ..schema import EMBEDDING
from . import register
from .base import Kind, Prepared, Route

if TYPE_CHECKING:
    from ..chunking import Chunks
    from ..model import Model

# encode's precisions, as sentence-transformers' quantize_embeddings gives them
QUANTIZED = ("float32", "int8", "uint8", "binary", "ubinary")

_HANDLERS = "st_runtime.serve.handlers"


@register
class EmbeddingKind(Kind):
    task = "embedding"
    output = "embedding"
    output_schema = EMBEDDING
    reproduces = "sentence_transformers.SentenceTransformer"
    public_class = "st_runtime.encoder:SentenceEncoder"
    routes = (
        Route("/v1/embeddings", f"{_HANDLERS}:openai_embeddings", "openai"),
        Route("/embeddings", f"{_HANDLERS}:openai_embeddings", "openai"),
        Route("/embed", f"{_HANDLERS}:tei_embed"),
        Route("/", f"{_HANDLERS}:tei_embed"),  # TEI answers POST / (and SageMaker, Vertex) by the model's kind
        Route("/embed_all", "st_runtime.serve.tei_more:tei_embed_all"),
        Route("/similarity", "st_runtime.serve.tei_more:tei_similarity"),
        Route("/v2/embed", "st_runtime.serve.dialects:cohere_embed", "cohere"),
    )
    bulk = True
    window_pooling = "the token-count-weighted mean of the windows' embeddings before Normalize, then Normalize"

    def chunk_refusal(self, model: Model) -> str | None:
        if model.takes_images:
            return (
                "a model with an image tower (CLIP) embeds texts of at most its max_seq_length tokens by design: "
                "its text and image embeddings share one space only for such texts"
            )
        return None

    def prepare(self, model: Model, inputs: Any, **options: Any) -> Prepared:
        """Texts (strings, or [text, text_pair] pairs where the model takes pairs) and, for a model with an image
        tower, images; the prompt goes before every text (sentence-transformers applies none to images).
        ``options``: those of :meth:`Kind.text_call` (prompt, prompt_name, max_length, direction, strict,
        long_inputs, chunk_overlap). Windows of long texts give the rows before the model's Normalize, which
        ``pool_windows`` applies after pooling."""
        images = model.takes_images
        items, kinds, singular = classify(inputs, images=images)
        tokenizer = model.spec.towers["text"].tokenizer
        if not (tokenizer and tokenizer.pairs) and tuple in set(map(type, items)):
            pair = next((i for i, it in enumerate(items) if isinstance(it, tuple)), None)
            if pair is not None:
                raise UnsupportedInputError(
                    f"input {pair} is a [text, text_pair] pair, but this model ({model.spec.family}) embeds single "
                    "texts: sentence-transformers does not accept pairs for it either, so pairs were not validated "
                    "at export. Pass single strings."
                )
        prepared = self.text_call(model, items, singular, kinds if images else None, **options)
        if prepared.chunks is not None:  # windows pool before Normalize (refused early for an export without it)
            model.row_output(True)
            prepared.chunks.options["normalize"] = not prepared.unnormalized  # the caller asked for rows after it
            prepared.unnormalized = True
        return prepared

    def pool_windows(self, model: Model, rows: np.ndarray, chunks: Chunks) -> np.ndarray:
        """Each text's windows' pre-Normalize rows averaged with their token counts as weights, then the model's
        Normalize (where it has one, unless the caller asked for the rows before it) on every row."""
        weights = np.where(chunks.tokens < 0, 1, chunks.tokens).astype(np.float64)
        starts = chunks.starts
        sums = np.add.reduceat(rows.astype(np.float64) * weights[:, None], starts, axis=0)
        out = (sums / np.add.reduceat(weights, starts)[:, None]).astype(np.float32)
        if self.normalized(model) and chunks.options.get("normalize", True):
            out = util.normalize_embeddings(out).astype(np.float32, copy=False)
        return out

    def finish(
        self,
        model: Model,
        rows: np.ndarray,
        truncate_dim: int | None = None,
        normalize: bool = False,
        precision: str = "float32",
        ranges: np.ndarray | None = None,
        calibration_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Matryoshka cut, then L2 normalization, then quantization, as sentence-transformers orders them."""
        out = rows
        if truncate_dim is not None:
            out = np.ascontiguousarray(out[:, :truncate_dim])
        if normalize:
            out = util.normalize_embeddings(out).astype(np.float32, copy=False)
        if precision != "float32":  # as sentence-transformers' quantize_embeddings, ranges from this call's rows
            if ranges is None and precision in ("int8", "uint8"):
                ranges = util.calibration_ranges(out if calibration_embeddings is None else calibration_embeddings)
            out = util.quantize_embeddings(out, precision, ranges)
        return out

    def check_options(self, model: Model, truncate_dim: Any, precision: Any) -> None:
        dim = self.width(model)
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or not 0 < truncate_dim <= dim):
            raise ValueError(f"truncate_dim must be an integer in 1..{dim}, got {truncate_dim!r}.")
        if precision not in QUANTIZED:
            raise ValueError(f"precision {precision!r} is not supported; valid choices: {list(QUANTIZED)}.")

    def normalized(self, model: Model) -> bool:
        """Whether the graph's rows are already unit vectors (the model ends in Normalize)."""
        return bool(model.spec.output.get("normalized"))

    def bulk_encode(
        self,
        model: Model,
        texts: list[str],
        normalize: bool = False,
        prompt_name: str | None = None,
        long_inputs: str = "truncate",
    ) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.bulk_width(model)), np.float32)
        rows = model.run(self.prepare(model, list(texts), prompt_name=prompt_name, long_inputs=long_inputs))
        return self.finish(model, rows, normalize=normalize)

    def describe(self, model: Model) -> dict[str, Any]:
        pooling = (model.spec.output.get("pooling") or {}).get("modes") or ["none"]
        return {"embedding": {"pooling": "+".join(pooling)}}
