"""st-serve's batcher without HTTP: which thread tokenizes a request, and how a batch several requests share is
run (length groups), against in-process encode of the same texts."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from st_runtime import SentenceEncoder
from st_runtime.serve.batcher import Batcher, Job
from st_runtime.serve.grouping import length_groups
from tests.helpers import assert_parity

SHORT = ["a cat", "the dog ran", "hello there", "one two three four"]
LONG = [" ".join(["word"] * n) for n in (40, 41, 42, 43)]


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
    requests = [SHORT[:2], LONG[:2], SHORT[2:], LONG[2:]]

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
        # the shared batch (four requests, one batch) ran as two groups: the four long texts, then the short ones
        shared = spy.runs[1:]
        assert len(shared) == 2, spy.runs
        assert sorted(shared[0]) == sorted(len(e) for e in bert.text_tower.tokenize(LONG))
        assert max(shared[1]) < min(shared[0])
    finally:
        spy.restore()
        batcher.close(timeout=10)


def test_length_groups_cut_where_padding_costs_more_than_a_run():
    def budget(width: int) -> int:
        return 512

    assert length_groups(np.array([12, 12, 12]), budget, 1024) is None  # one length: nothing to save
    assert length_groups(np.array([12, 11, 12]), budget, 1024) is None  # a token of padding: not worth a run
    lengths = np.array([5, 60, 6, 58, 5, 61, 7])
    groups = length_groups(lengths, budget, 1024)
    assert [sorted(lengths[g].tolist()) for g in groups] == [[58, 60, 61], [5, 5, 6, 7]]
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))  # every text once
    # under a budget the tower cuts a group into runs anyway: the groups follow those cuts
    many = np.array([20] * 30 + [10] * 30)
    assert [len(g) for g in length_groups(many, budget, 1024)] == [30, 30]
