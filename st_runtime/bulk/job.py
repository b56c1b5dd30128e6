"""The st-embed job: an input embedded into a folder of Parquet part files, resumable after any crash.

Output folder:

* ``part-00000.parquet``, ``part-00001.parquet``, ...: chunk k holds input rows [k * chunk_rows, (k + 1) *
  chunk_rows), with the id column when one was given and ``embedding`` as a fixed-size list in the chosen
  precision (null for rows skipped as invalid). Each part is written to a temporary name and renamed once
  complete, in order, so after a crash (even ``kill -9``) the parts present are a complete prefix. Its footer
  holds its row count, invalid rows and a digest of the input rows it was made from (``st_embed.*`` keys).
* ``_st_embed.json``: the settings (model, variant, precision, columns, chunk size, the input's path and
  kind, and the int8/uint8 calibration ranges, fixed from the first chunk), written before the first part.
  A rerun with the same settings continues after the last complete part; other settings are refused unless
  ``overwrite``.
* ``_SUCCESS`` and ``_run.json`` (model, variant, precision, rows, invalid rows, seconds), written last.

A rerun checks what is there: each part's footer must be readable with the expected rows and schema (a torn
or foreign part is redone, with the parts after it, and a warning), and the digest of each chunk of the input,
as it is read again, must be the one its part was made from (an input edited since, even with its size and
modification time kept, is embedded again from its first changed chunk on).

Every operating-system error (read-only or full disk, permissions, a vanished input) is a
:class:`StorageError` naming the path and the cause; nothing written before is changed, and no temporary
file is left.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .. import __version__
from .output import (
    COLUMN,
    RECORD,
    SETTINGS,
    SUCCESS,
    JobSpec,
    Output,
    OutputError,
    PartInfo,
    StorageError,
    chunk_digest,
    part_name,
)
from .sources import Chunk, InputError, Source

__all__ = [
    "COLUMN",
    "RECORD",
    "SETTINGS",
    "SUCCESS",
    "JobSpec",
    "Output",
    "OutputError",
    "PartInfo",
    "StorageError",
    "chunk_digest",
    "iter_local",
    "part_name",
    "pq",
    "run",
]


def check_chunk(chunk: Chunk, skip_invalid: bool) -> np.ndarray:
    """The valid rows of ``chunk`` as a mask; an invalid row is an error naming it unless ``skip_invalid``."""
    valid = np.ones(len(chunk), dtype=bool)
    if chunk.invalid:
        if not skip_invalid:
            k, why = min(chunk.invalid.items())
            raise InputError(
                f"row {chunk.start + k} has no text to embed ({why}); fix the input or pass --skip-invalid to write "
                "a null embedding for such rows"
            )
        valid[list(chunk.invalid)] = False
    return valid


def valid_texts(chunk: Chunk, valid: np.ndarray) -> list[str]:
    return [t for t, ok in zip(chunk.texts, valid) if ok and t is not None]


def run(
    spec: JobSpec,
    source: Source,
    output: Output,
    submit: Callable[[list[str]], Any],
    result: Callable[[Any], np.ndarray],
    window: int = 1,
    progress=None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The job loop. ``submit(texts)`` starts embedding one chunk and ``result(handle)`` waits for it (local:
    the encode itself; Ray: a remote call and ``ray.get``); up to ``window`` chunks are in flight, and parts are
    written in input order. The chunks of parts already written are read again and checked against them."""
    t0 = time.perf_counter()
    loop = _Loop(spec, output, submit, result, progress, log)
    for chunk in _reading(source.chunks(spec.chunk_rows), source):
        if loop.reuse(chunk):
            continue
        loop.start(chunk)
        while len(loop.in_flight) >= window:
            loop.drain_one()
    while loop.in_flight:
        loop.drain_one()
    k = loop.k
    if k < loop.done_parts and not (k == 0 and output.parts[0].rows == 0):  # the input ends earlier than it did
        log(f"warning: the input has fewer rows than when {part_name(k)} was written; the parts from it are removed")
        output.drop_parts_from(k)
        loop.finished = False
    if loop.finished:
        log(f"{output.dir} is already complete")
        return json.loads((output.dir / RECORD).read_text())
    record = {
        "st_runtime": __version__,
        "model": output.model_path,
        "variant": output.settings["variant"],
        "precision": spec.precision,
        "normalize": spec.normalize,
        "rows": loop.rows,
        "invalid_rows": loop.invalid_rows,
        "parts": max(k, 1),
        "seconds_this_run": round(time.perf_counter() - t0, 3),
        "resumed_after_parts": min(loop.done_parts, k),
        **spec.extra,
    }
    output.finish(record)
    return record


class _Loop:
    """The state of one run of the job loop: the next part's number, what is in flight, the counts."""

    def __init__(self, spec: JobSpec, output: Output, submit, result, progress, log) -> None:
        self.spec, self.output, self.submit, self.result, self.progress, self.log = (
            spec, output, submit, result, progress, log,
        )  # fmt: skip
        self.done_parts, self.finished = output.prepare(log)
        self.invalid_rows = self.rows = self.k = 0
        self.in_flight: deque[tuple[int, Chunk, np.ndarray, Any]] = deque()

    def _advance(self, chunk: Chunk) -> None:
        self.rows += len(chunk)
        if self.progress is not None:
            self.progress.update(len(chunk))

    def reuse(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` is the one a part of an earlier run was made from (then it is counted, not
        embedded); a chunk that differs drops that part and every one after it."""
        k, output = self.k, self.output
        if k >= self.done_parts:
            return False
        if output.matches(k, chunk):  # written by an earlier run, from these very rows
            self.invalid_rows += output.invalid_rows(k)
            self._advance(chunk)
            self.k += 1
            return True
        self.log(
            f"warning: input rows {chunk.start}-{chunk.start + len(chunk) - 1} are not those {part_name(k)} was "
            "made from (the input changed); they are embedded again, with the rows after them"
        )
        output.drop_parts_from(k)
        self.done_parts, self.finished = k, False
        return False

    def start(self, chunk: Chunk) -> None:
        if self.k == self.done_parts and self.done_parts:
            self.log(f"resuming after {self.done_parts} complete parts ({self.rows} rows)")
        valid = check_chunk(chunk, self.spec.skip_invalid)
        self.invalid_rows += int((~valid).sum())
        self.in_flight.append((self.k, chunk, valid, self.submit(valid_texts(chunk, valid))))
        self.k += 1

    def drain_one(self) -> None:
        k, chunk, valid, handle = self.in_flight.popleft()
        self.output.write_part(k, chunk, self.result(handle), valid)
        self._advance(chunk)


def _reading(chunks: Iterator[Chunk], source: Source) -> Iterator[Chunk]:
    """``chunks``, with an operating-system error while reading the input as a StorageError."""
    try:
        yield from chunks
    except OSError as exc:
        raise StorageError("read", exc.filename or source.path, exc) from None


def encode_kwargs(spec: JobSpec) -> dict[str, Any]:
    """The options of the kind's bulk_encode that a job sets."""
    kwargs: dict[str, Any] = {"normalize": spec.normalize, "prompt_name": spec.prompt_name}
    if spec.long_inputs != "truncate":
        kwargs["long_inputs"] = spec.long_inputs
    return kwargs


def iter_local(model, spec: JobSpec) -> tuple[Callable, Callable]:
    """(submit, result) over a model loaded in this process: its kind's fixed-width rows per chunk of texts."""
    kwargs = encode_kwargs(spec)

    def submit(texts: list[str]) -> np.ndarray:
        return model.kind.bulk_encode(model, texts, **kwargs)

    return submit, lambda handle: handle
