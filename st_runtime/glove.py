"""sentence-transformers' WhitespaceTokenizer (the tokenizer of the average_word_embeddings_* models), without
torch or sentence-transformers, behind the small part of the ``tokenizers.Tokenizer`` interface the text
tower uses (``encode_batch``, ``encode``, truncation switches).

The lookup follows sentence_transformers ``WhitespaceTokenizer.tokenize`` exactly: optional lower-casing of the
whole text, ``str.split()``, then for every token, in this order: drop it if it is a stop word, take it if it is
in the vocabulary; strip ``string.punctuation`` from both ends and repeat both checks (an empty token is never
looked up); lower-case it and repeat both checks; otherwise drop it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ManifestError, UnsupportedInputError


class WordEncoding:
    """What ``tokenizers.Encoding`` offers the text tower: ids, type_ids and attention_mask."""

    __slots__ = ("attention_mask", "ids", "type_ids")

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.type_ids = [0] * len(ids)
        self.attention_mask = [1] * len(ids)

    def __len__(self) -> int:
        return len(self.ids)


class WhitespaceTokenizer:
    def __init__(self, vocab: Iterable[str], stop_words: Iterable[str], do_lower_case: bool = False):
        self.vocab = list(vocab)
        # Same construction as sentence-transformers (OrderedDict over enumerate): a repeated word keeps its last id.
        self.word2idx = {word: idx for idx, word in enumerate(self.vocab)}
        self.stop_words = set(stop_words)
        self.do_lower_case = bool(do_lower_case)
        self._max_length: int | None = None

    @classmethod
    def from_manifest(cls, folder: Path, info: Mapping[str, Any]) -> WhitespaceTokenizer:
        path = Path(folder) / info["file"]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            vocab = data["vocab"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ManifestError(
                f"{path} is not a WhitespaceTokenizer vocabulary written by st-export ({exc!r}). "
                "Re-export the model with `st-export`."
            ) from exc
        if not isinstance(info.get("stop_words"), list):
            raise ManifestError(
                f"the manifest of {folder} gives no stop_words list for the whitespace tokenizer. "
                "Re-export the model with `st-export`."
            )
        return cls(vocab, info["stop_words"], info.get("do_lower_case", False))

    # ---------------------------------------------------------------- tokenizers.Tokenizer-like switches
    def no_padding(self) -> None:
        """Padding is done by the tower; present for interface parity with tokenizers.Tokenizer."""

    def no_truncation(self) -> None:
        self._max_length = None

    def enable_truncation(
        self, max_length: int, strategy: str = "longest_first", direction: str = "right", **_ignored
    ) -> None:
        if direction != "right":
            raise ValueError(f"the whitespace tokenizer truncates on the right only, got direction={direction!r}")
        self._max_length = int(max_length)

    def get_vocab_size(self) -> int:
        return len(self.word2idx)

    # ---------------------------------------------------------------- tokenization
    def tokenize(self, text: str) -> list[int]:
        """Word ids of ``text``, exactly as sentence-transformers' WhitespaceTokenizer.tokenize gives them."""
        if self.do_lower_case:
            text = text.lower()
        stop, w2i = self.stop_words, self.word2idx
        out: list[int] = []
        for token in text.split():
            if token in stop:
                continue
            idx = w2i.get(token)
            if idx is not None:
                out.append(idx)
                continue
            token = token.strip(string.punctuation)
            if token in stop:
                continue
            if len(token) > 0:
                idx = w2i.get(token)
                if idx is not None:
                    out.append(idx)
                    continue
            token = token.lower()
            if token in stop:
                continue
            idx = w2i.get(token)
            if idx is not None:
                out.append(idx)
        return out

    def encode(self, text: str) -> WordEncoding:
        if not isinstance(text, str):
            raise UnsupportedInputError(
                f"this model (word embeddings with a whitespace tokenizer) embeds single texts; got "
                f"{type(text).__name__} ({text!r:.60}). Text pairs are not supported by this model type, as in "
                "sentence-transformers."
            )
        ids = self.tokenize(text)
        if self._max_length is not None:
            ids = ids[: self._max_length]
        return WordEncoding(ids)

    def encode_batch(self, items: list) -> list[WordEncoding]:
        return [self.encode(t) for t in items]
