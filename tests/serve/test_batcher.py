"""st-serve's batcher without HTTP: which thread tokenizes a request, and how a batch several requests share is
run (length groups), against in-process encode of the same texts."""

from __future__ import annotations

import asyncio
import itertools
import threading

import numpy as np
import pytest

from st_runtime import SentenceEncoder
from st_runtime.serve.batcher import Batcher, Job
from st_runtime.serve.grouping import length_groups
from tests.helpers import assert_parity

SHORT = ["a cat", "the dog ran", "hello there", "one two three four"]
LONG = [" ".join(["word"] * n) for n in (40, 41, 42, 43)]
# 12-13 and 21-23 tokens: within a factor of two, so the tower alone would pad them into one graph batch
MID = [" ".join(["word"] * n) for n in (10, 10, 11, 11)]
WIDE = [" ".join(["word"] * n) for n in (19, 20, 21, 21)]


@pytest.fixture(scope="module")
def bert(fixtures_dir):
    return SentenceEncoder(fixtures_dir / "bert" / "export", threads=1)


class Spy:
    """Records the thread that tokenizes each call and the texts of each embed_encoded call; can hold the
    inference thread in its next run until released."""

    def __init__(self, batcher: Batcher):
        tower = batcher.tower
        self.tokenized_on: list[tuple[str, int]] = []
        self.runs: list[list[int]] = []  # token lengths of each embed_encoded call
        self.hold = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        tokenize, embed = tower.tokenize, tower.embed_encoded

        def spy_tokenize(texts, *args, **kwargs):
            self.tokenized_on.append((threading.current_thread().name, len(texts)))
            return tokenize(texts, *args, **kwargs)

        def spy_embed(encodings, out, **kwargs):
            self.runs.append([len(e) for e in encodings])
            if self.hold.is_set():
                self.hold.clear()
                self.held.set()
                assert self.release.wait(30)
            return embed(encodings, out, **kwargs)

        tower.tokenize, tower.embed_encoded = spy_tokenize, spy_embed
        self.restore = lambda: (delattr(tower, "tokenize"), delattr(tower, "embed_encoded"))


async def _rows(batcher: Batcher, model, texts: list[str]):
    (job,) = Job.parts(model.kind.prepare(model, texts), asyncio.get_running_loop())
    batcher.submit(job)
    rows, _tokens = await job.future
    return model.kind.finish(model, rows)


def test_a_lone_request_is_tokenized_by_the_idle_inference_thread(bert):
    batcher = Batcher(bert, "bert")
    spy = Spy(batcher)
    try:
        for texts in (SHORT, LONG):  # one after the other: the inference thread is idle each time
            got = asyncio.run(_rows(batcher, bert, texts))
            assert np.array_equal(got, bert.encode(texts)), "a request alone must get encode's rows bit for bit"
        assert [name for name, _ in spy.tokenized_on] == ["st-serve-infer-bert"] * 2
        assert spy.runs == [[len(e) for e in bert.text_tower.tokenize(t)] for t in (SHORT, LONG)]  # not regrouped
    finally:
        spy.restore()
        batcher.close(timeout=10)


def test_requests_that_share_a_batch_run_in_length_groups(bert):
    """While the inference thread runs a batch, the tokenizer thread tokenizes the requests that arrive; the next
    batch holds them all and runs short and long texts in separate graph batches, each request getting its
    own rows."""
    batcher = Batcher(bert, "bert")
    spy = Spy(batcher)
    requests = [MID[:2], WIDE[:2], MID[2:], WIDE[2:]]

    async def scenario():
        spy.hold.set()
        first = asyncio.ensure_future(_rows(batcher, bert, ["hold the inference thread"]))
        while not spy.held.is_set():  # the inference thread is now inside its run
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(_rows(batcher, bert, texts)) for texts in requests]
        while sum(n for name, n in spy.tokenized_on if name.startswith("st-serve-tokenize")) < 8:
            await asyncio.sleep(0.005)  # the tokenizer thread has tokenized all four meanwhile
        spy.release.set()
        return await first, await asyncio.gather(*rest)

    try:
        _first, got = asyncio.run(scenario())
        for texts, rows in zip(requests, got):
            assert_parity(bert.encode(texts), rows)
        assert spy.tokenized_on[0][0] == "st-serve-infer-bert"
        # the shared batch (four requests, one batch) ran as two groups: the four wider texts, then the others
        shared = spy.runs[1:]
        assert len(shared) == 2, spy.runs
        assert sorted(shared[0]) == sorted(len(e) for e in bert.text_tower.tokenize(WIDE))
        assert max(shared[1]) < min(shared[0])
    finally:
        spy.restore()
        batcher.close(timeout=10)


def test_length_groups_cut_where_padding_costs_more_than_a_run():
    def budget(width: int) -> int:
        return 512

    assert length_groups(np.array([12, 12, 12]), budget, 1024) is None  # one length: nothing to save
    assert length_groups(np.array([12, 11, 12]), budget, 1024) is None  # a token of padding: not worth a run
    assert length_groups(np.array([5, 60, 6, 58, 5, 61, 7]), budget, 1024) is None  # the tower splits these itself
    lengths = np.array([20, 34, 21, 33, 20, 35, 22])
    groups = length_groups(lengths, budget, 1024)
    assert [sorted(lengths[g].tolist()) for g in groups] == [[33, 34, 35], [20, 20, 21, 22]]
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))  # every text once
    # under a budget the tower cuts a group into runs anyway: the groups follow those cuts
    many = np.array([20] * 30 + [10] * 30)
    assert [len(g) for g in length_groups(many, budget, 1024)] == [30, 30]


def test_length_groups_never_cost_more_than_one_set():
    """On random lengths: every text in exactly one group, each group's lengths apart from the others', and the
    groups' cost (runs x run cost + padded tokens, planned as the tower plans) at most that of one set."""
    from st_runtime.batching import plan_batches
    from st_runtime.serve.grouping import RUN_COST_TOKENS

    def budget(width: int) -> int:
        return 512 if width < 64 else 4096

    def cost(lengths: np.ndarray) -> int:
        plan = plan_batches(np.sort(lengths)[::-1], 1024, budget=budget)  # as TextTower.plan, on the CPU
        return sum(RUN_COST_TOKENS + (end - start) * width for start, end, width in plan)

    rng = np.random.default_rng(7)
    for _ in range(200):
        lengths = rng.integers(3, 300, size=int(rng.integers(2, 120))) // int(rng.choice([1, 10]))
        lengths = np.maximum(lengths, 1)
        groups = length_groups(lengths, budget, 1024)
        if groups is None:
            continue
        assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
        spans = [(int(lengths[g].min()), int(lengths[g].max())) for g in groups]
        assert all(low_a >= high_b for (low_a, _), (_, high_b) in itertools.pairwise(spans)), spans  # longest first
        assert sum(cost(lengths[g]) for g in groups) <= cost(lengths)
