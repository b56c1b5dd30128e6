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
@given(st.lists(st.integers(1, 512), max_size=300), st.integers(1, 64), st.sampled_from([1, 8]),
       st.sampled_from([None, 64, 2048]))
def test_plan_covers_everything_once(lengths, batch_size, multiple, max_tokens):
    lens = np.sort(np.asarray(lengths, dtype=np.int64))[::-1]
    plan = plan_batches(lens, batch_size, multiple, max_tokens=max_tokens)
    assert [p[0] for p in plan] == ([0] + [p[1] for p in plan[:-1]] if plan else [])
    assert (plan[-1][1] if plan else 0) == len(lens)
    for start, end, width in plan:
        assert 1 <= end - start <= batch_size
        assert width % multiple == 0 and width >= lens[start] and width - lens[start] < multiple
        assert lens[end - 1] >= lens[start] * 0.5  # no batch is mostly padding
        if max_tokens is not None and end - start > 1:
            assert (end - start) * width <= max_tokens


def test_plan_splits_queries_from_passages():
    plan = plan_batches(np.array([256, 250, 12, 10, 3]), 32)
    assert [(s, e) for s, e, _ in plan] == [(0, 2), (2, 4), (4, 5)]


def test_plan_token_budget_makes_long_batches_smaller():
    plan = plan_batches(np.array([200] * 20 + [10] * 100), 32, max_tokens=2048)
    assert [e - s for s, e, _ in plan] == [10, 10, 32, 32, 32, 4]


def test_io_binding_path_gives_same_result_and_reuses_buffers(tiny_bert, zoo):
    """The IO-binding runner (used on CUDA) exercised on the CPU device: same results, one set of buffers per
    batch shape, and a later batch in the same buffers does not change an earlier batch's result."""
    ref = zoo.reference(tiny_bert[0]).encode(TEXTS)
    enc = SentenceEncoder(tiny_bert[1], io_binding=True)
    runner = enc._text.runner
    assert type(runner).__name__ == "_BoundRunner" and not runner.graphs
    first = enc.encode(TEXTS[:2], batch_size=2)
    assert_parity(ref, enc.encode(TEXTS, batch_size=3))
    assert_parity(ref, enc.encode(TEXTS, batch_size=3))
    shapes = [dict((k, shape) for k, shape, _ in key)["input_ids"] for key in runner.slots]
    assert len(shapes) == len(set(shapes)) <= len(TEXTS)
    np.testing.assert_array_equal(first, enc.encode(TEXTS[:2], batch_size=2))


def test_cuda_graph_runner_buckets_rows_and_caps_graphs(tiny_bert, zoo, monkeypatch):
    """The CUDA-graph mode of the runner on the CPU device (onnxruntime's CPU provider ignores the graph
    ids): rows are padded to powers of two and sliced back, each shape gets its own graph id, and past the
    cap batches run uncaptured, all with unchanged results."""
    from st_runtime.encoder import _BoundRunner

    ref = zoo.reference(tiny_bert[0]).encode(TEXTS)
    enc = SentenceEncoder(tiny_bert[1])
    tower = enc._text
    tower.runner = _BoundRunner(tower.session, tower.output, "cpu", graphs=True, dim=enc._dim)
    assert_parity(ref, enc.encode(TEXTS, batch_size=3))
    rows = [dict((k, shape) for k, shape, _ in key)["input_ids"][0] for key in tower.runner.slots]
    assert rows and all(r & (r - 1) == 0 for r in rows) and 4 in rows  # 3 texts ran as 4 rows
    ids = [s.run_options.get_run_config_entry("gpu_graph_id") for s in tower.runner.slots.values()]
    assert ids == [str(i) for i in range(1, len(ids) + 1)]
    monkeypatch.setattr(_BoundRunner, "MAX_GRAPHS", 1)
    tower.runner = _BoundRunner(tower.session, tower.output, "cpu", graphs=True, dim=enc._dim)
    assert_parity(ref, enc.encode(TEXTS, batch_size=1))
    assert len(tower.runner.slots) == 1 and tower.runner.uncaptured == len(TEXTS) - 1


def test_cuda_graphs_need_the_cuda_provider(tiny_bert):
    with pytest.raises(ValueError, match="cuda_graphs=True needs the CUDA execution provider"):
        SentenceEncoder(tiny_bert[1], cuda_graphs=True)


@pytest.mark.parametrize("bs", [1, 2, 5, 64])
def test_many_batches_restore_input_order(tiny_bert, bs):
    enc = SentenceEncoder(tiny_bert[1])
    texts = TEXTS * 7
    rows = np.stack([enc.encode(t) for t in texts])
    np.testing.assert_allclose(enc.encode(texts, batch_size=bs), rows, atol=2e-6)


class _OOMOnBigBatches:
    """Stands in for a CUDA runner that runs out of memory above 2 rows."""

    def __init__(self, runner):
        self.runner = runner
        self.rows = []

    def __call__(self, feeds):
        rows = next(iter(feeds.values())).shape[0]
        self.rows.append(rows)
        if rows > 2:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for "
                               "requested buffer of size 123456 (BFCArena)")
        return self.runner(feeds)


def test_out_of_memory_on_gpu_halves_the_batch_and_warns_once(tiny_bert):
    enc = SentenceEncoder(tiny_bert[1])
    expected = enc.encode(TEXTS)
    fake = _OOMOnBigBatches(enc._text.runner)
    enc._text.runner = fake
    enc._text.on_gpu = True  # as on CUDA
    with pytest.warns(RuntimeWarning, match="ran out of memory") as record:
        got = enc.encode(TEXTS, batch_size=8)
    assert len([w for w in record if "ran out of memory" in str(w.message)]) == 1
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert max(r for r in fake.rows if r <= 2) <= 2 and any(r > 2 for r in fake.rows)


def test_out_of_memory_on_cpu_is_not_hidden(tiny_bert):
    enc = SentenceEncoder(tiny_bert[1])
    enc._text.runner = _OOMOnBigBatches(enc._text.runner)
    with pytest.raises(RuntimeError, match="Failed to allocate"):
        enc.encode(TEXTS, batch_size=8)


class _Recorder:
    def __init__(self, runner):
        self.runner = runner
        self.shapes = []

    def __call__(self, feeds):
        self.shapes.append(feeds["input_ids"].shape)
        return self.runner(feeds)


def test_default_batch_size_is_a_token_budget_on_cpu(tiny_bert):
    """batch_size=None (the default): short texts go 100+ to a batch, long ones fewer, within 2048 tokens."""
    enc = SentenceEncoder(tiny_bert[1])
    texts = [f"query number {i} about {TEXTS[i % len(TEXTS)][:30]}" for i in range(400)]
    explicit = enc.encode(texts, batch_size=32)
    rec = _Recorder(enc._text.runner)
    enc._text.runner = rec
    np.testing.assert_allclose(enc.encode(texts), explicit, atol=2e-6)
    assert max(rows for rows, _ in rec.shapes) > 32
    assert all(rows * width <= enc._text.max_batch_tokens for rows, width in rec.shapes)
    rec.shapes.clear()
    enc.encode(texts, batch_size=32)
    assert max(rows for rows, _ in rec.shapes) == 32
