"""Length-sorted batching: plans cover every item once, in order, and never mix very different lengths."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXTS, assert_parity
from hypothesis import given, settings
from hypothesis import strategies as st

from st_runtime import SentenceEncoder
from st_runtime.batching import longest_first, plan_batches


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 512), max_size=300),
    st.integers(1, 64),
    st.sampled_from([1, 8]),
    st.sampled_from([None, 64, 2048]),
    st.sampled_from([None, 77, 512]),
)
def test_plan_covers_everything_once(lengths, batch_size, multiple, max_tokens, max_width):
    lens = np.sort(np.asarray(lengths, dtype=np.int64))[::-1]
    if max_width is not None:
        lens = np.minimum(lens, max_width)  # the tokenizer truncates there
    plan = plan_batches(lens, batch_size, multiple, max_tokens=max_tokens, max_width=max_width)
    assert [p[0] for p in plan] == ([0] + [p[1] for p in plan[:-1]] if plan else [])
    assert (plan[-1][1] if plan else 0) == len(lens)
    for start, end, width in plan:
        assert 1 <= end - start <= batch_size
        assert width >= lens[start] and width - lens[start] < multiple
        assert width % multiple == 0 or width == max_width  # CLIP's 77 positions: never padded past them
        assert lens[end - 1] >= lens[start] * 0.5  # no batch is mostly padding
        if max_tokens is not None and end - start > 1:
            assert (end - start) * width <= max_tokens


@given(st.lists(st.integers(0, 70000), max_size=300), st.integers(0, 40000))
@settings(max_examples=200, deadline=None)
def test_longest_first_is_the_stable_descending_order(lengths, cap):
    """The 16-bit radix sort gives the order of a stable sort of the 64-bit lengths: ties in input order, and token
    counts past 32,767 (untruncated texts) sorted right too."""
    arr = np.minimum(np.asarray(lengths, dtype=np.int64), cap)
    order = longest_first(arr)
    assert order.dtype == np.intp and len(order) == len(arr)
    np.testing.assert_array_equal(order, np.argsort(-arr, kind="stable"))


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
    runner = enc.text_tower.runner
    assert type(runner).__name__ == "BoundRunner" and not runner.graphs
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
    from st_runtime.runners import BoundRunner

    ref = zoo.reference(tiny_bert[0]).encode(TEXTS)
    enc = SentenceEncoder(tiny_bert[1])
    tower = enc.text_tower
    tower.cuda_graphs = True  # as SentenceEncoder(cuda_graphs=True) sets it on CUDA
    tower.runner = BoundRunner(tower.session, tower.output, "cpu", graphs=True, dim=enc._dim)
    assert_parity(ref, enc.encode(TEXTS, batch_size=3))
    from st_runtime.batching import graph_width

    shapes = [dict((k, shape) for k, shape, _ in key)["input_ids"] for key in tower.runner.slots]
    rows = [r for r, _ in shapes]
    assert rows and all(r & (r - 1) == 0 for r in rows) and 4 in rows  # 3 texts ran as 4 rows
    assert all(w == graph_width(w, enc.max_seq_length) for _, w in shapes)
    ids = [s.run_options.get_run_config_entry("gpu_graph_id") for s in tower.runner.slots.values()]
    assert ids == [str(i) for i in range(1, len(ids) + 1)]
    monkeypatch.setattr(BoundRunner, "MAX_GRAPHS", 1)
    monkeypatch.setattr(BoundRunner, "MAX_SLOTS", 2)
    tower.runner = BoundRunner(tower.session, tower.output, "cpu", graphs=True, dim=enc._dim)
    assert_parity(ref, enc.encode(TEXTS, batch_size=1))
    runner = tower.runner
    ids = [s.graph_id for s in runner.slots.values()]
    assert ids[0] == 1 and ids[1:] == [-1, -1]  # the captured shape stays; the others are a 2-shape LRU
    shapes = {graph_width(len(enc.tokenizer.encode(t)), enc.max_seq_length) for t in TEXTS}
    assert len(shapes) > 3 and runner.uncaptured == len(shapes) - 1


def test_failed_cuda_graph_capture_warns_once_and_runs_uncaptured(tiny_bert, zoo):
    """A shape whose capture fails (a kernel onnxruntime cannot capture) is rerun without a graph, with
    one warning, and keeps running without one; a genuine error still raises."""
    from st_runtime.runners import BoundRunner

    ref = zoo.reference(tiny_bert[0]).encode(TEXTS)
    enc = SentenceEncoder(tiny_bert[1])
    tower = enc.text_tower
    tower.cuda_graphs = True
    tower.runner = runner = BoundRunner(tower.session, tower.output, "cpu", graphs=True, dim=enc._dim)
    real = tower.session.run_with_iobinding
    calls = []

    def flaky(binding, options):
        calls.append(options.get_run_config_entry("gpu_graph_id"))
        if calls[-1] not in ("-1",):
            raise RuntimeError(
                "[ONNXRuntimeError] : 1 : FAIL : CUDA failure 901: operation not permitted when stream is capturing"
            )
        return real(binding, options)

    tower.session.run_with_iobinding = flaky
    try:
        with pytest.warns(RuntimeWarning, match="could not capture a CUDA graph") as record:
            got = enc.encode(TEXTS, batch_size=4)
        assert len([w for w in record if "could not capture" in str(w.message)]) == 1
        assert_parity(ref, got)
        assert all(s.graph_id == -1 and s.captured for s in runner.slots.values())
        assert runner.uncaptured == len(runner.slots)
        calls.clear()
        assert_parity(ref, enc.encode(TEXTS, batch_size=4))
        assert set(calls) == {"-1"}  # no capture attempts any more
    finally:
        tower.session.run_with_iobinding = real


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
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for "
                "requested buffer of size 123456 (BFCArena)"
            )
        return self.runner(feeds)


def test_out_of_memory_on_gpu_halves_the_batch_and_warns_once(tiny_bert):
    enc = SentenceEncoder(tiny_bert[1])
    expected = enc.encode(TEXTS)
    fake = _OOMOnBigBatches(enc.text_tower.runner)
    enc.text_tower.runner = fake
    enc.text_tower.on_gpu = True  # as on CUDA
    with pytest.warns(RuntimeWarning, match="ran out of memory") as record:
        got = enc.encode(TEXTS, batch_size=8)
    assert len([w for w in record if "ran out of memory" in str(w.message)]) == 1
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert max(r for r in fake.rows if r <= 2) <= 2 and any(r > 2 for r in fake.rows)


def test_out_of_memory_on_cpu_is_not_hidden(tiny_bert):
    enc = SentenceEncoder(tiny_bert[1])
    enc.text_tower.runner = _OOMOnBigBatches(enc.text_tower.runner)
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
    rec = _Recorder(enc.text_tower.runner)
    enc.text_tower.runner = rec
    np.testing.assert_allclose(enc.encode(texts), explicit, atol=2e-6)
    assert max(rows for rows, _ in rec.shapes) > 32
    assert all(rows * width <= enc.text_tower.policy.budget(width) for rows, width in rec.shapes)
    rec.shapes.clear()
    enc.encode(texts, batch_size=32)
    assert max(rows for rows, _ in rec.shapes) == 32


def test_graph_widths_are_few_and_stay_within_the_tokenizer_limit():
    from st_runtime.batching import graph_width

    widths = [graph_width(w, 256) for w in range(1, 257)]
    assert all(w <= g <= 256 and g - w <= max(7, w // 8) for w, g in zip(range(1, 257), widths))
    assert len(set(widths)) <= 24
    assert graph_width(75, 77) == 77 and graph_width(7, 77) == 8  # CLIP: not past its 77 positions
    assert graph_width(300, 256) >= 300  # an over-long batch (never made by the tokenizer) is not cut


def test_capture_gate_runs_a_capture_alone_and_does_not_starve_it():
    """Runs overlap each other; a capture waits for the runs in flight, holds new ones back, and runs alone."""
    import threading
    import time

    from st_runtime.runners import CaptureGate

    gate = CaptureGate()
    active, log, lock = [], [], threading.Lock()

    def job(kind, seconds):
        def fn():
            with lock:
                active.append(kind)
                log.append(tuple(active))
            time.sleep(seconds)
            with lock:
                active.remove(kind)

        return fn

    def until(cond):
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.002)

    runs = [threading.Thread(target=gate.run, args=(job("run", 0.3),)) for _ in range(3)]
    for t in runs:
        t.start()
    until(lambda: len(active) == 3)
    cap = threading.Thread(target=gate.run, args=(job("capture", 0.1),), kwargs={"capture": True})
    cap.start()
    until(lambda: gate._waiting == 1)
    late = threading.Thread(target=gate.run, args=(job("late", 0.01),))  # arrives while the capture waits
    late.start()
    for t in [*runs, cap, late]:
        t.join(10)
    assert log[:3] == [("run",), ("run", "run"), ("run", "run", "run")]  # ordinary runs overlap
    assert log[3:] == [("capture",), ("late",)]  # the capture ran alone, and the late run waited for it


@pytest.mark.parametrize("bs", [1, 3])
def test_pipelined_tokenization_gives_the_same_rows_in_order(tiny_bert, bs):
    """On a GPU the next chunk of texts is tokenized while the current one runs (pipeline_chunk): the
    result is the same embeddings in input order, whatever the chunk boundaries."""
    enc = SentenceEncoder(tiny_bert[1])
    texts = [TEXTS[(i * 7) % len(TEXTS)] * (1 + i % 3) for i in range(101)] + ["x", "word " * 600]
    expected = enc.encode(texts, batch_size=bs)
    tokenized = []
    real = enc.text_tower.tokenizer

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def encode_batch(self, items):
            tokenized.append(len(items))
            return real.encode_batch(items)

        encode_batch_fast = encode_batch

    tower = enc.text_tower
    tower.tokenizers.entry = lambda max_len, direction=None: (Spy(), None, None)  # the tokenizer alone
    enc.text_tower.policy.pipeline_chunk = 10  # chunks of max(10, 4 * batch size) texts
    got = enc.encode(texts, batch_size=bs)
    chunk = enc.text_tower.policy.pipeline_items(bs)
    assert chunk == max(10, 4 * bs) and len(tokenized) == -(-len(texts) // chunk) > 1
    assert sum(tokenized) == len(texts) and max(tokenized) == chunk
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_token_type_ids_of_pairs_and_of_templates_that_set_them_are_fed(tiny_bert, zoo, tmp_path):
    """Batches of single texts skip reading back token type ids when the template makes them zero; a call with
    a pair reads them (the pair matches sentence-transformers), and a template giving single texts type id 1
    is noticed at load."""
    import shutil

    enc = SentenceEncoder(tiny_bert[1])
    assert enc.text_tower.single_types_zero
    pair = (TEXTS[3], TEXTS[4])
    mixed = enc.encode([*TEXTS[:3], pair])
    np.testing.assert_allclose(mixed[:3], enc.encode(TEXTS[:3]), atol=2e-6)
    assert_parity(zoo.reference(tiny_bert[0]).encode([pair]), mixed[3:], 0.99999)
    copy = tmp_path / "types-one"
    shutil.copytree(tiny_bert[1], copy)
    tok = (copy / "tokenizer.json").read_text()
    head, sep, tail = tok.partition('"pair"')  # the single-text template comes first: same file size after
    (copy / "tokenizer.json").write_text(head.replace('"type_id": 0', '"type_id": 1') + sep + tail)
    ones = SentenceEncoder(copy, verify_checksums=False)
    assert not ones.text_tower.single_types_zero
    assert not np.allclose(ones.encode(TEXTS[:3]), mixed[:3], atol=1e-4)


def test_measured_budgets_apply_per_width_class():
    """A variant's measured cpu_batching: short batches under their budget, batches from long_from tokens wide
    under theirs; without measurements, the default budget for every width."""
    from st_runtime.batching import CPU_BATCH_TOKENS, BatchPolicy

    policy = BatchPolicy.for_device(False, {"short_tokens": 512, "long_tokens": 4096, "long_from": 64})
    lens = np.array([200] * 40 + [10] * 200)
    plan = plan_batches(lens, 1024, budget=policy.budget)
    assert all((e - s) * w <= (4096 if w >= 64 else 512) for s, e, w in plan)
    assert max(e - s for s, e, w in plan if w == 200) == 4096 // 200
    assert max(e - s for s, e, w in plan if w == 10) == 512 // 10
    default = BatchPolicy.for_device(False)
    assert default.budget(10) == default.budget(500) == CPU_BATCH_TOKENS
    assert BatchPolicy.for_device(True, {"short_tokens": 1}).budget(10) > 1  # GPUs keep their own policy


@pytest.mark.parametrize("side", ["left", "right"])
def test_feeds_pad_on_the_side_the_manifest_names(tiny_bert, tmp_path, side):
    """A manifest with padding_side "left" (Qwen3-Embedding's tokenizer) gets its pad ids and attention-mask zeros
    first in every row, in st_runtime's tokenize and in the batches encode builds; "right" (the default) last."""
    import json
    import shutil

    from st_runtime.batching import build_feeds

    folder = shutil.copytree(tiny_bert[1], tmp_path / "export")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["towers"]["text"]["tokenizer"]["padding_side"] = side
    (folder / "manifest.json").write_text(json.dumps(manifest))
    enc = SentenceEncoder(folder)
    assert enc.text_tower.padding_side == side
    texts = ["a", "How big is London", "London has 9,787,426 inhabitants at the 2011 census."]
    feeds = enc.tokenize(texts)
    alone = [enc.tokenize([t])["input_ids"][0] for t in texts]
    width = feeds["input_ids"].shape[1]
    for row, mask, ids in zip(feeds["input_ids"], feeds["attention_mask"], alone):
        n = len(ids)
        real = slice(width - n, width) if side == "left" else slice(0, n)
        pads = slice(0, width - n) if side == "left" else slice(n, width)
        assert (row[real] == ids).all() and mask[real].all()
        assert (row[pads] == enc.text_tower.pad_id).all() and not mask[pads].any()
    assert (feeds["token_type_ids"][feeds["attention_mask"] == 0] == 0).all()
    encodings = enc.text_tower.tokenize(texts)
    lengths = np.array([len(e) for e in encodings])
    with pytest.raises(ValueError, match="padding_side must be"):
        build_feeds(encodings, lengths, np.arange(3), width, ["input_ids"], 0, padding_side="middle")


def test_batch_plans_are_those_of_the_item_loop():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ (also in the slim venv)
    from benchmarks.feed import legacy_plan

    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(0, 400))
        lengths = np.sort(rng.integers(0, int(rng.choice([3, 40, 600])), n))[::-1]
        args = (int(rng.integers(1, 300)), int(rng.choice([1, 8])), float(rng.choice([0.5, 0.3, 1.0])))
        tokens = rng.choice([None, 64, 2048, 16384])
        width = rng.choice([None, 48, 512])
        assert plan_batches(lengths, *args, max_tokens=tokens, max_width=width) == legacy_plan(
            lengths, *args, max_tokens=tokens, max_width=width
        )


@pytest.mark.parametrize("side", ["right", "left"])
def test_feeds_hold_each_items_ids_and_types_padded_on_its_side(side):
    from tokenizers import Tokenizer

    from st_runtime.batching import build_feeds, token_counts

    tok = Tokenizer.from_file(
        str(Path(__file__).resolve().parents[1] / "fixtures" / "bert" / "export" / "tokenizer.json")
    )
    tok.no_padding()
    items = ["a", "two words", ("a pair", "of texts here"), "x " * 30, ""]
    encs = tok.encode_batch(items)
    lengths = token_counts(encs)
    assert lengths.tolist() == [len(e.ids) for e in encs]
    for idx in (np.array([3, 0, 2]), np.array([4]), np.arange(5)):
        width = int(lengths[idx].max()) + 2
        names = ["input_ids", "attention_mask", "token_type_ids"]
        feeds = build_feeds(encs, lengths, idx, width, names, 0, False, side)
        for row, i in enumerate(idx):
            e, pad = encs[i], [0] * (width - len(encs[i].ids))
            for name, values in zip(names, (e.ids, [1] * len(e.ids), e.type_ids), strict=True):
                assert feeds[name][row].tolist() == (values + pad if side == "right" else pad + values)
