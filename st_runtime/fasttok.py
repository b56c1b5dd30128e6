"""The ASCII fast path of a tokenizer: the same token ids in about half the time, for texts made of ASCII
characters only (most queries and passages in English).

Normalization is most of what ``tokenizers`` spends on a short text (BERT's normalizer: about half of a query's
time and two thirds of a passage's, on the CPUs measured in docs/speed.md): it tracks every character's
alignment through Unicode decomposition, accent stripping and lowercasing. On ASCII text, each normalizer this
module knows reduces to string operations CPython runs in C over the whole text: ``str.lower``, deleting or
spacing control characters (``str.translate``) and ``str.replace``. So an ASCII text is normalized here, and
tokenized by a twin of the tokenizer that has no normalizer (the same pre-tokenizer, model, post-processor and
truncation): the twin sees exactly the string the tokenizer's own normalizer would have produced, and gives the
same ids, type ids and attention mask (offsets are not kept: batching never reads them). BERT's pre-tokenizer,
which looks every character up in Unicode's punctuation tables, is given its ASCII form too (whitespace, then
ASCII punctuation).

What stays on the tokenizer itself: a text with any non-ASCII character; a text holding an added token's content
in any letter case, before or after normalization (added tokens are matched on the original text or on the
normalized one, by their own flags); and every text of a tokenizer whose normalizer is not one of those below.
Which normalizers qualify is read off the tokenizer's own configuration, and the twin is checked against the
tokenizer on a battery of ASCII texts (every character, letter cases, control characters, long words, empty and
blank texts) when it is made; a twin that differs on any of them is not used.

Normalizers with an exact ASCII form: BertNormalizer (clean_text deletes control characters but tab, newline and
carriage return, which become spaces; lowercase), Lowercase, Replace of a literal string (ALBERT's quotes,
Gemma's spaces), NFC/NFD/NFKC/NFKD and StripAccents (nothing to do on ASCII), and Sequences of them, in order."""

from __future__ import annotations

import json
import operator
import re
from typing import Any

import numpy as np

