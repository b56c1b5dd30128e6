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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..inputs import TEXT

if TYPE_CHECKING:
    from ..model import Model


@dataclass(frozen=True)
class Route:
    """A server route a kind answers. ``handler``: an async function of one argument, the server's call context
    (``st_runtime.serve.context.Call``), returning the JSON response body; or "module:function" naming one
    (imported when the server starts). ``dialect``: whose error shape the route answers in ("openai" or
    "tei")."""

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
    the caller's list (texts fill the other positions, in order); ``singular``: the caller passed one input."""

    texts: list
    max_length: int | None = None
    direction: str | None = None
    strict: bool = False
    images: list = field(default_factory=list)
    image_index: list[int] = field(default_factory=list)
    singular: bool = False

    @property
    def size(self) -> int:
        return len(self.texts) + len(self.images)

    @property
    def pairs(self) -> bool:
        """Whether any text is a (text, text_pair) tuple (their token type ids are then read back)."""
        return any(isinstance(t, tuple) for t in self.texts)

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
    ) -> Prepared:
        """The Prepared call of checked text items (and images, where ``kinds`` marks some): the prompt (or the
        named one, or the model's default) before each text, surrogates repaired, very long texts cut exactly
        (``strict``: kept whole, and refused early when provably too long; see Model.prepare_texts)."""
        items = model.prepare_texts(items, model.resolve_prompt(prompt, prompt_name), kinds, strict, direction)
        image_index = [i for i, k in enumerate(kinds) if k != TEXT] if kinds else []
        if not image_index:
            return Prepared(items, max_length, direction, strict, singular=singular)
        at = set(image_index)
        texts = [it for i, it in enumerate(items) if i not in at]
        return Prepared(texts, max_length, direction, strict, [items[i] for i in image_index], image_index, singular)

    def finish(self, model: Model, rows: Any, *args: Any, **options: Any) -> Any:
        raise NotImplementedError

    def bulk_encode(self, model: Model, texts: list[str], *args: Any, **options: Any) -> np.ndarray:
        """Fixed-width float32 rows for st-embed and Ray (kinds with ``bulk = True``)."""
        raise NotImplementedError

    def bulk_width(self, model: Model, *args: Any, **options: Any) -> int:
        """Columns ``bulk_encode`` writes."""
        return self.width(model)

    def warm_up(self, model: Model) -> None:
        """Run a short and a long input once (allocates the largest buffers before the first request)."""
        model.run(self.prepare(model, list(self.warmup_texts)))

    def describe(self, model: Model) -> dict[str, Any]:
        """TEI's ``model_type`` for ``/info``."""
        return {"embedding": {"pooling": "none"}}

    def __repr__(self) -> str:
        return f"<kind {self.task!r}: {self.reproduces}>"
