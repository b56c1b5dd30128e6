"""Multi-vector (late-interaction, ColBERT) models: sentence_transformers.MultiVectorEncoder.

The graph gives, per token, its vector and its role in one output [batch, tokens, dim + 1] (st-export's
exporters.multi_vector): 0 padding, 1 a real token, 2 a real token in the model's skiplist, 3 a query expansion
slot ([MASK]). Rows are kept per text as the graph gives them, padding dropped (a :class:`TokenRows` sink), and
``finish`` keeps the roles that count for the call's task, as sentence-transformers' MultiVectorMask does: queries
keep their tokens and expansion slots, documents (and calls without a task) their tokens outside the skiplist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..chunking import DEFAULT_CHUNK_OVERLAP
from ..errors import UnsupportedInputError
from ..inputs import classify
from ..schema import FREE, List, Nullable, Obj, OneOf
from . import register
from .base import Kind, Prepared, Route

if TYPE_CHECKING:
    from ..model import Model

MULTI_VECTOR = Obj(
    required={"dimension": int},
    optional={
        "dense": List(FREE),
        "normalized": bool,
        "similarity_fn_name": Nullable(OneOf(("maxsim", "meanmaxsim"))),
        "truncate_dim": Nullable(int),
        "query_length": Nullable(int),
        "document_length": Nullable(int),
        "expansion": Nullable(Obj(required={"strategy": str, "length": int, "token_id": int})),
        "skiplist_words": List(str),
        "skiplist_ids": List(int),
        "skiplist_tasks": List(str),
        "token_pooling": Nullable(FREE),
        "roles": FREE,
    },
)

PADDING, TOKEN, SKIPLISTED, EXPANSION = 0, 1, 2, 3
TASKS = ("query", "document")
EMPTY_DOCUMENT_SCORE = -1e9  # sentence-transformers' score of a document without any token that counts

_HANDLERS = "st_runtime.serve.multi_vector"


class TokenRows:
    """Where the text tower writes its [batch, tokens, dim + 1] outputs (``out[idx] = batch``, ``out[a:b]``): each
    text keeps its non-padding rows (vector and role), whatever the width of the batch it ran in."""

    def __init__(self, n: int, slots: list | None = None, offset: int = 0):
        self.slots: list[np.ndarray | None] = slots if slots is not None else [None] * n
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> TokenRows:
        start, stop, step = s.indices(self.n)
        if step != 1:
            raise ValueError("TokenRows takes contiguous slices only")
        return TokenRows(stop - start, self.slots, self.offset + start)

    def __setitem__(self, idx, batch: np.ndarray) -> None:
        batch = np.asarray(batch)
        for i, row in zip(np.asarray(idx).reshape(-1), batch):
            self.slots[self.offset + int(i)] = np.ascontiguousarray(row[row[:, -1] != PADDING], dtype=np.float32)

    def rows(self) -> list[np.ndarray]:
        return self.slots[self.offset : self.offset + self.n]  # type: ignore[return-value]


# the most similarities (query tokens x document tokens) held at once by maxsim: 64 MiB of float32
MAXSIM_CHUNK_ELEMENTS = 1 << 24


def maxsim(queries: list[np.ndarray], documents: list[np.ndarray], length_normalize: bool = False) -> np.ndarray:
    """[queries, documents] late-interaction scores, as sentence-transformers' maxsim: for each query token its
    highest dot product with a document token, summed over the query's tokens (``length_normalize``: divided by
    their number, MeanMaxSim). A document without tokens scores EMPTY_DOCUMENT_SCORE. Documents are scored in chunks
    of at most MAXSIM_CHUNK_ELEMENTS similarities per query."""
    scores = np.zeros((len(queries), len(documents)), dtype=np.float32)
    if not len(queries) or not len(documents):
        return scores
    sizes = np.array([len(d) for d in documents])
    scores[:, sizes == 0] = EMPTY_DOCUMENT_SCORE
    filled = np.flatnonzero(sizes > 0)
    longest_query = max(len(q) for q in queries) or 1
    budget = max(MAXSIM_CHUNK_ELEMENTS // longest_query, int(sizes.max()))
    bounds = np.cumsum(sizes[filled])
    start = 0
    while start < len(filled):  # documents filled[start:end] hold at most ``budget`` tokens (at least one document)
        base = bounds[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(bounds, base + budget, side="right")))
        chunk = filled[start:end]
        tokens = np.concatenate([np.asarray(documents[j], np.float32) for j in chunk])
        offsets = np.concatenate([[0], np.cumsum(sizes[chunk])[:-1]])
        for i, q in enumerate(queries):
            q = np.asarray(q, np.float32)
            if not len(q):
                continue
            best = np.maximum.reduceat(q @ tokens.T, offsets, axis=1)  # [query tokens, documents of the chunk]
            total = best.sum(axis=0, dtype=np.float32)
            scores[i, chunk] = total
        start = end
    if length_normalize:  # as sentence-transformers: after the empty documents' fill
        scores /= np.maximum([len(q) for q in queries], 1).astype(np.float32)[:, None]
    return scores


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


@register
class MultiVectorKind(Kind):
    task = "multi-vector"
    output = "multi_vector"
    output_schema = MULTI_VECTOR
    reproduces = "sentence_transformers.MultiVectorEncoder"
    public_class = "st_runtime.multi_vector:MultiVectorEncoder"
    routes = (
        Route("/v1/embeddings", f"{_HANDLERS}:openai_embeddings", "openai"),
        Route("/embeddings", f"{_HANDLERS}:openai_embeddings", "openai"),
        Route("/embed", f"{_HANDLERS}:tei_embed"),
        Route("/embed_all", f"{_HANDLERS}:tei_embed_all"),
        Route("/rerank", f"{_HANDLERS}:tei_rerank"),
    )
    bulk = True
    bulk_tokens = True  # st-embed writes each text's token vectors (documents) and their number

    # ------------------------------------------------------------------ rows
    def width(self, model: Model) -> int:
        """The token vectors' width (a graph output row holds one more column: the token's role)."""
        return model.spec.dimension

    def new_rows(self, model: Model, n: int) -> TokenRows:
        return TokenRows(n)

    def split(self, rows: TokenRows, start: int, end: int) -> list[np.ndarray]:
        return rows[start:end].rows()

    def merge(self, model: Model, prepared: Prepared, text_rows: Any, image_rows: Any) -> Any:
        raise UnsupportedInputError("multi-vector models take text only")

    # ------------------------------------------------------------------ the protocol
    def default_prompt_name(self, model: Model, task: str | None) -> str | None:
        """The prompt sentence-transformers' encode_query / encode_document take when none is given."""
        names = {"query": ("query",), "document": ("document", "passage", "corpus")}.get(task or "", ())
        return next((n for n in names if n in model.prompts), None)

    def max_length(self, model: Model, task: str | None) -> int | None:
        """Tokens kept per text of ``task``: the model's query_length (with expansion: its length) or
        document_length, else its max_seq_length."""
        block = model.spec.output
        own = block.get("query_length") if task == "query" else block.get("document_length") if task else None
        return int(own) if own is not None else model.max_seq_length

    def prepare(
        self,
        model: Model,
        inputs: Any,
        task: str | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        direction: str | None = None,
        strict: bool = False,
        max_length: int | None = None,
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> Prepared:
        """Single texts for ``task`` ("query", "document" or None: as sentence-transformers' encode without a task,
        which masks as a document); the task's prompt applies when the call names none. ``long_inputs``: "truncate"
        or "error" (this kind does not pool windows, so "chunk" is refused with the reason)."""
        check_task(task)
        items, _kinds, singular = classify(inputs)
        bad = next((i for i, it in enumerate(items) if not isinstance(it, str)), None)
        if bad is not None:
            raise UnsupportedInputError(f"input {bad} is not a string; a multi-vector model embeds single texts.")
        if prompt is None and prompt_name is None:
            prompt_name = self.default_prompt_name(model, task)
            if prompt_name is None and task is not None:
                prompt = ""  # as sentence-transformers: encode_query/_document never fall back to the default prompt
        limit = self.max_length(model, task) if max_length is None else max_length
        return self.text_call(
            model, items, singular, None, prompt, prompt_name, limit, direction, strict,
            long_inputs=long_inputs, chunk_overlap=chunk_overlap,
        )  # fmt: skip

    def keep(self, model: Model, task: str | None) -> tuple[int, ...]:
        """The roles that count for ``task`` (MultiVectorMask's rule)."""
        skiplisted = (task or "document") in model.spec.output.get("skiplist_tasks", ["document"])
        roles = (TOKEN, EXPANSION) if task == "query" else (TOKEN,)
        return roles if skiplisted else (*roles, SKIPLISTED)

    def finish(
        self,
        model: Model,
        rows: list[np.ndarray],
        task: str | None = None,
        normalize: bool = False,
        truncate_dim: int | None = None,
        token_pooling: Any = None,
    ) -> list[np.ndarray]:
        """Per text its counted tokens' vectors [tokens, dim] float32: then normalized (``normalize``), pooled
        (``token_pooling``: the model's by default; False: none), cut to ``truncate_dim`` and normalized again, in
        sentence-transformers' order."""
        keep = np.array(self.keep(model, task), dtype=np.float32)
        out = [row[np.isin(row[:, -1], keep), :-1] for row in rows]
        if normalize:
            out = [normalize_rows(v) for v in out]
        pooling = model.spec.output.get("token_pooling") if token_pooling is None else token_pooling
        if pooling:
            from .token_pooling import pool

            out = pool(out, dict(pooling), task)
        truncate_dim = truncate_dim if truncate_dim is not None else model.spec.output.get("truncate_dim")
        if truncate_dim is not None:
            out = [normalize_rows(v[:, :truncate_dim]) for v in out]
        return out

    def bulk_width(self, model: Model, *args: Any, **options: Any) -> int:
        return model.spec.dimension

    def bulk_encode(  # type: ignore[override]
        self, model: Model, texts: list[str], normalize: bool = False, prompt_name: str | None = None
    ) -> list[np.ndarray]:
        """st-embed's rows: each text's token vectors as a document (the document prompt, length and skiplist)."""
        if not texts:
            return []
        rows = model.run(self.prepare(model, list(texts), task="document", prompt_name=prompt_name))
        return self.finish(model, rows, task="document", normalize=normalize)

    def warm_up(self, model: Model) -> None:
        for task in TASKS:
            model.run(self.prepare(model, list(self.warmup_texts), task=task))

    def describe(self, model: Model) -> dict[str, Any]:
        return {"embedding": {"pooling": "none (multi-vector: one vector per token)"}}


def check_task(task: Any) -> None:
    if task not in (None, *TASKS):
        raise ValueError(f"task must be 'query', 'document' or None, got {task!r}.")
