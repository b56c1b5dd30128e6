"""Native tokenization of ASCII texts for BERT-style WordPiece tokenizers (BERT, MiniLM, MPNet, DistilBERT, E5,
BGE, GTE...): the C extension st_runtime._wordpiece writes every text's token ids into one flat array, without the
interpreter lock and without a Python object per text, so tokenization runs on every feed thread at once and
batching reads the ids with array operations (st_runtime.packed).

It applies to a ``tokenizers.Tokenizer`` whose configuration reads: a normalizer whose ASCII form is at most
"delete control characters" and "lowercase" (BertNormalizer, Lowercase, Unicode normalization forms; see
st_runtime.fasttok), BertPreTokenizer, a WordPiece model, and a post-processor that puts fixed ids around a
single text with type id 0 (BERT's and RoBERTa's templates). Which one applies is read from that configuration,
never from a model's name, and the native form is checked against the tokenizer itself on a battery of texts
(every ASCII character, letter cases, control characters, long words, added tokens' contents, truncation) when it
is made: one that differs on any of them is not used. What it leaves to the tokenizer (text pairs, texts with any
non-ASCII character, texts holding an added token's content in any letter case) is tokenized there, and the
results are merged in input order.

Without the compiled extension (an install without a C compiler), ``available()`` is False and every text goes to
the tokenizer: the same ids, slower."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence

import numpy as np

from .fasttok import _battery, ascii_steps
from .packed import Packed

try:
    from ._wordpiece import WordPiece as _WordPiece
except ImportError:  # built without a C compiler: the tokenizer alone
    _WordPiece = None  # type: ignore[assignment, misc]

logger = logging.getLogger(__name__)
_NATIVE_STEPS = {("clean",), ("lower",)}


def available() -> bool:
    """Whether the compiled extension is installed (st-runtime then tokenizes WordPiece models natively)."""
    return _WordPiece is not None


class NativeWordPiece:
    """A tokenizer's native form (see the module docstring); ``make`` returns None where none applies."""

    def __init__(self, core, budget: int, left: bool, head: list[int], tail: list[int], special_count: int):
        self.core = core
        self.left = left
        # with the special tokens, and without them (add_special_tokens=False): (budget, head, tail)
        self._forms = {
            True: (budget - special_count if budget >= 0 else -1, head, tail),
            False: (budget, [], []),
        }

    @classmethod
    def make(cls, tokenizer) -> NativeWordPiece | None:
        """The native form of a ``tokenizers.Tokenizer`` (with the truncation set on it), or None."""
        if _WordPiece is None:
            _say_not_built()
            return None
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            return None
        config = json.loads(tokenizer.to_str())
        model = config.get("model") or {}
        steps = ascii_steps(config.get("normalizer"))
        if (
            model.get("type") != "WordPiece"
            or (config.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer"
            or steps is None
            or not set(steps) <= _NATIVE_STEPS
        ):
            return None
        frame = _frame(tokenizer)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        unk = vocab.get(str(model.get("unk_token")))
        if frame is None or unk is None:
            return None
        head, tail = frame
        budget, left = -1, False
        truncation = tokenizer.truncation
        if truncation is not None:
            budget, left = int(truncation["max_length"]), truncation["direction"] == "left"
            if budget < len(head) + len(tail):
                return None
        core = _WordPiece(
            vocab,
            int(unk),
            str(model.get("continuing_subword_prefix") or ""),
            int(model.get("max_input_chars_per_word", 100)),
            ("lower",) in steps,
            ("clean",) in steps,
            _added_forms(tokenizer),
        )
        native = cls(core, budget, left, head, tail, len(head) + len(tail))
        return native if native._agrees(tokenizer) else None

    def encode(self, texts: list, add_special_tokens: bool = True, threads: int = 1) -> tuple[Packed, np.ndarray]:
        """(the tokenized texts, which of them it tokenized): the others (not texts, not ASCII, or holding an
        added token's content) have no ids here and are left to the tokenizer. A large call is tokenized in
        contiguous parts on up to ``threads`` threads of the extension's own."""
        budget, head, tail = self._forms[add_special_tokens]
        ids, lengths, ok = self.core.encode(texts, budget, self.left, head, tail, threads)
        counts = np.frombuffer(lengths, dtype=np.int64)
        bounds = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        return Packed(np.frombuffer(ids, dtype=np.int32), bounds), np.frombuffer(ok, dtype=np.bool_)

    def encode_all(
        self, fallback: Callable[[list], Sequence], items: list, add_special_tokens: bool = True, threads: int = 1
    ) -> Packed:
        """Every item tokenized: natively where it can be, the rest by ``fallback`` (the tokenizer), in order."""
        packed, ok = self.encode(items, add_special_tokens, threads)
        if ok.all():
            return packed
        rest = np.flatnonzero(~ok)
        others = Packed.of(fallback([items[i] for i in rest.tolist()]))
        done = np.flatnonzero(ok)
        return Packed.scatter(len(items), [(done, packed.take(done)), (rest, others)])

    def _agrees(self, tokenizer) -> bool:
        texts = [
            *_battery(),
            "[MASK] [mask] [Mask]ed x[cls]y <s> </s> <mask>",
            "a[UN\x00K]b",
            "pre##fix ## #word ##",
            " ".join(["tokenization", "unaffable", "qwertyuiopasdfgh", "x" * 101, "y" * 100]) * 40,
        ]
        for specials in (True, False):
            packed, ok = self.encode(texts, specials)
            theirs = tokenizer.encode_batch(texts, add_special_tokens=specials)
            for i in np.flatnonzero(ok).tolist():
                mine, enc = packed[i], theirs[i]
                if mine.ids != enc.ids or any(enc.type_ids) or not all(enc.attention_mask):
                    logger.debug("native tokenization differs from the tokenizer on %r: not used", texts[i][:80])
                    return False
        return True


@functools.cache
def _say_not_built() -> None:
    logger.info(
        "st_runtime._wordpiece is not built (installed without a C compiler): WordPiece models are tokenized by "
        "`tokenizers` alone, with the same ids but slower; reinstall st-runtime where gcc or clang is available."
    )


def _frame(tokenizer) -> tuple[list[int], list[int]] | None:
    """(the ids before a single text, the ids after it) that the post-processor adds; None where it does anything
    else to it (type ids other than 0, or ids not around the text)."""
    probe = "a"  # one token, so that a short truncation keeps it
    bare = tokenizer.encode(probe, add_special_tokens=False).ids
    full = tokenizer.encode(probe)
    if any(full.type_ids) or not bare:
        return None
    ids = full.ids
    for at in range(len(ids) - len(bare) + 1):
        if ids[at : at + len(bare)] == bare:
            return ids[:at], ids[at + len(bare) :]
    return None


def _added_forms(tokenizer) -> list[str]:
    """Added tokens' contents in the forms an ASCII text can hold them: as they are and as the normalizer leaves
    them, each lowercased (the extension matches them in any letter case); forms that are not ASCII cannot occur."""
    normalizer = tokenizer.normalizer
    forms: set[str] = set()
    for token in tokenizer.get_added_tokens_decoder().values():
        content = token.content
        candidates = [content] + ([normalizer.normalize_str(content)] if normalizer is not None else [])
        forms.update(c.lower() for c in candidates if c and c.isascii())
    return sorted(forms, key=len, reverse=True)
