"""Batch policy and batch building: how many texts go into one graph run, how wide it is padded, and the
padded int64 arrays fed to the graph (the exporter's int8 calibration builds its feeds with the same code)."""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

import numpy as np

from .packed import Packed

_IDS = operator.attrgetter("ids")
_TYPES = operator.attrgetter("type_ids")

# GPU batches (batch_size=None): up to 1024 texts and 131,072 padded tokens: large enough to keep the device
# busy on short queries, small enough that long passages do not slow down (the sweep that chose them is
# benchmarks/gpu_sweep.py; docs/speed.md gives its figures, with the machine and date).
GPU_BATCH_SIZE = 1024
GPU_BATCH_TOKENS = 131072
# CPU batches: up to 2048 tokens (items x padded width), where long texts run faster in small batches
# (their activations stay in cache); short queries then go 100+ to a batch. st-export measures better budgets
# per variant where it can (cpu_batching).
CPU_BATCH_SIZE = 1024
CPU_BATCH_TOKENS = 2048
# Batches at least this wide are "long" for the batch budgets st-export measures per variant (cpu_batching).
LONG_FROM = 64
# GPU: texts tokenized per chunk while the device runs the previous chunk (tokenization overlaps device work)
GPU_TOKENIZE_CHUNK = 4096


@dataclass
class BatchPolicy:
    """How a tower cuts its inputs into batches on its device.

    ``auto_batch_size``: texts per batch when the caller passes ``batch_size=None``; ``max_batch_tokens``:
    the cap on items x padded width (an explicit batch size is capped by it too); ``pad_multiple``: widths
    are rounded up to it (GPUs like multiples of 8; on the CPU padding is waste); ``pipeline_chunk``:
    texts tokenized per chunk while the previous chunk runs (None: everything is tokenized first, as on the
    CPU, whose cores run the graph)."""

    auto_batch_size: int
    max_batch_tokens: int | None
    pad_multiple: int
    pipeline_chunk: int | None
    # the budget of batches at least ``long_from`` tokens wide (None: max_batch_tokens for every width)
    long_batch_tokens: int | None = None
    long_from: int = LONG_FROM

    @classmethod
    def for_device(cls, on_gpu: bool, measured: dict | None = None) -> BatchPolicy:
        """The device's policy; on the CPU, the budgets st-export measured for the variant (``cpu_batching`` in
        its manifest entry) where there are some."""
        if on_gpu:
            return cls(GPU_BATCH_SIZE, GPU_BATCH_TOKENS, 8, GPU_TOKENIZE_CHUNK)
        measured = measured or {}
        return cls(
            CPU_BATCH_SIZE,
            int(measured.get("short_tokens", CPU_BATCH_TOKENS)),
            1,
            None,
            measured.get("long_tokens"),
            int(measured.get("long_from", LONG_FROM)),
        )

    def budget(self, width: int) -> int | None:
        """The most padded tokens a batch of this width may hold."""
        if self.long_batch_tokens is not None and width >= self.long_from:
            return self.long_batch_tokens
        return self.max_batch_tokens

    def pipeline_items(self, batch_size: int) -> int | None:
        """Texts per tokenization chunk (None: tokenize everything first). Chunks of at least four batches
        keep length sorting effective within each chunk."""
        if self.pipeline_chunk is None:
            return None
        return max(self.pipeline_chunk, 4 * batch_size)


def longest_first(lengths: np.ndarray) -> np.ndarray:
    """The indices of items from the most tokens to the fewest, equal lengths in input order (a stable sort): the
    order every tower batches in. Token counts up to 32,767 are sorted as 16-bit keys, which numpy sorts by radix:
    8x faster than 64-bit keys on 2,048 texts, the same order."""
    lengths = np.asarray(lengths)
    if len(lengths) and int(lengths.max()) <= np.iinfo(np.int16).max and int(lengths.min()) >= 0:
        return np.argsort(-lengths.astype(np.int16), kind="stable")
    return np.argsort(-lengths.astype(np.int64), kind="stable")


