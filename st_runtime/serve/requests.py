"""Typed request bodies of st-serve's routes: each route's fields parsed and checked in one place, with every
422 message made here. The handlers receive these objects, never the raw JSON."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..inputs import TokenItem
from . import wire
from .errors import RequestError
from .guards import check_sizes
from .wire import BOOLEAN, POSITIVE, STRING, nested, wired

if TYPE_CHECKING:
    from .registry import ServeConfig, ServedModel

_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


def _is_id(value: Any) -> bool:
    return type(value) is int


def _kinds(kinds: type | tuple) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


class Body:
    """A request's JSON object, read field by field, under the server's limits (--max-client-batch-size,
    --max-input-chars)."""

    def __init__(self, data: dict[str, Any], config: ServeConfig):
        self.data = data
        self.config = config
        self.max_items = config.max_client_batch_size
        self.max_chars = config.limits.max_input_chars
        self.long_inputs = config.long_inputs  # --long-inputs: the default of a request that says nothing

    def with_data(self, data: dict[str, Any]) -> Body:
        """Another body under the same limits (one of Vertex's instances, a request's merged parameters)."""
        return Body(data, self.config)

    def get(self, name: str, kinds: type | tuple, default: Any = None) -> Any:
        """Field ``name`` of one of ``kinds`` (absent or null: ``default``); true/false is not an integer."""
        value = self.data.get(name, default)
        if value is None:
            return default
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _kinds(kinds)):
            what = " or ".join(_NAMES.get(k, k.__name__) for k in _kinds(kinds))
            raise RequestError(422, f"'{name}' must be {what}, got {type(value).__name__}", param=name)
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None, fold_case: bool = False) -> str | None:
        value = self.get(name, str)
        if value is None:
            return default
        key = value.lower() if fold_case else value
        if key not in choices:
            shown = " or ".join(repr(c.capitalize() if fold_case else c) for c in choices)
            raise RequestError(422, f"'{name}' must be {shown}, got {value!r}", param=name)
        return key

    def required_text(self, name: str) -> str:
        value = self.data.get(name)
        if not isinstance(value, str):
            raise RequestError(422, f"'{name}' must be a string, got {type(value).__name__}", param=name)
        check_sizes([value], self.max_chars, name)
        return value

    def inputs(self, key: str, ids_of: ServedModel | None = None) -> tuple[list[Any], bool]:
        """The request's inputs as a list of strings (and whether one input was sent). ``ids_of``: token ids of
        that model's vocabulary are taken too (a list of ids is one input, a TokenItem), as OpenAI and TEI take
        them."""
        if key not in self.data:
            raise RequestError(422, f"'{key}' is required: a string or a list of strings", param=key)
        value = self.data[key]
        if isinstance(value, str):
            check_sizes([value], self.max_chars, key)
            return [value], True
        if ids_of is not None and isinstance(value, list) and value and all(_is_id(v) for v in value):
            return [self._token_item(value, key, ids_of)], True
        if not isinstance(value, list):
            raise RequestError(
                422, f"'{key}' must be a string or a list of strings, got {type(value).__name__}", param=key
            )
        if not value:
            raise RequestError(422, f"'{key}' is an empty list; send at least one input", param=key)
        if len(value) > self.max_items:
            raise RequestError(
                413,
                f"'{key}' has {len(value)} items, over this server's --max-client-batch-size of {self.max_items}; "
                "split the request",
                "Validation",
                key,
            )
        items: list[Any] = list(value)
        for i, item in enumerate(value):
            if ids_of is not None and isinstance(item, list):
                items[i] = self._token_item(item, f"{key}[{i}]", ids_of)
            elif not isinstance(item, str):
                hint = " (token arrays are not accepted here: send the text)" if isinstance(item, (int, list)) else ""
                what = "a string or a list of token ids" if ids_of is not None else "a string"
                raise RequestError(422, f"'{key}[{i}]' must be {what}, got {type(item).__name__}{hint}", param=key)
        check_sizes([t for t in items if isinstance(t, str)], self.max_chars, key)
        return items, False

    @staticmethod
    def _token_item(ids: list, where: str, model: ServedModel) -> TokenItem:
        """One tokenized input: every id checked against the model's vocabulary (422 naming the first bad one)."""
        if not ids:
            raise RequestError(422, f"'{where}' is an empty list of token ids", param=where.split("[")[0])
        vocab = model.vocab_size
        for j, t in enumerate(ids):
            if not _is_id(t) or not 0 <= t < vocab:
                raise RequestError(
                    422,
                    f"'{where}[{j}]' is {t!r}, not a token id of model {model.name!r}'s vocabulary (0..{vocab - 1})",
                    param=where.split("[")[0],
                )
        return TokenItem(ids)

    def dimensions(self, model: ServedModel) -> int | None:
        dims = self.get("dimensions", int)
        if dims is not None and not 0 < dims <= model.dim:
            raise RequestError(
                422,
                f"'dimensions' must be between 1 and {model.dim} (the model's dimension), got {dims}",
                param="dimensions",
            )
        return dims

    def prompt(self, model: ServedModel) -> str | None:
        """The prompt text ``prompt_name`` names (None: the model's default prompt applies)."""
        name = self.get("prompt_name", str)
        if name is None:
            return None
        prompts = model.prompts
        if name not in prompts:
            raise RequestError(
                422, f"'prompt_name' {name!r} is not one of the model's prompts {sorted(prompts)}", param="prompt_name"
            )
        return prompts[name]


