"""The st-embed output folder: its settings, part files and final record (the layout is in
st_runtime.bulk.job's docstring)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StRuntimeError
from . import PRECISIONS, calibration_ranges, quantize_embeddings
from .sources import Chunk, Source

SETTINGS = "_st_embed.json"
SUCCESS = "_SUCCESS"
COLUMN = "embedding"  # the output column of the vectors
TOKENS_COLUMN = "tokens"  # per-token models: each row's number of token vectors
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


def _write_atomically(path: Path, write: Callable[[Path], object], sync: bool = False) -> None:
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
    long_inputs: str = "truncate"  # texts over the model's limit: truncate, chunk or error (docs/long-inputs.md)
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

    def __init__(self, spec: JobSpec, source: Source, variant: str, dim: int, per_token: bool = False):
        if spec.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {spec.precision!r}")
        if per_token and spec.precision != "float32":
            raise OutputError(
                f"this model gives a vector per token, written as float32; --precision {spec.precision} is not offered"
            )
        self.per_token = per_token
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
        if spec.long_inputs != "truncate":  # (outputs written before the option stay resumable)
            self.settings["long_inputs"] = spec.long_inputs
        self.ranges: np.ndarray | None = None
        self.parts: list[PartInfo] = []  # the complete parts found by prepare()
        fields = [pa.field(COLUMN, pa.list_(_PRECISION_TYPES[spec.precision], self.width))]
        if per_token:  # per row a list of token vectors, and how many
            fields = [pa.field(COLUMN, pa.list_(fields[0].type)), pa.field(TOKENS_COLUMN, pa.int32())]
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
            if problem is not None or info is None:
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
    def _token_columns(self, emb: list[np.ndarray], valid: np.ndarray) -> list[pa.Array]:
        """The per-token column (a list of the text's token vectors per row) and the token counts."""
        counts = np.zeros(len(valid), dtype=np.int32)
        counts[valid] = [len(e) for e in emb]
        flat = np.concatenate(emb) if emb else np.zeros((0, self.width), np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=pa.float32()), self.width)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        mask = None if valid.all() else pa.array(~valid)
        column = pa.ListArray.from_arrays(offsets, vectors, mask=mask)
        return [column, pa.array(counts, mask=None if valid.all() else ~valid)]

    def write_part(self, k: int, chunk: Chunk, emb: Any, valid: np.ndarray) -> None:
        """Write chunk ``k`` (``emb`` holds the rows of ``valid``; per-token: one [tokens, dim] array each)
        atomically."""
        n = len(chunk)
        arrays = self._token_columns(list(emb), valid) if self.per_token else [self._vector_column(emb, valid, n)]
        schema = self.schema
        if self.spec.id_column is not None:
            ids = chunk.ids if chunk.ids is not None else pa.nulls(n)
            if not self._id_type_known:
                rest = [f for f in self.schema if f.name != self.spec.id_column]
                schema = pa.schema([pa.field(self.spec.id_column, ids.type), *rest])
                self.schema, self._id_type_known = schema, True
            arrays.insert(0, ids.cast(schema.field(0).type))
        meta = {
            b"st_embed.rows": str(n),
            b"st_embed.invalid": str(int(n - valid.sum())),
            b"st_embed.chunk": chunk_digest(chunk),
        }
        table = pa.Table.from_arrays(arrays, schema=schema.with_metadata(meta))
        _write_atomically(self.dir / part_name(k), lambda tmp: pq.write_table(table, tmp), sync=True)

    def _vector_column(self, emb: np.ndarray, valid: np.ndarray, n: int) -> pa.Array:
        if self.spec.precision in ("int8", "uint8") and self.ranges is None:
            self.ranges = calibration_ranges(emb if len(emb) else np.zeros((1, self.dim), np.float32))
            self._write_settings()  # before the part that used them, so a resumed run uses the same ranges
        q = quantize_embeddings(emb, self.spec.precision, self.ranges)
        flat = np.zeros((n, self.width), dtype=q.dtype)
        flat[valid] = q
        values = pa.array(flat.reshape(-1), type=_PRECISION_TYPES[self.spec.precision])
        mask = None if valid.all() else pa.array(~valid)
        return pa.FixedSizeListArray.from_arrays(values, self.width, mask=mask)

    def finish(self, record: dict[str, Any]) -> None:
        if not any(self.dir.glob("part-*.parquet")):  # empty input: one empty part with the schema
            empty = self.schema.with_metadata({b"st_embed.rows": b"0", b"st_embed.invalid": b"0"}).empty_table()
            _write_atomically(self.dir / part_name(0), lambda tmp: pq.write_table(empty, tmp))
        _write_atomically(self.dir / RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
        _write_atomically(self.dir / SUCCESS, lambda tmp: tmp.write_text(""))
