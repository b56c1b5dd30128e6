"""Inputs before tokenization: classification (texts, pairs, images), lone surrogates, very long texts.

Documented, deterministic rules:

* **Surrogates.** A Python ``str`` can hold UTF-16 surrogate code points (U+D800..U+DFFF), for example
  from ``json.loads('"\\ud800"')`` or ``bytes.decode(errors="surrogateescape")``. They are not Unicode
  scalar values, and the Rust tokenizer (so sentence-transformers too) raises ``TypeError`` on them.
  st_runtime instead decodes the text as UTF-16 would: a high surrogate directly followed by a low
  surrogate becomes the character they encode, and every other surrogate becomes U+FFFD (the
  replacement character). The embedding is then exactly sentence-transformers' embedding of that
  repaired text.

* **Very long texts** are shortened exactly before tokenization by :class:`st_runtime.longtext.LongTextCutter`
  (whose docstring gives the rules); :func:`prepare` applies it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import UnsupportedInputError
from .longtext import PRECUT_FACTOR, LongTextCutter

__all__ = [
    "IMAGE",
    "PRECUT_FACTOR",
    "TEXT",
    "LongTextCutter",
    "TokenItem",
    "classify",
    "prepare",
    "repair_surrogates",
]

_SURROGATE = re.compile("[\ud800-\udfff]")


class TokenItem:
    """An input that is already tokenized: its token ids as the caller wants them fed (special tokens included or
    not, as the caller sent them), and optionally their token type ids (default all zero). It is read like a
    tokenizers ``Encoding`` (``ids``, ``type_ids``, ``attention_mask``, ``len()``), so it runs in the same
    length-sorted batches as tokenized texts. A TokenItem longer than a call's limit is cut on the call's
    truncation side (a plain slice: special tokens are not re-added)."""

    __slots__ = ("ids", "type_ids")

    def __init__(self, ids, type_ids=None):
        self.ids = [int(i) for i in ids]
        self.type_ids = [0] * len(self.ids) if type_ids is None else [int(t) for t in type_ids]
        if len(self.type_ids) != len(self.ids):
            raise ValueError(f"type_ids has {len(self.type_ids)} entries for {len(self.ids)} token ids")

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenItem) and self.ids == other.ids and self.type_ids == other.type_ids

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TokenItem({len(self.ids)} ids)"

    @property
    def has_types(self) -> bool:
        """Whether any token type id is not zero (then it is read back like a text pair's)."""
        return any(self.type_ids)

    def truncated(self, max_length: int | None, side: str) -> TokenItem:
        """This item cut to ``max_length`` ids (None: whole) on ``side`` ("right" keeps the first ids)."""
        if max_length is None or len(self.ids) <= max_length:
            return self
        keep = slice(0, max_length) if side == "right" else slice(len(self.ids) - max_length, None)
        return TokenItem(self.ids[keep], self.type_ids[keep])


def repair_surrogates(text: str) -> str:
    """Join surrogate pairs and replace lone surrogates with U+FFFD; other text is returned unchanged."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def prepare(
    items: list[Any], cutter: LongTextCutter | None, kinds: list[str] | None = None, direction: str | None = None
) -> list[Any]:
    """Repair surrogates in every text (and text pair) and shorten very long single texts exactly for
    truncation on ``direction`` (None: the model's side). ``kinds`` marks items that are not text (images),
    which are left alone."""
    if kinds is None and set(map(type, items)) <= {str} and all(map(str.isascii, items)):
        threshold = None if cutter is None else cutter.threshold  # ASCII texts hold no surrogates
        if threshold is None or max(map(len, items), default=0) <= threshold:
            return items  # nothing to repair or cut: no loop over the texts
    out = items
    for i, item in enumerate(items):
        if (kinds is not None and kinds[i] != "text") or isinstance(item, TokenItem):
            continue
        new: Any
        if isinstance(item, str):
            new = repair_surrogates(item)
            if cutter is not None:
                new = cutter.cut(new, direction)
        else:
            new = (repair_surrogates(item[0]), repair_surrogates(item[1]))
            if new[0] is item[0] and new[1] is item[1]:
                new = item
        if new is not item:
            if out is items:
                out = list(items)
            out[i] = new
    return out


TEXT = "text"
IMAGE = "image"
_SCALARS = (bytes, bytearray, dict, int, float, complex, bool)


def classify(sentences: Any, images: bool = False) -> tuple[list, list[str], bool]:
    """Validate ``encode``'s input before any work: (items, kinds, singular), each kind "text" (a string or a
    (text, text_pair) tuple) or, for a model with an image tower (``images``), "image" (a PIL image, a 3-D
    uint8 array, an image file path or a ``data:image/`` URI, decided as sentence-transformers 6 decides).
    Anything else raises UnsupportedInputError naming the input."""
    from .image import is_pil_image

    expected = "text, an image, or a list of them" if images else "a string or a list of strings"

    def is_image(obj: Any) -> bool:
        return images and (is_pil_image(obj) or (isinstance(obj, np.ndarray) and obj.ndim == 3))

    if isinstance(sentences, (str, TokenItem)) or is_image(sentences):
        items, singular = [sentences], True
    elif sentences is None or isinstance(sentences, _SCALARS):
        raise UnsupportedInputError(f"encode expects {expected}, got {type(sentences).__name__}.")
    elif isinstance(sentences, np.ndarray):
        if sentences.ndim == 0:
            return classify(sentences.item(), images)
        items = list(sentences) if images and sentences.ndim == 4 else sentences.tolist()  # 4-D: images
        singular = False
    elif isinstance(sentences, Iterable):
        items, singular = list(sentences), False
    else:
        raise UnsupportedInputError(f"encode expects {expected}, got {type(sentences).__name__}.")
    if not images and set(map(type, items)) <= {str}:  # plain texts: nothing to decide per item
        return items, [TEXT] * len(items), singular
    return items, _kinds(items, images, is_image), singular


def _kinds(items: list, images: bool, is_image) -> list[str]:
    """Each item's kind (tuples of two strings become (text, text_pair) pairs in place); see classify."""
    from .image import is_image_path, is_image_url

    kinds = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if images and is_image_url(item):
                raise UnsupportedInputError(
                    f"input {i} is an image URL ({item[:80]!r}); st_runtime does not download. Fetch the image "
                    "and pass it as a PIL image, a numpy array or a local file path."
                )
            kinds.append(IMAGE if images and is_image_path(item) else TEXT)
        elif isinstance(item, TokenItem) or is_image(item):
            kinds.append(TEXT if isinstance(item, TokenItem) else IMAGE)
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            items[i] = (item[0], item[1])
            kinds.append(TEXT)
        else:
            allowed = (
                "a string, a [text, pair] of strings, a PIL image, a 3-D uint8 numpy array (H, W, C) or "
                "(C, H, W), or an image file path"
                if images
                else "a string or a pair [text, text_pair] of strings"
            )
            raise UnsupportedInputError(
                f"input {i} is a {type(item).__name__} ({item!r:.60}); each input must be {allowed}."
            )
    return kinds