INPUTS_DOC = "a text, or a list of texts; or token ids of the model's vocabulary (a list of ids is one input)"


@dataclass(frozen=True)
class TextOptions:
    """How a route's texts are tokenized: ``truncate`` (false: over-long texts are refused with 413, or chunked
    where the server's --long-inputs is chunk), ``long_inputs`` ("truncate", "chunk" or "error"; default: the
    server's --long-inputs), ``chunk_overlap``, ``truncation_direction`` ("Right" or "Left") and ``prompt_name``."""

    strict: bool = wired("truncate", BOOLEAN, "false: refuse (413) a text over the model's limit", wire_default=True)
    direction: str | None = wired(
        "truncation_direction", wire.choice("Right", "Left"), "the side cut from an over-long text (case-insensitive)"
    )
    prompt: str | None = wired("prompt_name", STRING, "one of the model's prompts, put before each text")
    long_inputs: str = wired(
        "long_inputs",
        wire.choice("truncate", "chunk", "error"),
        "over-long texts: truncate, chunk (windows pooled per text) or error (413); default: the server's "
        "--long-inputs",
        default="truncate",
    )
    chunk_overlap: int | None = wired(
        "chunk_overlap", {"type": "integer", "minimum": 0}, "tokens shared by neighbouring windows", default=None
    )

    @classmethod
    def parse(cls, body: Body, model: ServedModel, prompts: bool = True) -> TextOptions:
        mode = cls.long_inputs_of(body)
        overlap = body.get("chunk_overlap", int)
        if overlap is not None and overlap < 0:
            raise RequestError(422, f"'chunk_overlap' must be 0 or more tokens, got {overlap}", param="chunk_overlap")
        direction = body.choice("truncation_direction", ("right", "left"), None, fold_case=True)
        return cls(mode == "error", direction, body.prompt(model) if prompts else None, mode, overlap)

    @staticmethod
    def long_inputs_of(body: Body) -> str:
        """The request's long_inputs: its own, else ``truncate: true`` -> "truncate", ``truncate: false`` -> the
        server's default unless that truncates ("error" then), else the server's default."""
        truncate = body.get("truncate", bool)
        mode = body.choice("long_inputs", ("truncate", "chunk", "error"), None)
        if mode is None:
            if truncate is None:
                return body.long_inputs
            return "truncate" if truncate else ("error" if body.long_inputs == "truncate" else body.long_inputs)
        if truncate is not None and truncate != (mode == "truncate"):
            raise RequestError(
                422, f"'truncate': {str(truncate).lower()} contradicts 'long_inputs': {mode!r}; send one of them",
                param="long_inputs",
            )  # fmt: skip
        return mode

    def prepare_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"direction": self.direction, "long_inputs": self.long_inputs}
        if self.chunk_overlap is not None:
            args["chunk_overlap"] = self.chunk_overlap
        return args


