"""The st-embed job: an input embedded into a folder of Parquet part files, resumable after any crash.

Output folder:

* ``part-00000.parquet``, ``part-00001.parquet``, ...: chunk k holds input rows [k * chunk_rows, (k + 1) *
  chunk_rows), with the id column when one was given and ``embedding`` as a fixed-size list in the chosen
  precision (null for rows skipped as invalid). Each part is written to a temporary name and renamed once
  complete, in order, so after a crash (even ``kill -9``) the parts present are a complete prefix.
* ``_st_embed.json``: the settings (model, variant, precision, columns, chunk size, the input's fingerprint,
  and the int8/uint8 calibration ranges, fixed from the first chunk), written before the first part. A
  rerun with the same settings continues after the last complete part; other settings are refused unless
  ``overwrite``.
* ``_SUCCESS`` and ``_run.json`` (model, variant, precision, rows, invalid rows, seconds), written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from ..errors import StRuntimeError
from . import PRECISIONS, calibration_ranges, quantize_embeddings
from .sources import Chunk, InputError, Source

SETTINGS = "_st_embed.json"
SUCCESS = "_SUCCESS"
COLUMN = "embedding"  # the output column of the vectors
RECORD = "_run.json"  # "_" and "." names are skipped by pyarrow/Spark readers of the folder
_PRECISION_TYPES = {
    "float32": pa.float32(),
    "float16": pa.float16(),
    "int8": pa.int8(),
    "uint8": pa.uint8(),
    "binary": pa.int8(),
    "ubinary": pa.uint8(),
}


class OutputError(StRuntimeError, ValueError):
    """The output folder holds another job's results, or is not an st-embed output."""


@dataclass
class JobSpec:
    model_dir: Path
    input: Path
    output: Path
    column: str = "text"
    id_column: str | None = None
    variant: str | None = None
    precision: str = "float32"
    normalize: bool = False
    prompt_name: str | None = None
    chunk_rows: int = 8192
    skip_invalid: bool = False
    overwrite: bool = False
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def part_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


def _manifest_sha(model_dir: Path) -> str:
    return hashlib.sha256((Path(model_dir) / "manifest.json").read_bytes()).hexdigest()


