"""The protocol every model kind implements, and what it declares.

A kind is one kind of sentence-transformers model (embeddings, cross-encoders, sparse encoders, ...). It
declares what it reproduces (the sentence-transformers class), its manifest task and output block, its public
st_runtime class, the server routes it answers and its warm-up, and it implements three steps that every door
(``encode``/``predict``, st-serve's batcher and routes, st-embed, Ray) drives without knowing the kind:

1. ``prepare(model, inputs, ...)``: check the caller's inputs and make the text items (prompts applied,
   surrogates repaired, very long texts cut exactly) and their per-call tokenization options: a
   :class:`Prepared`.
2. run the planned batches: the text tower tokenizes and runs the items in length-sorted batches and writes each
   batch's graph output into ``new_rows(model, n)`` (a dense array, or a sink that keeps rows sparse);
   ``split(rows, a, b)`` takes one caller's rows out of a shared (server) batch.
3. ``finish(model, rows, **options)``: turn rows into what the caller gets (normalize, truncate_dim, precision,
   activation, sparsify, ...).

A call with ``long_inputs="chunk"`` runs a long text as several windows (st_runtime.chunking); the drivers then
pool each text's window rows with ``pool`` (the kind's ``pool_windows``) before ``finish``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..chunking import DEFAULT_CHUNK_OVERLAP, check_long_inputs, check_overlap, plan
from ..errors import UnsupportedInputError
from ..inputs import TEXT, TokenItem, prepare

if TYPE_CHECKING:
    from ..chunking import Chunks
    from ..model import Model


@dataclass(frozen=True)
class Route:
    """A server route a kind answers. ``handler``: an async function of one argument, the server's call context
    (``st_runtime.serve.context.Call``), returning the JSON response body; or "module:function" naming one
    (imported when the server starts). ``dialect``: whose error shape the route answers in ("openai", "tei"
    or "cohere"). A kind's route "/" is what TEI's ``POST /`` (and SageMaker's ``/invocations``, Vertex's
    ``/vertex``) answer for its models."""

    path: str
    handler: str | Callable[[Any], Awaitable[Any]]
    dialect: str = "tei"
    methods: tuple[str, ...] = ("POST",)

    def resolve(self) -> Callable[[Any], Awaitable[Any]]:
        if callable(self.handler):
            return self.handler
        import importlib

        module, _, name = self.handler.partition(":")
        return getattr(importlib.import_module(module), name)


@dataclass(eq=False)
class Prepared:
    """One call's inputs ready for the text tower (and image tower): the output of ``Kind.prepare``.

    ``texts``: strings or (text, text_pair) tuples; ``max_length``: tokens kept per text (None: the model's);
    ``direction``: the truncation side (None: the model's); ``strict``: refuse (in the server: 413) a text over
    the limit instead of truncating it; ``images``: images for an image tower, at positions ``image_index`` of
    the caller's list (texts fill the other positions, in order); ``singular``: the caller passed one input;
    ``unnormalized``: the rows are the embedding before the model's final Normalize (for a model without one,
    its usual output). Texts may be :class:`st_runtime.inputs.TokenItem` (already tokenized). ``chunks``: where
    long texts were cut into windows (long_inputs="chunk"), which caller text each item belongs to (the drivers
    pool the rows per text with ``Kind.pool``); None when no text was cut."""

    texts: list
    max_length: int | None = None
    direction: str | None = None
    strict: bool = False
    images: list = field(default_factory=list)
    image_index: list[int] = field(default_factory=list)
    singular: bool = False
    unnormalized: bool = False
    chunks: Chunks | None = None

    @property
    def size(self) -> int:
        return len(self.texts) + len(self.images)

    @property
    def pairs(self) -> bool:
        """Whether any text is a (text, text_pair) tuple (their token type ids are then read back)."""
        return any(isinstance(t, tuple) or (isinstance(t, TokenItem) and t.has_types) for t in self.texts)

    def text_index(self) -> list[int]:
        """Positions of the texts in the caller's list."""
        if not self.images:
            return list(range(len(self.texts)))
        taken = set(self.image_index)
        return [i for i in range(self.size) if i not in taken]


class Kind:
    """Base of every model kind: the declarations (class attributes) and the protocol's default steps.

    Subclasses set the class attributes and override ``prepare`` and ``finish``; ``new_rows``/``split`` only
    when rows are not dense float32 arrays of ``width(model)`` columns."""

    task: ClassVar[str]  # the manifest's "task"
    output: ClassVar[str]  # the manifest key of the output block
    output_schema: ClassVar[Any]  # that block's schema (st_runtime.schema.Obj)
    reproduces: ClassVar[str]  # the sentence-transformers class whose results the kind gives
    public_class: ClassVar[str]  # "module:Class" of the st_runtime class that runs it
    routes: ClassVar[tuple[Route, ...]] = ()
    # st-embed and Ray write fixed-width rows of this kind (bulk_encode); False: they refuse the model
    bulk: ClassVar[bool] = False
    # bulk_encode gives per text a [tokens, bulk_width] array (multi-vector models): st-embed writes a
    # list<fixed_size_list<float32>> column and each text's token count; Ray's fixed-width rows refuse such kinds
    bulk_tokens: ClassVar[bool] = False
    warmup_texts: ClassVar[tuple[str, ...]] = ("warm up", "word " * 600)  # short, and past the length limit

    # ------------------------------------------------------------------ rows
    def width(self, model: Model) -> int:
        """Columns of one graph output row."""
        return model.spec.dimension

    def new_rows(self, model: Model, n: int) -> Any:
        """Where the towers write ``n`` rows (``rows[idx] = batch``, ``rows[a:b]``)."""
        return np.empty((n, self.width(model)), dtype=np.float32)

    def split(self, rows: Any, start: int, end: int) -> Any:
        """The rows ``start:end`` of a shared batch's rows, as ``finish`` takes them."""
        return rows[start:end]

    def merge(self, model: Model, prepared: Prepared, text_rows: Any, image_rows: Any) -> Any:
        """The caller's rows in input order from the text part's and the image part's."""
        out = self.new_rows(model, prepared.size)
        out[prepared.text_index()] = text_rows
        out[prepared.image_index] = image_rows
        return out

    # ------------------------------------------------------------------ the protocol
    # The protocol's steps take keyword options of the kind's own (``*args: Any, **options: Any`` here: each
    # kind declares its own keywords).
    def prepare(self, model: Model, inputs: Any, *args: Any, **options: Any) -> Prepared:
        raise NotImplementedError

    # how a text's window rows pool into one (long_inputs="chunk"), in words for messages and docs; None: the kind
    # cannot chunk (its calls refuse long_inputs="chunk")
    window_pooling: ClassVar[str | None] = None

    def chunk_refusal(self, model: Model) -> str | None:
        """Why ``model`` cannot embed a text in windows (None: it can, as ``window_pooling`` says)."""
        if self.window_pooling is None:
            return f"a {self.task} model cannot pool windows of a text"
        return None

    def long_call(
        self,
        model: Model,
        items: list,
        max_length: int | None,
        long_inputs: str,
        chunk_overlap: int,
        prompt: str | None = None,
    ) -> tuple[list, Chunks | None]:
        """For ``long_inputs`` "chunk" or "error": the items to run (a long text's windows as TokenItems, the
        prompt applied) and their Chunks (None: no text was cut). Texts over the limit are refused under
        "error", naming their token count."""
        limit = model.max_seq_length if max_length is None else max_length
        items = prepare(items, None)
        overlap = check_overlap(chunk_overlap)
        pieces = model._cutter.pieces  # a very long text is tokenized in exact pieces (bounded memory)
        out, chunks = plan(model.text_tower, items, limit, long_inputs, overlap, prompt, pieces)
        if chunks is not None:
            refusal = self.chunk_refusal(model)
            if refusal is not None:
                i = int(chunks.groups[chunks.tokens >= 0][0])
                raise UnsupportedInputError(
                    f"input {i} is over the limit of {limit} tokens and long_inputs='chunk' was asked, but {refusal}. "
                    "Send long_inputs='truncate' (or shorter texts)."
                )
        return out, chunks

    def text_call(
        self,
        model: Model,
        items: list,
        singular: bool,
        kinds: list[str] | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        max_length: int | None = None,
        direction: str | None = None,
        strict: bool = False,
        unnormalized: bool = False,
        long_inputs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> Prepared:
        """The Prepared call of checked text items (and images, where ``kinds`` marks some): the prompt (or the
        named one, or the model's default) before each text, surrogates repaired, very long texts cut exactly
        (``strict``, or ``long_inputs="error"``: kept whole, and texts over the limit refused;
        ``long_inputs="chunk"``: long texts cut into windows, see st_runtime.chunking).
        ``unnormalized``: see :class:`Prepared`."""
        if unnormalized:
            model.row_output(True)  # an export without that output is refused before any work
        long_inputs = check_long_inputs(long_inputs)
        if strict and long_inputs == "truncate":
            long_inputs = "error"
        resolved = model.resolve_prompt(prompt, prompt_name)
        text_at = [i for i, k in enumerate(kinds) if k == TEXT] if kinds else list(range(len(items)))
        if long_inputs == "chunk":
            texts = [items[i] for i in text_at]
            out, chunks = self.long_call(model, texts, max_length, "chunk", chunk_overlap, resolved)
            if chunks is not None and len(text_at) < len(items):
                raise UnsupportedInputError("long_inputs='chunk' takes texts only; send the images in another call")
            if len(text_at) == len(items):
                return Prepared(out, max_length, direction, singular=singular, unnormalized=unnormalized, chunks=chunks)
        strict = long_inputs == "error"  # the drivers refuse a text over the limit as they tokenize it
        items = model.prepare_texts(items, resolved, kinds, strict, direction)
        image_index = [i for i, k in enumerate(kinds) if k != TEXT] if kinds else []
        if not image_index:
            return Prepared(items, max_length, direction, strict, singular=singular, unnormalized=unnormalized)
        at = set(image_index)
        texts = [it for i, it in enumerate(items) if i not in at]
        images = [items[i] for i in image_index]
        return Prepared(texts, max_length, direction, strict, images, image_index, singular, unnormalized)

    def finish(self, model: Model, rows: Any, *args: Any, **options: Any) -> Any:
        raise NotImplementedError

    def pool(self, model: Model, prepared: Prepared, rows: Any, tokens: np.ndarray | None = None) -> tuple[Any, Any]:
        """The rows (as ``split`` gives them) and tokens per caller text of a prepared call's items: unchanged
        unless long texts ran as windows, whose rows then pool per text (``pool_windows``) and whose tokens add
        up (every window's tokens count)."""
        chunks = prepared.chunks
        if chunks is None:
            return rows, tokens
        return self.pool_windows(model, rows, chunks), None if tokens is None else chunks.per_text(tokens)

    def pool_windows(self, model: Model, rows: Any, chunks: Chunks) -> Any:
        """One row per caller text from its items' rows (``chunks.groups``); kinds that set ``window_pooling``."""
        raise NotImplementedError

    def bulk_encode(self, model: Model, texts: list[str], *args: Any, **options: Any) -> np.ndarray:
        """Fixed-width float32 rows for st-embed and Ray (kinds with ``bulk = True``)."""
        raise NotImplementedError

    def bulk_width(self, model: Model, *args: Any, **options: Any) -> int:
        """Columns ``bulk_encode`` writes."""
        return self.width(model)

    def warm_up(self, model: Model) -> None:
        """Run a short and a long input once (allocates the largest buffers before the first request)."""
        model.run(self.prepare(model, list(self.warmup_texts)), show_progress_bar=False)

    def describe(self, model: Model) -> dict[str, Any]:
        """TEI's ``model_type`` for ``/info``."""
        return {"embedding": {"pooling": "none"}}

    def __repr__(self) -> str:
        return f"<kind {self.task!r}: {self.reproduces}>"
