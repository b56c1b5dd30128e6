"""Streaming readers for st-embed: Parquet (a file or a folder of them), JSONL, CSV and plain text (one text per
line), cut into chunks of exactly ``chunk_rows`` rows (the last one shorter), never read whole into memory.

Each chunk is a :class:`Chunk`: its first row number, the texts (None where a row is null or not a string,
with the reason), and the ids when an id column was asked for. Row numbers count from 0 over the whole input.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import StRuntimeError

_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".txt": "text",
    ".text": "text",
}


class InputError(StRuntimeError, ValueError):
    """The input cannot be read as asked: a missing column, a null or non-string text, a bad line."""


@dataclass
class Chunk:
    start: int  # row number of the first row
    texts: list[str | None]
    invalid: dict[int, str]  # row offset within the chunk -> why it has no text
    ids: pa.Array | None = None

    def __len__(self) -> int:
        return len(self.texts)


class Source:
    """One input (a file, or a folder of Parquet files): its kind, size and row count where known."""

    def __init__(self, path: str | os.PathLike, column: str = "text", id_column: str | None = None):
        self.path = Path(path)
        self.column = column
        self.id_column = id_column
        if not self.path.exists():
            raise InputError(f"input {self.path} does not exist")
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*") if p.suffix in (".parquet", ".pq") and p.is_file())
            if not self.files:
                raise InputError(f"input folder {self.path} holds no .parquet files")
            self.kind = "parquet"
        else:
            self.files = [self.path]
            self.kind = _SUFFIXES.get(self.path.suffix.lower(), "text")
        if self.kind == "text" and id_column is not None:
            raise InputError(f"{self.path} is plain text (one text per line): it has no column {id_column!r} for ids")
        self.total_rows: int | None = None
        self.id_type: pa.DataType | None = None
        if self.kind == "parquet":
            total = 0
            for f in self.files:
                schema = pq.read_schema(f)
                self._check_columns(schema.names, f)
                if id_column is not None:
                    self.id_type = schema.field(id_column).type
                total += pq.ParquetFile(f).metadata.num_rows
            self.total_rows = total

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the input in the job's settings: its path, kind and files. Its content is identified
        chunk by chunk (``st_runtime.bulk.job.chunk_digest``, in each part's footer), so that sizes and times
        are not needed: an input edited in place is recognised even with both kept."""
        return {
            "path": str(self.path.resolve()),
            "kind": self.kind,
            "files": [str(f.relative_to(self.path)) if self.path.is_dir() else f.name for f in self.files],
        }

    def _check_columns(self, names: list[str], where: Path) -> None:
        for col in (self.column, self.id_column):
            if col is not None and col not in names:
                raise InputError(
                    f"{where} has no column {col!r}; its columns are {names}. Pass --column / --id-column."
                )

    # ------------------------------------------------------------------ rows
    def chunks(self, chunk_rows: int, skip_rows: int = 0) -> Iterator[Chunk]:
        """Chunks of ``chunk_rows`` rows from row ``skip_rows`` on (a multiple of chunk_rows when resuming)."""
        start = 0
        pending: list[tuple[list, dict[int, str], list | pa.Array | None]] = []
        pending_rows = 0
        for texts, invalid, ids in self._blocks():
            n = len(texts)
            if start + pending_rows + n <= skip_rows:  # wholly before the resume point: not even validated
                start += n
                continue
            if start + pending_rows < skip_rows:
                cut = skip_rows - start
                texts, ids = texts[cut:], (ids[cut:] if ids is not None else None)
                invalid = {k - cut: v for k, v in invalid.items() if k >= cut}
                start += cut
                n = len(texts)
            pending.append((texts, invalid, ids))
            pending_rows += n
            while pending_rows >= chunk_rows:
                chunk, pending, pending_rows = self._take(pending, chunk_rows, start)
                start += len(chunk)
                yield chunk
        if pending_rows:
            chunk, _, _ = self._take(pending, pending_rows, start)
            yield chunk

    def _take(self, pending: list, rows: int, start: int) -> tuple[Chunk, list, int]:
        texts: list = []
        invalid: dict[int, str] = {}
        ids: list = []
        rest: list = []
        for t, inv, i in pending:
            need = rows - len(texts)
            if need <= 0:
                rest.append((t, inv, i))
                continue
            base = len(texts)
            texts.extend(t[:need])
            invalid.update({base + k: v for k, v in inv.items() if k < need})
            if i is not None:
                ids.append(i[:need])
            if len(t) > need:
                rest.append(
                    (t[need:], {k - need: v for k, v in inv.items() if k >= need}, None if i is None else i[need:])
                )
        id_array = None
        if self.id_column is not None:
            id_array = (
                pa.concat_arrays([pa.array(x) if not isinstance(x, pa.Array) else x for x in ids]) if ids else None
            )
        chunk = Chunk(start, texts, invalid, id_array)
        return chunk, rest, sum(len(t) for t, _, _ in rest)

    def _blocks(self) -> Iterator[tuple[list, dict[int, str], Any]]:
        """(texts, invalid rows, ids) blocks in input order."""
        if self.kind == "parquet":
            yield from self._parquet()
        elif self.kind == "csv":
            yield from self._csv()
        elif self.kind == "jsonl":
            yield from self._jsonl()
        else:
            yield from self._text()

    @staticmethod
    def _strings(arr: pa.Array) -> tuple[list, dict[int, str]]:
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type)):
            texts = arr.to_pylist()
            return [None] * len(texts), {k: f"a {type(v).__name__}, not a string" for k, v in enumerate(texts)}
        texts = arr.to_pylist()
        invalid = {k: "null" for k, v in enumerate(texts) if v is None} if arr.null_count else {}
        return texts, invalid

    def _parquet(self):
        cols = [self.column] + ([self.id_column] if self.id_column is not None else [])
        for f in self.files:
            pf = pq.ParquetFile(f)
            self._check_columns(pf.schema_arrow.names, f)
            for batch in pf.iter_batches(batch_size=65536, columns=cols):
                texts, invalid = self._strings(batch.column(self.column))
                ids = batch.column(self.id_column) if self.id_column is not None else None
                yield texts, invalid, ids

    def _csv(self):
        cols = [self.column] + ([self.id_column] if self.id_column is not None else [])
        self._check_columns(pacsv.open_csv(self.path).schema.names, self.path)
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(
                include_columns=cols, column_types={self.column: pa.string()}, strings_can_be_null=False
            ),
        )
        for batch in reader:
            texts, invalid = self._strings(batch.column(self.column))
            yield texts, invalid, batch.column(self.id_column) if self.id_column is not None else None

    def _jsonl(self):
        block = 8192
        with open(self.path, "rb") as fh:
            lineno = 0
            while True:
                lines = list(itertools.islice(fh, block))
                if not lines:
                    return
                texts: list = []
                invalid: dict[int, str] = {}
                ids: list = []
                for line in lines:
                    lineno += 1
                    if not line.strip():
                        continue  # blank lines are not rows
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise InputError(f"{self.path} line {lineno} is not JSON: {exc}") from None
                    if not isinstance(obj, dict):
                        raise InputError(f"{self.path} line {lineno} is a JSON {type(obj).__name__}, not an object")
                    if self.column not in obj:
                        raise InputError(
                            f"{self.path} line {lineno} has no key {self.column!r}; its keys are {sorted(obj)}. "
                            "Pass --column."
                        )
                    if self.id_column is not None:
                        if self.id_column not in obj:
                            raise InputError(
                                f"{self.path} line {lineno} has no key {self.id_column!r}; its keys are {sorted(obj)}"
                            )
                        ids.append(obj[self.id_column])
                    value = obj[self.column]
                    if not isinstance(value, str):
                        invalid[len(texts)] = "null" if value is None else f"a {type(value).__name__}, not a string"
                        value = None
                    texts.append(value)
                yield texts, invalid, (ids if self.id_column is not None else None)

    def _text(self):
        with open(self.path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            while True:
                lines = list(itertools.islice(fh, 65536))
                if not lines:
                    return
                yield [_strip_line_end(ln) for ln in lines], {}, None


def _strip_line_end(line: str) -> str:
    if line.endswith("\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(("\n", "\r")) else line
