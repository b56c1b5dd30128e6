"""What a route handler gets: the request's typed body, its model, and ``run`` (the kind protocol's batches, shared
with other requests through the model's batcher)."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from starlette.requests import Request

from ..errors import InputTooLongError, StRuntimeError
from ..inputs import PRECUT_FACTOR
from ..kinds import Prepared
from .batcher import Job
from .errors import RequestError
from .guards import client_left
from .registry import ServedModel, ServerState
from .requests import Body

T = TypeVar("T")
TIMINGS = "st_serve.timings"  # the request's seconds by phase, in its scope (the tracing spans read them)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _run_job(request: Request, model: ServedModel, job: Job) -> tuple[Any, np.ndarray]:
    """Queue ``job`` and wait for its rows; a client that disconnects meanwhile has its items dropped."""
    model.batcher.submit(job)
    watcher = asyncio.ensure_future(_wait_disconnect(request))

    def on_disconnect(task: asyncio.Task) -> None:
        if not task.cancelled() and not job.future.done():
            job.cancelled = True  # the batcher skips it wherever it is
            job.future.cancel()

    watcher.add_done_callback(on_disconnect)
    try:
        return await job.future
    except asyncio.CancelledError:
        if job.cancelled:
            raise client_left(request, "while its request was queued") from None  # a 499, logged at INFO
        job.cancelled = True  # the handler itself was cancelled (server shutting down)
        raise
    finally:
        watcher.cancel()


# requests with more characters of text than this, or a text long enough to be cut, are prepared off the loop
_INLINE_CHARS = 65536


def _large(inputs: Any, max_tokens: int | None) -> bool:
    lengths = [len(t) if isinstance(t, str) else sum(len(x) for x in t) if isinstance(t, tuple) else 0 for t in inputs]
    longest = PRECUT_FACTOR * max_tokens if max_tokens else _INLINE_CHARS
    return sum(lengths) > _INLINE_CHARS or max(lengths, default=0) > min(longest, _INLINE_CHARS)


@dataclass
class Call:
    """One request to a kind's route."""

    request: Request
    state: ServerState
    model: ServedModel
    body: Body

    def parse(self, request_type: type[T]) -> T:
        """The body as ``request_type`` (a class of st_runtime.serve.requests, or a kind's own)."""
        return request_type.parse(self.body, self.model)  # type: ignore[attr-defined]

    @property
    def kind(self):
        return self.model.kind

    async def prepare(self, inputs: Any, **options: Any) -> Prepared:
        """The kind's ``prepare``, in a worker thread when the inputs are large (cutting very long texts exactly
        costs CPU time the event loop needs for other clients). A text proved over the model's limit when the
        call does not truncate is a 413; other refusals of the inputs are the client's mistakes (422)."""
        model = self.model.model
        try:
            if not _large(inputs, model.text_tower.max_seq_length):
                return self.kind.prepare(model, inputs, **options)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, functools.partial(self.kind.prepare, model, inputs, **options))
        except InputTooLongError as exc:
            raise RequestError(413, str(exc), "Validation", param="inputs") from None
        except (StRuntimeError, ValueError, TypeError) as exc:
            raise RequestError(422, str(exc)) from None

    def finish(self, rows: Any, **options: Any) -> Any:
        return self.kind.finish(self.model.model, rows, **options)

    async def run(self, prepared: Prepared) -> tuple[Any, np.ndarray]:
        """The kind's rows for the prepared inputs (in input order) and the tokens of each."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        jobs = Job.parts(prepared, loop)
        results = [await _run_job(self.request, self.model, job) for job in jobs]
        total = time.perf_counter() - t0
        timings = self.request.scope.setdefault(TIMINGS, {"queue": 0.0, "tokenization": 0.0, "inference": 0.0})
        for job in jobs:
            self.state.metrics.observe_job(self.model.name, job, total)
            timings["queue"] += job.queue_s
            timings["tokenization"] += job.tokenize_s
            timings["inference"] += job.inference_s
        if len(jobs) == 1:  # long texts' windows pool into one row per text, their tokens add up
            return self.kind.pool(self.model.model, prepared, *results[0])
        (text_rows, text_tokens), (image_rows, _) = results
        tokens = np.zeros(prepared.size, dtype=np.int64)
        tokens[prepared.text_index()] = text_tokens
        return self.kind.merge(self.model.model, prepared, text_rows, image_rows), tokens