# ASCII control characters (Unicode category Cc): BertNormalizer's clean_text deletes them, but tab, newline and
# carriage return, which it turns into spaces (as it does every whitespace character)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CLEAN = {**{c: None for c in (*range(32), 127)}, 9: 32, 10: 32, 13: 32}
# BertPreTokenizer on ASCII text: split at whitespace (removed), then isolate each ASCII punctuation character; its
# own test of "punctuation" looks each character up in Unicode's tables, which ASCII text does not need
_ASCII_BERT_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "WhitespaceSplit"},
        {"type": "Split", "pattern": {"Regex": r"[!-/:-@\[-`{-~]"}, "behavior": "Isolated", "invert": False},
    ],
}
_IDENTITY_ON_ASCII = {"NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
_TO_LOWER = operator.methodcaller("lower")
_TO_CLEAN = operator.methodcaller("translate", _CLEAN)


def ascii_steps(config: dict | None) -> tuple[tuple[str, ...], ...] | None:
    """The steps of a normalizer's configuration (tokenizer.json's "normalizer") on ASCII text, in order: ("lower",),
    ("clean",) (delete control characters, space tab, newline and carriage return) and ("replace", pattern,
    content) (a literal pattern, as ``str.replace`` replaces it); None when it has no exact ASCII form known here."""
    if config is None:
        return ()
    kind = config.get("type")
    if kind in _IDENTITY_ON_ASCII:
        return ()
    if kind == "Lowercase":
        return (("lower",),)
    if kind == "BertNormalizer":  # on ASCII its clean_text and lowercase commute; its other steps do nothing
        return (("clean",),) * bool(config.get("clean_text")) + (("lower",),) * bool(config.get("lowercase"))
    if kind == "Replace":
        pattern = (config.get("pattern") or {}).get("String")
        content = config.get("content")
        if not isinstance(pattern, str) or not pattern or not isinstance(content, str):
            return None  # a regular expression: its engine is not Python's
        return (("replace", pattern, content),)
    if kind == "Sequence":
        steps: tuple[tuple[str, ...], ...] = ()
        for step in config.get("normalizers") or []:
            got = ascii_steps(step)
            if got is None:
                return None
            steps += got
        return steps
    return None


def _battery() -> list[str]:
    """ASCII texts on which a twin must give the tokenizer's own results before it is used."""
    chars = "".join(map(chr, range(128)))
    texts = [
        "",
        " ",
        " \t\n\r ",
        chars,
        chars[::-1],
        "Hello, World! HELLO world hello WoRlD.",
        "The QUICK brown fox's e-mail: Fox@Example.COM (tel. +1-555-0100), 3.14% [sic] {x} <y> ~z~ `q` |p| ^o^",
        "a\x00b\x01c\x07d\x08e\x0bf\x0cg\x1bh\x1fi\x7fj\tk\nl\rm  n",
        "Supercalifragilisticexpialidocious" * 6,  # one word past most max_input_chars_per_word
        "don't can't won't I'm you're it's ''quoted'' \"double\" --dash-- ...",
        "x" * 600 + " y",
        " ".join(f"w{i} W{i}" for i in range(300)),
        "camelCaseWord snake_case_word kebab-case-word PascalCase 1e-5 0x1F 2026-12-07T03:41:00Z",
    ]
    return texts + [f"{c}{c.upper()}x{c} {c}" for c in chars]


class AsciiFastPath:
    """A tokenizer's ASCII fast path (see the module docstring); ``make`` returns None where none applies."""

    def __init__(self, tokenizer, twin, steps: tuple[tuple[str, ...], ...], added: list[str]):
        self.tokenizer = tokenizer
        self.twin = twin
        self.steps = steps
        # added tokens' contents: a text holding one in any letter case, before or after normalization, stays on the
        # tokenizer (added tokens are matched on the original text or on the normalized one, by their own flags)
        self._added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None

    @classmethod
    def make(cls, tokenizer) -> AsciiFastPath | None:
        """The fast path of a ``tokenizers.Tokenizer`` (with the truncation set on it), or None where its normalizer
        has no known ASCII form, it has none (nothing to gain), or the twin differs from it on the battery."""
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer) or tokenizer.normalizer is None:
            return None
        config = json.loads(tokenizer.to_str())
        steps = ascii_steps(config.get("normalizer"))
        if steps is None:
            return None
        twin_config = {**config, "normalizer": None}
        if (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer":
            twin_config["pre_tokenizer"] = _ASCII_BERT_PRE_TOKENIZER
        twin = Tokenizer.from_str(json.dumps(twin_config))
        # no content may hold a newline (the texts' separator below)
        contents = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        added = sorted((c for c in contents if c), key=len, reverse=True)
        if any("\n" in c for c in added):
            return None
        fast = cls(tokenizer, twin, steps, added)
        return fast if fast._agrees() else None

    def _agrees(self) -> bool:
        battery = _battery()
        items: list = battery + [(t, "Second TEXT, of the pair.") for t in battery[:8]]
        if not self.takes_pairs():
            items = battery
        for method in ("encode_batch", "encode_batch_fast"):
            if not hasattr(self.tokenizer, method):
                continue
            mine = self.encode(items, method)
            theirs = getattr(self.tokenizer, method)(items)
            if not all(
                a.ids == b.ids and a.type_ids == b.type_ids and a.attention_mask == b.attention_mask
                for a, b in zip(mine, theirs, strict=True)
            ):
                return False
        return True

    def takes_pairs(self) -> bool:
        """Whether the tokenizer's post-processor encodes text pairs (a template without a pair part refuses)."""
        post = json.loads(self.tokenizer.to_str()).get("post_processor") or {}
        return post.get("type") != "TemplateProcessing" or bool(post.get("pair"))

    def _normalize(self, texts: list[str]) -> list[str]:
        """The texts as the tokenizer's normalizer leaves them (each step over every text, in C)."""
        for step in self.steps:
            if step[0] == "lower":
                texts = list(map(_TO_LOWER, texts))
            elif step[0] == "clean":
                if _CONTROL.search("\x80".join(texts)):
                    texts = list(map(_TO_CLEAN, texts))
            else:
                texts = list(map(operator.methodcaller("replace", step[1], step[2]), texts))
        return texts

    @staticmethod
    def _flat(items: list, single: np.ndarray) -> list[str]:
        """Each item as one string: a text, or a pair's two texts joined by a newline."""
        return items if single.all() else [it if isinstance(it, str) else "\n".join(it) for it in items]

    def _holds_added(self, flat: list[str]) -> np.ndarray:
        """Per item (``_flat``), whether it holds an added token's content in any letter case."""
        hit = np.zeros(len(flat), dtype=bool)
        if self._added is None or not flat:
            return hit
        matches = [m.start() for m in self._added.finditer("\n".join(flat))]
        if matches:
            starts = np.cumsum([0, *map(len, flat[:-1])]) + np.arange(len(flat))
            hit[np.searchsorted(starts, matches, side="right") - 1] = True
        return hit

    def eligible(self, items: list, single: np.ndarray | None = None) -> np.ndarray:
        """Per item (text or (text, text_pair) tuple; ``single``: which are texts, when the caller knows), whether
        the twin may tokenize it: ASCII only, and no added token's content in any letter case (its normalized
        form is checked too, by ``encode``)."""
        if single is None:
            single = _singles(items)
        flat = self._flat(items, single)
        ok = np.fromiter(map(str.isascii, flat), dtype=bool, count=len(flat))
        if ok.any():
            ok &= ~self._holds_added(flat)
        return ok

    def _normalize_items(self, items: list, single: np.ndarray) -> list:
        """Texts and (text, text_pair) tuples as the tokenizer's normalizer leaves them."""
        if single.all():
            return self._normalize(items)
        out = list(items)
        at = np.flatnonzero(single).tolist()
        for i, text in zip(at, self._normalize([items[i] for i in at]), strict=True):
            out[i] = text
        at = np.flatnonzero(~single).tolist()
        firsts, seconds = zip(*[items[i] for i in at], strict=True)
        pairs = zip(self._normalize(list(firsts)), self._normalize(list(seconds)), strict=True)
        for i, pair in zip(at, pairs, strict=True):
            out[i] = pair
        return out

    def encode(self, items: list, method: str = "encode_batch_fast", **options: Any) -> list:
        """The tokenizer's ``method`` (encode_batch or encode_batch_fast) on ``items`` (texts or (text, text_pair)
        tuples) with ``options``, every eligible item tokenized by the twin; in input order."""
        encode = getattr(self.tokenizer, method)
        if not items:
            return encode(items, **options)
        single = _singles(items)
        ok = self.eligible(items, single)
        if not ok.any():
            return encode(items, **options)
        fast = np.flatnonzero(ok)
        chosen, single = (items, single) if ok.all() else ([items[i] for i in fast.tolist()], single[fast])
        normalized = self._normalize_items(chosen, single)
        made = self._holds_added(self._flat(normalized, single))  # normalization made an added token's content
        if made.any():
            ok[fast[made]] = False
            fast = fast[~made]
            normalized = [n for n, m in zip(normalized, made.tolist(), strict=True) if not m]
        twin_encode = getattr(self.twin, method)
        if ok.all():
            return twin_encode(normalized, **options)
        slow = np.flatnonzero(~ok)
        out = np.empty(len(items), dtype=object)
        if len(fast):
            out[fast] = twin_encode(normalized, **options)
        out[slow] = encode([items[i] for i in slow.tolist()], **options)
        return out.tolist()


def _singles(items: list) -> np.ndarray:
    """Per item, whether it is a text (not a (text, text_pair) tuple)."""
    return np.fromiter(map(str.__instancecheck__, items), dtype=bool, count=len(items))