def decode_image(uri: str, index: int, key: str):
    """A ``data:image/...;base64,`` input as a PIL image (422 when it is not one)."""
    header, _, payload = uri.partition(",")
    if ";base64" not in header:
        raise RequestError(
            422, f"'{key}[{index}]': an image must be a base64 data URI (data:image/png;base64,...)", param=key
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(422, f"'{key}[{index}]': the image's base64 does not decode ({exc})", param=key) from None
    try:
        from PIL import Image
    except ImportError:
        raise RequestError(
            422,
            "this server cannot decode images: Pillow is not installed (pip install 'st-runtime[image]')",
            param=key,
        ) from None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except Exception as exc:  # Pillow raises many types for a broken file
        raise RequestError(422, f"'{key}[{index}]' is not an image Pillow can read: {exc}", param=key) from None
    return image


def with_images(items: list[str], model: ServedModel, key: str) -> list[Any]:
    """Inputs with their data-URI images decoded, for a model with an image tower (others: unchanged)."""
    if not model.model.takes_images:
        return items
    return [
        decode_image(t, i, key) if isinstance(t, str) and t.startswith("data:image/") else t
        for i, t in enumerate(items)
    ]


@dataclass(frozen=True)
class VectorsRequest:
    """The fields the embedding routes share: the inputs (images decoded for an image tower), ``dimensions``
    (a Matryoshka cut) and the text options."""

    inputs: list[Any] = wired("inputs", wire.texts(ids=True), INPUTS_DOC, required=True)
    dimensions: int | None = wired("dimensions", POSITIVE, "keep the first N dimensions (Matryoshka)")
    text: TextOptions = nested()

    @staticmethod
    def common(body: Body, model: ServedModel, key: str) -> tuple[list[Any], int | None, TextOptions]:
        items, _ = body.inputs(key, ids_of=model)
        dims = body.dimensions(model)
        return with_images(items, model, key), dims, TextOptions.parse(body, model)


@dataclass(frozen=True)
class EmbeddingsRequest(VectorsRequest):
    """OpenAI's ``POST /v1/embeddings``: input, encoding_format ("float" or "base64"), dimensions; st-serve's
    prompt_name, truncate, truncation_direction."""

    inputs: list[Any] = wired("input", wire.texts(ids=True), INPUTS_DOC, required=True)
    encoding_format: str = wired(
        "encoding_format", wire.choice("float", "base64"), "base64: little-endian float32", default="float"
    )

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> EmbeddingsRequest:
        fmt = body.choice("encoding_format", ("float", "base64"), "float")
        return cls(*cls.common(body, model, "input"), encoding_format=fmt or "float")


@dataclass(frozen=True)
class EmbedRequest(VectorsRequest):
    """TEI's ``POST /embed``: inputs, normalize (default true), dimensions, truncate, truncation_direction,
    prompt_name."""

    normalize: bool = wired("normalize", BOOLEAN, "false: the embedding before normalization", default=True)

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> EmbedRequest:
        normalize = body.get("normalize", bool, True)
        return cls(*cls.common(body, model, "inputs"), normalize=normalize)


@dataclass(frozen=True)
class RerankRequest:
    """TEI's ``POST /rerank``: query, texts, raw_scores, return_text, truncate, truncation_direction."""

    UNREAD = ("prompt_name",)

    query: str = wired("query", STRING, "the query", required=True)
    texts: list[str] = wired("texts", wire.STRINGS, "the documents to rank", required=True)
    raw_scores: bool = wired("raw_scores", BOOLEAN, "the logits, before the model's activation", wire_default=False)
    return_text: bool = wired("return_text", BOOLEAN, "return each document's text", wire_default=False)
    text: TextOptions = nested()

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> RerankRequest:
        query = body.required_text("query")
        texts, _ = body.inputs("texts")
        raw = body.get("raw_scores", bool, False)
        return_text = body.get("return_text", bool, False)
        return cls(query, texts, raw, return_text, TextOptions.parse(body, model, prompts=False))


@dataclass(frozen=True)
class SparseRequest:
    """TEI's ``POST /embed_sparse``: inputs, truncate, truncation_direction, prompt_name."""

    inputs: list[Any] = wired("inputs", wire.texts(ids=True), INPUTS_DOC, required=True)
    text: TextOptions = nested()

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> SparseRequest:
        items, _ = body.inputs("inputs", ids_of=model)
        return cls(items, TextOptions.parse(body, model))


@dataclass(frozen=True)
class TokenizeRequest:
    """TEI's ``POST /tokenize``: inputs, add_special_tokens (default: as the model), prompt_name."""

    inputs: list[str] = wired("inputs", wire.texts(), "the texts (a string, or a list)", required=True)
    add_special_tokens: bool = wired("add_special_tokens", BOOLEAN, "default: as the model tokenizes")
    prompt: str | None = wired("prompt_name", STRING, "one of the model's prompts, put before each text")

    @classmethod
    def parse(cls, body: Body, model: ServedModel) -> TokenizeRequest:
        items, _ = body.inputs("inputs")
        special = body.get("add_special_tokens", bool, model.model.text_tower.add_special_tokens)
        prompt = body.prompt(model)
        if prompt is None and model.model.default_prompt_name:
            prompt = model.prompts.get(model.model.default_prompt_name)
        return cls(items, special, prompt)
