"""st-embed against failing disks and changing inputs: every operating-system error is one line naming the path
and the cause with exit code 2, nothing written before is lost, no temporary file is left, and a rerun
resumes; torn parts and inputs edited in place (size and modification time kept) are embedded again."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="needs the bulk extra: pip install 'st-runtime[bulk]'")
pq = pytest.importorskip("pyarrow.parquet")

from st_runtime.bulk import cli, job  # noqa: E402

WORDS = ["the", "of", "and", "to", "in", "London", "city", "river", "bridge", "census"]


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def model(fixtures_dir) -> Path:
    return fixtures_dir / "bert" / "export"


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(corpus(1200))))
    return path


def st_embed(capsys, model: Path, source: Path, out: Path, *more: str) -> tuple[int, str]:
    """The CLI in this process (so that faults can be injected): (exit code, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(model), str(source), "-o", str(out), "--id-column", "id", "--chunk-rows", "200",
                   "--threads", "1", "-q", *more])  # fmt: skip
    return rc, capsys.readouterr().err


def parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def contents(out: Path) -> tuple[list, np.ndarray]:
    table = pq.read_table(out)
    col = table.column("embedding").combine_chunks()
    return table.column("id").to_pylist(), col.flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1)


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("st-embed: cannot "), err
    for needle in needles:
        assert needle in err, err


def assert_prefix_and_clean(out: Path, rows: int = 200) -> int:
    """The parts present are complete and numbered 0..n-1; no temporary file is left."""
    found = parts(out)
    assert [p.name for p in found] == [job.part_name(k) for k in range(len(found))]
    for p in found:
        assert pq.ParquetFile(p).metadata.num_rows == rows
    assert not list(out.glob(".*.tmp")) and not (out / job.SUCCESS).exists()
    return len(found)


@pytest.fixture
def reference(capsys, model, source, tmp_path):
    out = tmp_path / "reference"
    assert st_embed(capsys, model, source, out)[0] == 0
    return contents(out)


# ------------------------------------------------------------------------------------------ injected faults
def test_a_full_disk_is_one_line_and_a_rerun_resumes(capsys, monkeypatch, model, source, tmp_path, reference):
    out = tmp_path / "out"
    real = job.pq.write_table
    written: list[str] = []

    def write_table(table, where, *args, **kwargs):  # two parts fit; the third fills the disk
        written.append(str(where))
        if len(written) <= 2:
            return real(table, where, *args, **kwargs)
        Path(where).write_bytes(b"PAR1" + b"\0" * 100)  # the partial file a full disk leaves
        # pyarrow's own error for ENOSPC: an OSError without errno or filename
        raise OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(job.pq, "write_table", write_table)
    rc, err = st_embed(capsys, model, source, out)
    assert_one_line_error(rc, err, str(out / "part-00002.parquet"), "No space left on device (errno 28)")
    assert assert_prefix_and_clean(out) == 2
    monkeypatch.undo()
    rc, err = st_embed(capsys, model, source, out)
    assert rc == 0, err
    ids, emb = contents(out)
    assert ids == reference[0]
    np.testing.assert_array_equal(emb, reference[1])  # the same bits as a run that never failed


@pytest.mark.parametrize(
    "code,cause",
    [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")],
    ids=["read_only", "permission"],
)
def test_an_unwritable_output_is_one_line(capsys, monkeypatch, model, source, tmp_path, code, cause):
    out = tmp_path / "out"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == out:
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc, err = st_embed(capsys, model, source, out)
    assert_one_line_error(rc, err, str(out), cause)
    assert not out.exists()


def test_settings_that_cannot_be_written_leave_no_temporary_file(capsys, monkeypatch, model, source, tmp_path):
    out = tmp_path / "out"
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            real(self, "partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    rc, err = st_embed(capsys, model, source, out)
    assert_one_line_error(rc, err, str(out / job.SETTINGS), "No space left on device")
    assert not list(out.glob(".*")) and not list(out.iterdir())


def test_an_input_that_vanishes_is_one_line(capsys, monkeypatch, model, source, tmp_path):
    from st_runtime.bulk import sources

    real = sources.Source._jsonl
    monkeypatch.setattr(sources.Source, "_jsonl", lambda self: _blocks_then_vanish(self, real))
    rc, err = st_embed(capsys, model, source, tmp_path / "out")
    assert_one_line_error(rc, err, str(source), "No such file or directory")


def _blocks_then_vanish(self, real):
    texts, invalid, ids = next(iter(real(self)))
    yield texts[:500], invalid, ids[:500]
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.path))


