"""Concurrency and memory: one SentenceEncoder shared by many threads; flat memory over many batches."""

from __future__ import annotations

import gc
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import FOX_WORDS

from st_runtime import SentenceEncoder


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = [*FOX_WORDS, "London", "東京", "😀", "naïve", "census", "river"]
    return [" ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 5, 20, 80]))) for _ in range(n)]


@pytest.fixture(scope="module")
def enc(tiny_bert):
    return SentenceEncoder(tiny_bert[1], threads=2)


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_sixteen_threads_get_the_results_of_sequential_calls(enc, batch_size):
    inputs = [_texts(seed, 40) for seed in range(16)]
    sequential = [enc.encode(t, batch_size=batch_size) for t in inputs]
    barrier = threading.Barrier(16, timeout=30)

    def work(i: int):
        barrier.wait()  # all 16 enter encode together
        return [enc.encode(inputs[i], batch_size=batch_size) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(work, i) for i in range(16)]
        results = [f.result(timeout=120) for f in futures]  # bounded: a deadlock fails here
    for i, runs in enumerate(results):
        for got in runs:
            np.testing.assert_array_equal(got, sequential[i])


def test_threads_with_different_settings_do_not_leak_into_each_other(enc):
    texts = _texts(99, 30)
    want = {dim: enc.encode(texts, truncate_dim=dim, normalize_embeddings=True) for dim in (4, 8, 16)}
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = {
            pool.submit(enc.encode, texts, truncate_dim=dim, normalize_embeddings=True): dim
            for dim in (4, 8, 16)
            for _ in range(4)
        }
        for f, dim in futures.items():
            np.testing.assert_array_equal(f.result(timeout=60), want[dim])


def test_concurrent_calls_with_their_own_truncation_and_batch_size_get_the_sequential_results(enc):
    """Truncation is per call: callers lowering max_seq_length for themselves, at different batch sizes,
    never change each other's results, and the encoder's own setting changed meanwhile changes neither."""
    jobs = [
        (_texts(seed, 30), bs, msl)
        for seed, (bs, msl) in enumerate((bs, msl) for bs in (1, 7, None) for msl in (3, 9, None))
    ]
    sequential = [enc.encode(t, batch_size=bs, max_seq_length=msl) for t, bs, msl in jobs]
    assert not np.allclose(enc.encode(jobs[0][0], max_seq_length=3), enc.encode(jobs[0][0]), atol=1e-4)
    exported = enc.max_seq_length
    barrier = threading.Barrier(len(jobs) + 1, timeout=30)

    def work(i: int):
        texts, bs, msl = jobs[i]
        barrier.wait()
        return [enc.encode(texts, batch_size=bs, max_seq_length=msl if msl is not None else exported) for _ in range(3)]

    def toggle():  # another thread lowers and restores the encoder's own limit throughout
        barrier.wait()
        for k in range(50):
            enc.max_seq_length = 2 if k % 2 == 0 else exported
        enc.max_seq_length = exported

    with ThreadPoolExecutor(max_workers=len(jobs) + 1) as pool:
        futures = [pool.submit(work, i) for i in range(len(jobs))]
        pool.submit(toggle).result(timeout=120)
        results = [f.result(timeout=120) for f in futures]
    for i, runs in enumerate(results):
        for got in runs:
            np.testing.assert_array_equal(got, sequential[i])
    assert enc.max_seq_length == exported


def test_max_seq_length_per_call_is_validated(enc):
    with pytest.raises(ValueError, match="can only be lowered"):
        enc.encode("x", max_seq_length=enc.max_seq_length + 1)
    with pytest.raises(ValueError, match="positive integer"):
        enc.encode("x", max_seq_length=0)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_resident_memory_stays_flat_over_many_batches(enc):
    chunk = _texts(5, 1500)
    samples = []
    for _round in range(12):
        enc.encode(chunk, batch_size=32)
        gc.collect()
        samples.append(_rss_mb())
    warm = samples[3:]  # after warm-up (arena growth, first-shape allocations)
    growth = warm[-1] - warm[0]
    print(f"RSS MB per round of 1,500 texts: {[round(s, 1) for s in samples]}; growth after warm-up {growth:.1f}")
    # 12,000 texts after warm-up; a leak of even 2 KB per text would add ~24 MB.
    assert growth < 15, samples
    slope = np.polyfit(np.arange(len(warm)), warm, 1)[0]
    assert slope < 1.0, (slope, samples)


def test_per_call_truncations_keep_a_bounded_set_of_tokenizers(enc):
    texts = _texts(5, 12)
    tower = enc.text_tower
    want = {n: enc.encode(texts, max_seq_length=n) for n in range(2, 20)}
    sets = tower.tokenizers
    assert len(sets._entries) <= sets.MAX_TRUNCATIONS + 1 and tower.max_seq_length in sets._entries
    for n in (2, 19, 7):  # evicted ones are made again, with the same results
        np.testing.assert_array_equal(enc.encode(texts, max_seq_length=n), want[n])
    out = np.empty((0, enc.get_sentence_embedding_dimension()), np.float32)
    tower.embed([], None, out)  # nothing to do, no error