def plan_batches(
    sorted_lengths: np.ndarray,
    batch_size: int,
    pad_multiple: int = 1,
    split_ratio: float = 0.5,
    max_tokens: int | None = None,
    max_width: int | None = None,
    budget=None,
) -> list[tuple[int, int, int]]:
    """Split items sorted by decreasing token length into (start, end, padded width) batches.

    A batch holds at most ``batch_size`` items, and a new batch starts when the next item is shorter
    than ``split_ratio`` of the batch's width, so no batch spends most of its compute on padding
    (and int8 graphs, whose activation ranges are per batch, never mix a 3-token query with a
    256-token passage). Widths are rounded up to ``pad_multiple``, but not past ``max_width`` (the
    tokenizer's limit: a model's position table can end there, as CLIP's 77). ``max_tokens`` also caps
    items x padded width per batch (long texts run faster in smaller batches: their activations stay
    in cache); ``budget(width)``, where given, sets that cap per batch instead (BatchPolicy.budget).
    """
    out: list[tuple[int, int, int]] = []
    lengths = np.asarray(sorted_lengths, dtype=np.int64)
    n = len(lengths)
    descending = -lengths  # ascending: where a floor falls is one binary search (no loop over the items)
    start = 0
    while start < n:
        width = max(int(lengths[start]), 1)
        padded = -(-width // pad_multiple) * pad_multiple
        if max_width is not None:
            padded = min(padded, max(width, max_width))
        limit = min(n, start + batch_size)
        cap = budget(padded) if budget is not None else max_tokens
        if cap is not None:
            limit = min(limit, start + max(1, cap // padded))
        # the items at least split_ratio of this width are a prefix of the rest (lengths decrease)
        reach = int(np.searchsorted(descending, -(width * split_ratio), side="right"))
        end = min(limit, max(start + 1, reach))
        out.append((start, end, padded))
        start = end
    return out


def graph_width(width: int, limit: int | None) -> int:
    """Padded width of a batch under CUDA graphs: a multiple of 8 below 128 tokens (as without graphs), then
    of an eighth of the power of two below the width (padding at most an eighth of the width), so a few
    dozen widths cover any length; never past ``limit`` (the longest the tokenizer emits: position tables
    can end there, as CLIP's 77)."""
    step = max(8, 1 << max(0, width.bit_length() - 4))
    padded = -(-width // step) * step
    return padded if limit is None else min(padded, max(width, limit))


def build_feeds(
    encodings,
    lengths: np.ndarray,
    idx: np.ndarray,
    width: int,
    inputs: list[str],
    pad_id: int,
    zero_types: bool = False,
    padding_side: str = "right",
) -> dict[str, np.ndarray]:
    """The padded [rows, width] int64 arrays of the tokenized items ``idx`` for the graph's ``inputs``; built
    with one pass over their token ids, read by C (each row's tokens fill a prefix of it, or with
    ``padding_side="left"`` a suffix, as decoder models such as Qwen3-Embedding pad; either way a boolean mask
    scatters the concatenation in place, row by row in order). ``zero_types``: the token type ids are known to
    be all zero (single texts), so they are not read back per item."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    typed = "token_type_ids" in inputs
    if isinstance(encodings, Packed):  # flat ids: written by C (or one numpy gather)
        ids, attention, types = encodings.padded(idx, width, pad_id, padding_side == "left", typed and not zero_types)
        if typed and types is None:
            types = np.zeros((len(idx), width), dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": attention}
        if types is not None:
            feeds["token_type_ids"] = types
        return {k: feeds[k] for k in inputs}
    lens = lengths[idx]
    columns = np.arange(width)
    mask = columns >= width - lens[:, None] if padding_side == "left" else columns < lens[:, None]
    total = int(lens.sum())
    chosen = [encodings[i] for i in idx.tolist()] if len(idx) < 2 else operator.itemgetter(*idx.tolist())(encodings)
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(itertools.chain.from_iterable(map(_IDS, chosen)), dtype=np.int64, count=total)
    feeds = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
    if typed:
        types = np.zeros((len(idx), width), dtype=np.int64)
        if not zero_types:
            types[mask] = np.fromiter(itertools.chain.from_iterable(map(_TYPES, chosen)), dtype=np.int64, count=total)
        feeds["token_type_ids"] = types
    return {k: feeds[k] for k in inputs}


def build_all_feeds(
    encodings,
    lengths: np.ndarray,
    order: np.ndarray,
    plan: list[tuple[int, int, int]],
    inputs: list[str],
    pad_id: int,
    zero_types: bool = False,
    padding_side: str = "right",
    threads: int = 1,
) -> list[dict[str, np.ndarray]]:
    """``build_feeds`` for every batch of ``plan`` ((start, end, width) over ``order``); Packed encodings are written
    by C, on up to ``threads`` threads at once where the plan is large."""
    if not isinstance(encodings, Packed):
        return [
            build_feeds(encodings, lengths, order[s:e], w, inputs, pad_id, zero_types, padding_side) for s, e, w in plan
        ]
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    typed = "token_type_ids" in inputs
    arrays = encodings.padded_batches(order, plan, pad_id, padding_side == "left", typed and not zero_types, threads)
    out = []
    for (ids, attention, types), (s, e, w) in zip(arrays, plan, strict=True):
        feeds = {"input_ids": ids, "attention_mask": attention}
        if typed:
            feeds["token_type_ids"] = types if types is not None else np.zeros((e - s, w), dtype=np.int64)
        out.append({k: feeds[k] for k in inputs})
    return out


def token_counts(encodings) -> np.ndarray:
    """Each encoding's token count, as int64 (read by C, not by a Python loop)."""
    if isinstance(encodings, Packed):
        return encodings.lengths
    return np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