def test_a_missing_input_or_model_is_one_line(capsys, model, source, tmp_path):
    rc, err = st_embed(capsys, model, tmp_path / "nope.jsonl", tmp_path / "out")
    assert rc == 1 and "does not exist" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ parts and inputs
def test_a_torn_part_is_embedded_again(capsys, model, source, tmp_path, reference):
    out = tmp_path / "out"
    assert st_embed(capsys, model, source, out)[0] == 0
    torn = out / "part-00002.parquet"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    rc, err = st_embed(capsys, model, source, out, "--quiet")
    assert rc == 0, err
    ids, emb = contents(out)
    assert ids == reference[0]
    np.testing.assert_array_equal(emb, reference[1])
    rc, err = st_embed(capsys, model, source, out)
    assert rc == 0 and not err  # now whole: nothing to redo


def test_a_torn_part_is_reported(model, source, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "st_runtime.bulk.cli", str(model), str(source), "-o", str(out), "--chunk-rows",
            "200", "--threads", "1"]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    torn = out / "part-00001.parquet"
    torn.write_bytes(torn.read_bytes()[:-9])
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "part-00001.parquet is damaged" in r.stderr, r.stderr
    assert "resuming after 1 complete parts" in r.stderr


def test_an_input_edited_in_place_is_embedded_again_from_the_change(capsys, model, source, tmp_path):
    out = tmp_path / "out"
    assert st_embed(capsys, model, source, out)[0] == 0
    stat = source.stat()
    lines = source.read_text().splitlines(keepends=True)
    row = 650  # in the fourth chunk (rows 600-799)
    old = json.loads(lines[row])["text"]
    new = "".join(reversed(old)) if old != old[::-1] else old.upper()
    lines[row] = json.dumps({"id": row, "text": new}) + "\n"
    source.write_text("".join(lines))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same modification time
    assert source.stat().st_size == stat.st_size and source.stat().st_mtime_ns == stat.st_mtime_ns
    assert st_embed(capsys, model, source, out, "--quiet")[0] == 0
    fresh = tmp_path / "fresh"
    assert st_embed(capsys, model, source, fresh)[0] == 0
    np.testing.assert_array_equal(contents(out)[1], contents(fresh)[1])
    record = json.loads((out / "_run.json").read_text())
    assert record["resumed_after_parts"] == 3


def test_an_input_that_grew_redoes_only_its_last_part(capsys, model, source, tmp_path):
    out = tmp_path / "out"
    with source.open("a") as fh:
        fh.write(json.dumps({"id": 1200, "text": "one more"}) + "\n")
    assert st_embed(capsys, model, source, out)[0] == 0  # 1201 rows: six parts and a one-row part
    with source.open("a") as fh:
        fh.write(json.dumps({"id": 1201, "text": "and another"}) + "\n")
    assert st_embed(capsys, model, source, out)[0] == 0
    assert json.loads((out / "_run.json").read_text())["resumed_after_parts"] == 6
    assert pq.ParquetFile(out / "part-00006.parquet").metadata.num_rows == 2


# ------------------------------------------------------------------------------------------ a real small disk
def _can_mount() -> bool:
    return sys.platform == "linux" and os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount to make a small tmpfs")
def test_a_real_full_then_read_only_disk(model, tmp_path):
    texts = corpus(3000, seed=4)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")

    def run(out: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "st_runtime.bulk.cli", str(model), str(source), "-o", str(out), "--chunk-rows",
               "250", "--threads", "1", "-q"]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    assert run(tmp_path / "reference").returncode == 0
    with tmpfs(tmp_path / "disk", "96k") as disk:
        out = disk / "out"
        r = run(out)
        assert r.returncode == 2 and "No space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
        written = assert_prefix_and_clean(out, 250)
        assert 0 < written < 12
        remount(disk, "ro")
        r = run(out)
        assert r.returncode == 2 and "Read-only file system" in r.stderr and "Traceback" not in r.stderr, r.stderr
        remount(disk, "rw,size=8m")
        r = run(out)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(pq.read_table(out).column(0).to_pylist(),
                                      pq.read_table(tmp_path / "reference").column(0).to_pylist())  # fmt: skip