class Output:
    """The output folder of one job: settings, complete parts, the final record."""

    def __init__(self, spec: JobSpec, source: Source, variant: str, dim: int):
        if spec.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {spec.precision!r}")
        self.spec = spec
        self.dir = Path(spec.output)
        self.dim = dim
        self.width = dim // 8 if spec.precision in ("binary", "ubinary") else dim
        if spec.precision in ("binary", "ubinary") and dim % 8:
            raise ValueError(
                f"precision {spec.precision!r} packs 8 dimensions a byte; the dimension {dim} is not a multiple of 8"
            )
        self.model_path = str(Path(spec.model_dir).resolve())
        self.settings = {
            "format": 1,
            "model": {"path": self.model_path, "manifest_sha256": _manifest_sha(spec.model_dir)},
            "variant": variant,
            "precision": spec.precision,
            "normalize": spec.normalize,
            "prompt_name": spec.prompt_name,
            "column": spec.column,
            "id_column": spec.id_column,
            "chunk_rows": spec.chunk_rows,
            "skip_invalid": spec.skip_invalid,
            "input": source.fingerprint(),
        }
        self.ranges: np.ndarray | None = None
        fields = [pa.field(COLUMN, pa.list_(_PRECISION_TYPES[spec.precision], self.width))]
        if spec.id_column is not None:
            fields.insert(0, pa.field(spec.id_column, source.id_type or pa.null()))
        self.schema = pa.schema(fields)
        self._id_type_known = source.id_type is not None

    # ------------------------------------------------------------------ resume
    def prepare(self) -> tuple[int, bool]:
        """(parts already complete, whether the job had finished). Refuses another job's folder."""
        d = self.dir
        if d.exists() and not d.is_dir():
            raise OutputError(f"output {d} exists and is not a folder")
        if d.exists() and any(d.iterdir()):
            settings_file = d / SETTINGS
            if not settings_file.exists():
                if not self.spec.overwrite:
                    raise OutputError(
                        f"output folder {d} is not empty and was not written by st-embed; choose another -o or pass "
                        "--overwrite to replace its contents"
                    )
                shutil.rmtree(d)
            else:
                old = json.loads(settings_file.read_text())
                ranges = old.pop("calibration_ranges", None)
                if old != self.settings:
                    if not self.spec.overwrite:
                        diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
                        raise OutputError(
                            f"output folder {d} holds a run with other settings (differing: {diff}); pass "
                            "--overwrite to start over, or choose another -o"
                        )
                    shutil.rmtree(d)
                elif ranges is not None:
                    self.ranges = np.asarray(ranges, dtype=np.float32)
        d.mkdir(parents=True, exist_ok=True)
        if (d / SUCCESS).exists():
            return self._complete_parts(), True
        for tmp in d.glob(".*.tmp"):
            tmp.unlink()
        if not (d / SETTINGS).exists():
            self._write_settings()
        return self._complete_parts(), False

    def _complete_parts(self) -> int:
        k = 0
        while (self.dir / part_name(k)).exists():
            k += 1
        for extra in self.dir.glob("part-*.parquet"):  # after a gap (never written so): not trusted
            if int(extra.stem.split("-")[1]) >= k:
                extra.unlink()
        return k

    def _write_settings(self) -> None:
        data = dict(self.settings)
        if self.ranges is not None:
            data["calibration_ranges"] = self.ranges.tolist()
        tmp = self.dir / f".{SETTINGS}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.dir / SETTINGS)

    # ------------------------------------------------------------------ parts
    def write_part(self, k: int, chunk: Chunk, emb: np.ndarray, valid: np.ndarray) -> None:
        """Write chunk ``k`` (``emb`` holds the rows of ``valid``) atomically."""
        if self.spec.precision in ("int8", "uint8") and self.ranges is None:
            self.ranges = calibration_ranges(emb if len(emb) else np.zeros((1, self.dim), np.float32))
            self._write_settings()  # before the part that used them, so a resumed run uses the same ranges
        q = quantize_embeddings(emb, self.spec.precision, self.ranges)
        n = len(chunk)
        flat = np.zeros((n, self.width), dtype=q.dtype)
        flat[valid] = q
        values = pa.array(flat.reshape(-1), type=_PRECISION_TYPES[self.spec.precision])
        mask = None if valid.all() else pa.array(~valid)
        column = pa.FixedSizeListArray.from_arrays(values, self.width, mask=mask)
        arrays = [column]
        schema = self.schema
        if self.spec.id_column is not None:
            ids = chunk.ids if chunk.ids is not None else pa.nulls(n)
            if not self._id_type_known:
                schema = pa.schema([pa.field(self.spec.id_column, ids.type), self.schema.field(COLUMN)])
                self.schema, self._id_type_known = schema, True
            arrays.insert(0, ids.cast(schema.field(0).type))
        table = pa.Table.from_arrays(arrays, schema=schema)
        tmp = self.dir / f".{part_name(k)}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / part_name(k))

    def finish(self, record: dict[str, Any]) -> None:
        if not any(self.dir.glob("part-*.parquet")):  # empty input: one empty part with the schema
            pq.write_table(self.schema.empty_table(), self.dir / part_name(0))
        (self.dir / RECORD).write_text(json.dumps(record, indent=1))
        (self.dir / SUCCESS).write_text("")


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
    written in input order."""
    t0 = time.perf_counter()
    done_parts, finished = output.prepare()
    if finished:
        log(f"{output.dir} is already complete")
        return json.loads((output.dir / RECORD).read_text())
    skip = done_parts * spec.chunk_rows
    if done_parts:
        log(f"resuming after {done_parts} complete parts ({skip} rows)")
    invalid_rows = 0
    rows = skip
    in_flight: deque[tuple[int, Chunk, np.ndarray, Any]] = deque()

    def drain_one() -> None:
        nonlocal rows
        k, chunk, valid, handle = in_flight.popleft()
        emb = result(handle)
        output.write_part(k, chunk, emb, valid)
        rows += len(chunk)
        if progress is not None:
            progress.update(len(chunk))

    k = done_parts
    for chunk in source.chunks(spec.chunk_rows, skip_rows=skip):
        valid = check_chunk(chunk, spec.skip_invalid)
        invalid_rows += int((~valid).sum())
        in_flight.append((k, chunk, valid, submit(valid_texts(chunk, valid))))
        k += 1
        while len(in_flight) >= window:
            drain_one()
    while in_flight:
        drain_one()
    record = _record(spec, output, rows, invalid_rows + _earlier_invalid(output, done_parts), max(k, 1))
    record.update(seconds_this_run=round(time.perf_counter() - t0, 3), resumed_after_parts=done_parts, **spec.extra)
    output.finish(record)
    return record


def _earlier_invalid(output: Output, done_parts: int) -> int:
    """Invalid rows of the parts an earlier run wrote (counted from those parts)."""
    return sum(
        pq.read_table(output.dir / part_name(j), columns=[COLUMN]).column(0).null_count for j in range(done_parts)
    )


def _record(spec: JobSpec, output: Output, rows: int, invalid_rows: int, parts: int) -> dict[str, Any]:
    return {
        "st_runtime": __version__,
        "model": output.model_path,
        "variant": output.settings["variant"],
        "precision": spec.precision,
        "normalize": spec.normalize,
        "rows": rows,
        "invalid_rows": invalid_rows,
        "parts": parts,
    }


def encode_kwargs(spec: JobSpec) -> dict[str, Any]:
    """The options of the kind's bulk_encode that a job sets."""
    return {"normalize": spec.normalize, "prompt_name": spec.prompt_name}


def iter_local(model, spec: JobSpec) -> tuple[Callable, Callable]:
    """(submit, result) over a model loaded in this process: its kind's fixed-width rows per chunk of texts."""
    kwargs = encode_kwargs(spec)

    def submit(texts: list[str]) -> np.ndarray:
        return model.kind.bulk_encode(model, texts, **kwargs)

    return submit, lambda handle: handle
