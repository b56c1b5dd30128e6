"""Cross-request batching for one model: requests from many connections are tokenized together and run as
shared batches, and each request gets its own rows back.

Two threads per model, in a pipeline (as text-embeddings-inference and infinity do):

* the tokenizer thread takes every request waiting, tokenizes their texts in one call per truncation setting
  (the Rust tokenizer runs on all cores without the GIL), counts tokens, refuses texts over the limit of a
  request that asked not to truncate, and passes the requests on;
* the inference thread takes tokenized requests in arrival order until ``max_batch_tokens`` real tokens
  are taken (always at least one request), runs them through the text tower (which sorts them by length and
  cuts graph batches under its own policy, as ``encode`` does), and resolves each request's future.

The pipeline is for load: requests that arrive while a batch runs are tokenized meanwhile. A request that
finds the inference thread idle is handed to it directly, and it tokenizes the request itself (the same
call), so that a lone request wakes one thread instead of two (at one client, one thread hop fewer: less
CPU and latency per request).

Nothing waits for company: a request that arrives alone is run at once, and requests that arrive while a
batch runs form the next one. A request whose client has gone is marked cancelled and skipped wherever it
is. An exception in one batch fails that batch's requests only.

This module needs no web framework; ``st_runtime.serve.app`` puts HTTP in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..batching import token_counts
from ..kinds import Prepared
from ..packed import join, take
from .errors import RequestError
from .grouping import Scatter, length_groups

__all__ = ["Batcher", "Job", "RequestError"]

logger = logging.getLogger("st_runtime.serve")


@dataclass(eq=False)
class Job:
    """One request's texts (a kind's prepared texts: prompts applied, surrogates repaired) and how to tokenize
    them.

    ``max_length``: tokens kept per text (None: the model's max_seq_length); ``direction``: the truncation
    side (None: the model's); ``strict``: refuse a text over ``max_length`` instead of truncating it (413).
    ``images``: PIL images for an image tower (then ``texts`` is empty)."""

    texts: list  # strings, or (query, document) pairs
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    max_length: int | None = None
    direction: str | None = None
    strict: bool = False
    pairs: bool = False  # some texts are (text, text_pair) tuples (their token type ids are read back)
    unnormalized: bool = False  # rows before the model's final Normalize (never batched with other jobs)
    images: list[Any] = field(default_factory=list)
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)
    encodings: Sequence | None = None
    tokens: np.ndarray | None = None
    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0

    @property
    def size(self) -> int:
        return len(self.texts) + len(self.images)

    @classmethod
    def parts(cls, prepared: Prepared, loop: asyncio.AbstractEventLoop) -> list[Job]:
        """The jobs of one prepared call: its texts, and its images (which run on their own)."""
        jobs = []
        if prepared.texts or not prepared.images:
            jobs.append(
                cls(
                    prepared.texts,
                    loop,
                    loop.create_future(),
                    prepared.max_length,
                    prepared.direction,
                    prepared.strict,
                    prepared.pairs,
                    unnormalized=prepared.unnormalized,
                )
            )
        if prepared.images:
            jobs.append(cls([], loop, loop.create_future(), images=prepared.images))
        return jobs


def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client gone, server stopping)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _settle(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)


class Batcher:
    """The two-thread pipeline above, for one model of any kind (its kind makes and splits the rows).

    ``on_batch(rows, tokens, seconds)`` is called after each batch runs (metrics)."""

    def __init__(
        self,
        model,
        name: str,
        max_batch_tokens: int = 16384,
        on_batch: Callable[[int, int, float], None] | None = None,
    ):
        if max_batch_tokens <= 0:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        self.model = model
        self.kind = model.kind
        self.tower = model.text_tower
        self.name = name
        self.max_batch_tokens = int(max_batch_tokens)
        self.dim = self.kind.width(model)  # columns of a graph output row
        self._on_batch = on_batch
        self._raw: deque[Job] = deque()
        self._ready: deque[Job] = deque()
        lock = threading.Lock()  # one lock for both queues: either thread may move jobs from one to the other
        self._raw_cv = threading.Condition(lock)
        self._ready_cv = threading.Condition(lock)
        self._stopping = False
        self._tokenizing = 0  # texts being tokenized (by either thread) and not yet handed on
        self._idle = False  # the inference thread waits for work (the next request goes straight to it)
        self._threads = [
            threading.Thread(target=self._tokenize_loop, name=f"st-serve-tokenize-{name}", daemon=True),
            threading.Thread(target=self._inference_loop, name=f"st-serve-infer-{name}", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ public
    def submit(self, job: Job) -> None:
        """Queue a job; its future gets (its kind's rows, tokens per text [n] int) or an error."""
        if self._stopping:
            raise RequestError(503, "the server is shutting down", "Unhealthy")
        with self._raw_cv:
            if job.images:  # image towers take no tokens: straight to inference
                self._ready.append(job)
            else:
                self._raw.append(job)
            if self._idle or job.images:  # the inference thread tokenizes it itself (see _take)
                self._idle = False
                self._ready_cv.notify()
            else:
                self._raw_cv.notify()

    @property
    def queue_size(self) -> int:
        """Texts and images waiting to be tokenized or run."""
        return sum(j.size for j in list(self._raw)) + self._tokenizing + sum(j.size for j in list(self._ready))

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop both threads."""
        self._stopping = True
        with self._raw_cv:
            self._raw_cv.notify_all()
        self._threads[0].join(timeout)
        with self._ready_cv:
            self._ready_cv.notify_all()
        self._threads[1].join(timeout)

    # ------------------------------------------------------------------ tokenizer thread
    def _tokenize_loop(self) -> None:
        while True:
            with self._raw_cv:
                # jobs the inference thread is tokenizing go first (arrival order)
                while (not self._raw or self._tokenizing) and not self._stopping:
                    self._raw_cv.wait()
                if not self._raw:  # stopping, and nothing left
                    self._ready_cv.notify_all()
                    return
                jobs = self._take_raw()
            self._hand_on(jobs)

    def _take_raw(self) -> list[Job]:
        """Every job waiting to be tokenized (the lock held)."""
        jobs = list(self._raw)
        self._raw.clear()
        self._tokenizing += sum(j.size for j in jobs)
        return jobs

    def _hand_on(self, jobs: list[Job]) -> None:
        """Tokenize ``jobs`` (taken by ``_take_raw``) and queue those left for inference, in arrival order."""
        try:
            self._tokenize(jobs)
        except Exception as exc:  # a tokenizer failure fails these requests, never the thread
            logger.exception("tokenization failed")
            for job in jobs:
                if job.encodings is None:
                    _settle(job, error=RequestError(422, f"tokenization failed: {exc}", "Tokenizer"))
        ok = [j for j in jobs if j.encodings is not None and not j.cancelled]
        with self._ready_cv:
            self._ready.extend(ok)
            self._tokenizing -= sum(j.size for j in jobs)
            self._ready_cv.notify()
            if self._raw:
                self._raw_cv.notify()

    def _tokenize(self, jobs: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if job.cancelled:
                continue
            limit = self.tower.max_seq_length if job.max_length is None else job.max_length
            # a strict job is tokenized whole (key None), so that an over-long text is refused with its real length
            key = (None if job.strict or limit is None else limit, job.direction)
            groups.setdefault(key, []).append(job)
        for (max_length, direction), members in groups.items():
            t0 = time.perf_counter()
            texts = [t for j in members for t in j.texts]
            encodings = self.tower.tokenize(texts, max_length, direction, truncate=max_length is not None)
            elapsed = time.perf_counter() - t0
            start = 0
            for job in members:
                mine = encodings[start : start + len(job.texts)]
                start += len(job.texts)
                job.tokens = token_counts(mine)
                job.tokenize_s = elapsed
                if job.strict:
                    limit = self.tower.max_seq_length if job.max_length is None else job.max_length
                    if limit is not None and len(mine) and int(job.tokens.max()) > limit:
                        i = int(np.argmax(job.tokens > limit))
                        _settle(
                            job,
                            error=RequestError(
                                413,
                                f"input {i} has {int(job.tokens[i])} tokens, over the limit of {limit} tokens "
                                f"(the model's max_seq_length); shorten it, or send truncate=true to keep the "
                                f"first {limit}.",
                                "Validation",
                                param="inputs",
                            ),
                        )
                        continue
                job.encodings = mine

    # ------------------------------------------------------------------ inference thread
    def _take(self) -> list[Job] | None:
        """Jobs for the next batch, in arrival order, under the token budget; None: stop. With nothing
        tokenized waiting, the jobs waiting for the tokenizer are tokenized here, unless the tokenizer thread
        holds earlier ones (arrival order is kept)."""
        while True:
            with self._ready_cv:
                while not self._ready:
                    if self._raw and not self._tokenizing:
                        break
                    if self._stopping and not self._threads[0].is_alive():
                        return None
                    self._idle = True
                    self._ready_cv.wait(0.5 if self._stopping else None)
                    self._idle = False
                if self._ready:
                    return self._batch()
                jobs = self._take_raw()
            self._hand_on(jobs)

    def _batch(self) -> list[Job]:
        """The ready jobs of the next batch (the lock held)."""
        taken: list[Job] = []
        tokens = 0
        while self._ready:
            job = self._ready[0]
            if job.cancelled:
                self._ready.popleft()
                continue
            if job.images:  # images run on their own
                if not taken:
                    taken.append(self._ready.popleft())
                break
            n = int(job.tokens.sum()) if job.tokens is not None else 0
            if taken and (tokens + n > self.max_batch_tokens or job.unnormalized != taken[0].unnormalized):
                break
            taken.append(self._ready.popleft())
            tokens += n
        return taken

    def _inference_loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            jobs = [j for j in jobs if not j.cancelled]
            if not jobs:
                continue
            t0 = time.perf_counter()
            for job in jobs:
                job.queue_s = max(0.0, t0 - job.enqueued - job.tokenize_s)
            try:
                results, tokens = self._run_jobs(jobs)
            except Exception as exc:  # onnxruntime's errors are untyped; this batch fails, the server goes on
                logger.exception("inference failed for a batch of %d requests", len(jobs))
                error = RequestError(500, f"inference failed: {type(exc).__name__}: {exc}", "Backend")
                for job in jobs:
                    _settle(job, error=error)
                continue
            elapsed = time.perf_counter() - t0
            for job, result in zip(jobs, results):
                job.inference_s = elapsed
                _settle(job, result)
            if self._on_batch is not None:
                self._on_batch(sum(j.size for j in jobs), tokens, elapsed)

    def _run_jobs(self, jobs: list[Job]) -> tuple[list[tuple[Any, np.ndarray]], int]:
        """Run the taken jobs as one shared set of batches: per job (its rows, its tokens per text)."""
        if jobs[0].images:
            job = jobs[0]
            index = list(range(len(job.images)))
            rows = self.model.run(Prepared([], images=job.images, image_index=index))
            return [(rows, np.zeros(len(job.images), dtype=np.int64))], 0
        encodings = join([j.encodings for j in jobs if j.encodings])
        out = self.kind.new_rows(self.model, len(encodings))
        pairs = any(j.pairs for j in jobs)
        output = self.model.row_output(jobs[0].unnormalized)  # _take batches jobs of one kind of rows
        tower = self.tower
        groups = None
        if len(jobs) > 1 and not tower.on_gpu:  # a request alone keeps encode's batches (grouping.py)
            groups = length_groups(token_counts(encodings), tower.policy.budget, tower.policy.auto_batch_size)
        parts: list[tuple[Sequence, Any]] = [(encodings, out)]
        if groups is not None:
            parts = [(take(encodings, idx), Scatter(out, idx)) for idx in groups]
        for part, rows in parts:
            tower.embed_encoded(part, rows, max_length=tower.max_seq_length, pairs=pairs, output=output)
        results: list[tuple[Any, np.ndarray]] = []
        start, tokens = 0, 0
        for job in jobs:
            counts = job.tokens if job.tokens is not None else np.zeros(len(job.texts), dtype=np.int64)
            results.append((self.kind.split(out, start, start + len(job.texts)), counts))
            start += len(job.texts)
            tokens += int(counts.sum())
        return results, tokens
