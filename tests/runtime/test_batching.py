"""Length-sorted batching: plans cover every item once, in order, and never mix very different lengths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TEXTS, assert_parity
from st_runtime import SentenceEncoder
from st_runtime.encoder import plan_batches


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 512), max_size=300), st.integers(1, 64), st.sampled_from([1, 8]))
def test_plan_covers_everything_once(lengths, batch_size, multiple):
    lens = np.sort(np.asarray(lengths, dtype=np.int64))[::-1]
    plan = plan_batches(lens, batch_size, multiple)
    assert [p[0] for p in plan] == ([0] + [p[1] for p in plan[:-1]] if plan else [])
    assert (plan[-1][1] if plan else 0) == len(lens)
    for start, end, width in plan:
        assert 1 <= end - start <= batch_size
        assert width % multiple == 0 and width >= lens[start] and width - lens[start] < multiple
        assert lens[end - 1] >= lens[start] * 0.5  # no batch is mostly padding


def test_plan_splits_queries_from_passages():
    plan = plan_batches(np.array([256, 250, 12, 10, 3]), 32)
    assert [(s, e) for s, e, _ in plan] == [(0, 2), (2, 4), (4, 5)]


def test_io_binding_path_gives_same_result(tiny_bert, zoo):
    """The IO-binding runner (used on CUDA) exercised on the CPU device."""
    ref = zoo.reference(tiny_bert[0]).encode(TEXTS)
    enc = SentenceEncoder(tiny_bert[1], io_binding=True)
    assert type(enc._text.runner).__name__ == "_IOBindingRunner"
    assert_parity(ref, enc.encode(TEXTS, batch_size=3))


@pytest.mark.parametrize("bs", [1, 2, 5, 64])
def test_many_batches_restore_input_order(tiny_bert, bs):
    enc = SentenceEncoder(tiny_bert[1])
    texts = TEXTS * 7
    rows = np.stack([enc.encode(t) for t in texts])
    np.testing.assert_allclose(enc.encode(texts, batch_size=bs), rows, atol=2e-6)
