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

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
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


class StorageError(StRuntimeError):
    """An operating-system error reading the input or writing the output: the path and the cause."""

    def __init__(self, action: str, path: str | os.PathLike, exc: OSError):
        self.path = str(path)
        self.errno = exc.errno or _errno_in(str(exc))
        cause = exc.strerror or (os.strerror(self.errno) if self.errno else str(exc))
        super().__init__(f"cannot {action} {self.path}: {cause}" + (f" (errno {self.errno})" if self.errno else ""))


def _errno_in(message: str) -> int | None:
    """The errno in an OSError message that carries none as an attribute (pyarrow's)."""
    found = re.search(r"\[errno (\d+)\]", message, re.IGNORECASE)
    return int(found.group(1)) if found else None


def _write_atomically(path: Path, write: Callable[[Path], None], sync: bool = False) -> None:
    """``write(tmp)`` then rename to ``path``; on an OSError the temporary file is removed and a StorageError
    names ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        if sync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StorageError("write", path, exc) from None


@dataclass
class PartInfo:
    """What a part's footer says: rows, invalid rows and the digest of its input rows (None: unknown)."""

    rows: int
    invalid: int | None
    digest: str | None


def chunk_digest(chunk: Chunk) -> str:
    """A digest of a chunk's rows as read (texts, invalid rows, ids): what identifies the input of a part."""
    h = hashlib.blake2b(digest_size=16)
    for text in chunk.texts:
        if text is None:
            h.update(b"\xff" * 8)
        else:
            data = text.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    if chunk.ids is not None:
        h.update(repr(chunk.ids.to_pylist()).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


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
            "format": 2,
            "model": {"path": self.model_path, "manifest_sha256": _manifest_sha(spec.model_dir)},
            "variant": variant,
            "precision": spec.precision,
            "normalize": spec.normalize,
            "prompt_name": spec.prompt_name,
            "column": spec.column,
            "id_column": spec.id_column,
            "chunk_rows": spec.chunk_rows,
            "skip_invalid": spec.skip_invalid,
            "input": source.fingerprint(),  # what the rows are checked against: each part's digest
        }
        self.ranges: np.ndarray | None = None
        self.parts: list[PartInfo] = []  # the complete parts found by prepare()
        fields = [pa.field(COLUMN, pa.list_(_PRECISION_TYPES[spec.precision], self.width))]
        if spec.id_column is not None:
            fields.insert(0, pa.field(spec.id_column, source.id_type or pa.null()))
        self.schema = pa.schema(fields)
        self._id_type_known = source.id_type is not None

    # ------------------------------------------------------------------ resume
    def prepare(self, log: Callable[[str], None] = print) -> tuple[int, bool]:
        """(parts already complete, whether the job had finished). Refuses another job's folder."""
        try:
            return self._prepare(log)
        except OSError as exc:
            raise StorageError("prepare the output folder", exc.filename or self.dir, exc) from None

    def _prepare(self, log: Callable[[str], None]) -> tuple[int, bool]:
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
                self._check_settings(json.loads(settings_file.read_text()))
        d.mkdir(parents=True, exist_ok=True)
        for tmp in d.glob(".*.tmp"):
            tmp.unlink()
        if not (d / SETTINGS).exists():
            self._write_settings()
        done = self._complete_parts(log)
        return done, (d / SUCCESS).exists() and done > 0

    def _check_settings(self, old: dict[str, Any]) -> None:
        ranges = old.pop("calibration_ranges", None)
        if old != self.settings:
            if not self.spec.overwrite:
                diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
                raise OutputError(
                    f"output folder {self.dir} holds a run with other settings (differing: {diff}); pass "
                    "--overwrite to start over, or choose another -o"
                )
            shutil.rmtree(self.dir)
        elif ranges is not None:
            self.ranges = np.asarray(ranges, dtype=np.float32)

    def _complete_parts(self, log: Callable[[str], None]) -> int:
        """The parts that are whole, in order: each footer readable, with its rows and this job's schema; a
        part that is not (torn, truncated, foreign) is removed with the parts after it."""
        self.parts = []
        k = 0
        while (self.dir / part_name(k)).exists():
            info, problem = self._read_footer(k)
            if problem is not None:
                log(f"warning: {part_name(k)} is damaged ({problem}); it is embedded again, with the parts after it")
                break
            if self.parts and self.parts[-1].rows != self.spec.chunk_rows:  # only the last part may be short
                log(f"warning: {part_name(k - 1)} is short but not the last part; it is embedded again")
                self.parts.pop()
                k -= 1
                break
            self.parts.append(info)
            k += 1
        self.drop_parts_from(k)
        return k

    def _read_footer(self, k: int) -> tuple[PartInfo | None, str | None]:
        try:
            pf = pq.ParquetFile(self.dir / part_name(k))
            rows = pf.metadata.num_rows
            schema = pf.schema_arrow
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            return None, f"{type(exc).__name__}: {exc}"
        meta = schema.metadata or {}
        want = self.schema.field(COLUMN).type
        if COLUMN not in schema.names or schema.field(COLUMN).type != want:
            return None, "not this job's schema"
        if int(meta.get(b"st_embed.rows", rows)) != rows or rows > self.spec.chunk_rows:
            return None, f"{rows} rows"
        invalid, digest = meta.get(b"st_embed.invalid"), meta.get(b"st_embed.chunk")
        info = PartInfo(rows, None if invalid is None else int(invalid), None if digest is None else digest.decode())
        return info, None

    def drop_parts_from(self, k: int) -> None:
        """Remove part k and every later one (and the completion markers): the parts stay a prefix."""
        del self.parts[k:]
        extra = [p for p in self.dir.glob("part-*.parquet") if int(p.stem.split("-")[1]) >= k]
        if extra:
            for name in (SUCCESS, RECORD):
                (self.dir / name).unlink(missing_ok=True)
        for p in sorted(extra, reverse=True):  # last first, so that an interruption still leaves a prefix
            p.unlink()

    def matches(self, k: int, chunk: Chunk) -> bool:
        """Whether part k was made from ``chunk`` (its rows and, where the footer has one, their digest)."""
        part = self.parts[k]
        return part.rows == len(chunk) and (part.digest is None or part.digest == chunk_digest(chunk))

    def invalid_rows(self, k: int) -> int:
        part = self.parts[k]
        if part.invalid is not None:
            return part.invalid
        column = pq.read_table(self.dir / part_name(k), columns=[COLUMN]).column(0)  # a part of format 1
        return column.null_count

    def _write_settings(self) -> None:
        data = dict(self.settings)
        if self.ranges is not None:
            data["calibration_ranges"] = self.ranges.tolist()
        _write_atomically(self.dir / SETTINGS, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))

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
        meta = {
            b"st_embed.rows": str(n),
            b"st_embed.invalid": str(int(n - valid.sum())),
            b"st_embed.chunk": chunk_digest(chunk),
        }
        table = pa.Table.from_arrays(arrays, schema=schema.with_metadata(meta))
        _write_atomically(self.dir / part_name(k), lambda tmp: pq.write_table(table, tmp), sync=True)

    def finish(self, record: dict[str, Any]) -> None:
        if not any(self.dir.glob("part-*.parquet")):  # empty input: one empty part with the schema
            empty = self.schema.with_metadata({b"st_embed.rows": b"0", b"st_embed.invalid": b"0"}).empty_table()
            _write_atomically(self.dir / part_name(0), lambda tmp: pq.write_table(empty, tmp))
        _write_atomically(self.dir / RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
        _write_atomically(self.dir / SUCCESS, lambda tmp: tmp.write_text(""))


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
    return {"normalize": spec.normalize, "prompt_name": spec.prompt_name}


def iter_local(model, spec: JobSpec) -> tuple[Callable, Callable]:
    """(submit, result) over a model loaded in this process: its kind's fixed-width rows per chunk of texts."""
    kwargs = encode_kwargs(spec)

    def submit(texts: list[str]) -> np.ndarray:
        return model.kind.bulk_encode(model, texts, **kwargs)

    return submit, lambda handle: handle
