"""st-embed as users run it (a subprocess), embed_iter, and st_runtime.ray on a local Ray."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import COMMON_WORDS, assert_parity

pa = pytest.importorskip("pyarrow", reason="needs the bulk extra: pip install 'st-runtime[bulk]'")
pq = pytest.importorskip("pyarrow.parquet")
pacsv = pytest.importorskip("pyarrow.csv")

from st_runtime import SentenceEncoder  # noqa: E402
from st_runtime.bulk import embed_iter, quantize_embeddings  # noqa: E402

WORDS = [*COMMON_WORDS, "London", "city", "river"]


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def model(fixtures_dir) -> Path:
    return fixtures_dir / "bert" / "export"


@pytest.fixture(scope="module")
def encoder(model):
    return SentenceEncoder(model, threads=1)


@pytest.fixture(scope="module")
def parquet_20k(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = corpus(20_000)
    path = tmp_path_factory.mktemp("in") / "corpus.parquet"
    ids = [f"doc-{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=3_000)
    return path, texts


def st_embed(*args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "st_runtime.bulk.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def embeddings(folder: Path) -> tuple[pa.Table, np.ndarray]:
    table = pq.read_table(folder)  # the folder reads as one dataset: _SUCCESS and _*.json are skipped
    col = table.column("embedding").combine_chunks()
    width = col.type.list_size
    return table, col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def test_local_run_matches_encode_in_order(parquet_20k, model, encoder, tmp_path):
    path, texts = parquet_20k
    st_embed(model, path, "-o", tmp_path / "out", "--id-column", "id", "--chunk-rows", "4096", "-q")
    table, emb = embeddings(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(len(texts))]
    assert_parity(encoder.encode(texts), emb)
    record = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert record["rows"] == 20_000 and record["invalid_rows"] == 0 and record["parts"] == 5
    assert (tmp_path / "out" / "_SUCCESS").exists()
    again = st_embed(model, path, "-o", tmp_path / "out", "--id-column", "id", "--chunk-rows", "4096")
    assert "already complete" in again.stderr


def test_ray_run_equals_local_run(parquet_20k, model, tmp_path):
    pytest.importorskip("ray", reason="needs the ray extra: pip install 'st-runtime[ray]'")
    path, _ = parquet_20k
    common = ["--id-column", "id", "--chunk-rows", "3000", "-q"]
    st_embed(model, path, "-o", tmp_path / "local", *common)
    st_embed(model, path, "-o", tmp_path / "ray", *common, "--ray", "--num-workers", "2")
    (lt, le), (rt, re_) = embeddings(tmp_path / "local"), embeddings(tmp_path / "ray")
    assert lt.column("id").to_pylist() == rt.column("id").to_pylist()
    assert_parity(le, re_)
    assert json.loads((tmp_path / "ray" / "_run.json").read_text())["mode"] == "ray"


def test_kill_9_then_resume_equals_an_uninterrupted_run(model, tmp_path):
    texts = corpus(60_000, seed=3)
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"n": np.arange(len(texts)), "text": texts}), path)
    args = [model, path, "--id-column", "n", "--chunk-rows", "2000", "--threads", "1", "-q"]
    st_embed(*args[:2], "-o", tmp_path / "whole", *args[2:])
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "st_runtime.bulk.cli", *map(str, args[:2]), "-o", str(out),
                             *map(str, args[2:])])  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "part-00003.parquet").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "st-embed ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_SUCCESS").exists()
    parts_before = len(list(out.glob("part-*.parquet")))
    assert parts_before < 30
    resumed = st_embed(*args[:2], "-o", out, *args[2:-1])
    assert "resuming after" in resumed.stderr
    (wt, we), (kt, ke) = embeddings(tmp_path / "whole"), embeddings(out)
    assert kt.column("n").to_pylist() == list(range(len(texts))) == wt.column("n").to_pylist()
    np.testing.assert_array_equal(we, ke)  # same chunks, same batches: the same bits
    assert json.loads((out / "_run.json").read_text())["resumed_after_parts"] >= parts_before - 1


def test_other_settings_are_refused_unless_overwrite(parquet_20k, model, tmp_path):
    path, _ = parquet_20k
    st_embed(model, path, "-o", tmp_path / "o", "--chunk-rows", "10000", "-q")
    r = st_embed(model, path, "-o", tmp_path / "o", "--chunk-rows", "10000", "--precision", "float16", check=False)
    assert r.returncode == 1 and "other settings" in r.stderr and "precision" in r.stderr
    st_embed(model, path, "-o", tmp_path / "o", "--chunk-rows", "10000", "--precision", "float16", "--overwrite")
    assert embeddings(tmp_path / "o")[0].schema.field("embedding").type.value_type == pa.float16()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    r = st_embed(model, path, "-o", tmp_path / "foreign", check=False)
    assert r.returncode == 1 and "not written by st-embed" in r.stderr


def test_bad_input_names_columns_and_rows(model, tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a", "b"], "key": [1, 2]}), path)
    r = st_embed(model, path, "-o", tmp_path / "o1", check=False)
    assert r.returncode == 1 and "no column 'text'" in r.stderr and "['body', 'key']" in r.stderr
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "fine"}\n{"text": null}\n{"text": 5}\n{"text": "also fine"}\n')
    r = st_embed(model, nulls, "-o", tmp_path / "o2", check=False)
    assert r.returncode == 1 and "row 1 has no text to embed (null)" in r.stderr
    st_embed(model, nulls, "-o", tmp_path / "o3", "--skip-invalid", "-q")
    table, _ = embeddings(tmp_path / "o3")
    assert table.column("embedding").null_count == 2 and table.num_rows == 4
    assert table.column("embedding").is_null().to_pylist() == [False, True, True, False]
    assert json.loads((tmp_path / "o3" / "_run.json").read_text())["invalid_rows"] == 2


def test_empty_input_gives_empty_output_with_the_schema(model, tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), path)
    st_embed(model, path, "-o", tmp_path / "o", "--id-column", "id", "-q")
    table = pq.read_table(tmp_path / "o")
    assert table.num_rows == 0
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("embedding").type.list_size == 32


def test_jsonl_csv_and_text_inputs_agree(model, encoder, tmp_path):
    texts = [*corpus(500, seed=5), 'quotes " and, commas', "unicode: Москва 東京 😀"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    pacsv.write_csv(pa.table({"id": list(range(len(texts))), "text": texts}), tmp_path / "in.csv")
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    ref = encoder.encode(texts)
    for name in ("in.jsonl", "in.csv", "in.txt"):
        st_embed(model, tmp_path / name, "-o", tmp_path / f"out-{name}", "--chunk-rows", "128", "-q")
        table, emb = embeddings(tmp_path / f"out-{name}")
        assert table.num_rows == len(texts), name
        assert_parity(ref, emb)


@pytest.mark.parametrize("precision", ["float16", "int8", "uint8", "binary", "ubinary"])
def test_precisions(model, encoder, tmp_path, precision):
    texts = corpus(300, seed=7)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    st_embed(model, tmp_path / "in.txt", "-o", tmp_path / "o", "--precision", precision, "--chunk-rows", "100", "-q")
    _, got = embeddings(tmp_path / "o")
    emb = encoder.encode(texts)
    ranges = None
    if precision in ("int8", "uint8"):  # ranges from the first chunk, stored with the run
        settings = json.loads((tmp_path / "o" / "_st_embed.json").read_text())
        ranges = np.asarray(settings["calibration_ranges"], np.float32)
        np.testing.assert_allclose(ranges, np.vstack((emb[:100].min(0), emb[:100].max(0))), atol=1e-6)
    if precision == "float16":
        want = emb.astype(np.float16)
    else:  # sentence-transformers' own quantize_embeddings on the same vectors, where it is installed
        try:
            from sentence_transformers.util.quantization import quantize_embeddings as st_quantize
        except ImportError:
            st_quantize = quantize_embeddings
        want = st_quantize(emb, precision=precision, ranges=ranges)
        np.testing.assert_array_equal(quantize_embeddings(emb, precision, ranges), want)
    assert got.dtype == want.dtype and got.shape == want.shape
    # the same vectors up to float rounding: a step (or a sign) may differ where a value sits on its edge
    assert (got != want).mean() < 0.01
    if precision == "float16":
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_embed_iter_streams_in_order(encoder):
    texts = corpus(1000, seed=9)
    chunks = list(embed_iter(encoder, iter(texts), chunk_size=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert_parity(encoder.encode(texts), np.concatenate(chunks))
    with pytest.raises(ValueError, match="chunk_size"):
        next(embed_iter(encoder, texts, chunk_size=0))


def test_ray_data_map_batches(model, encoder):
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'st-runtime[ray]'")
    from st_runtime.ray import embed_dataset

    texts = corpus(2000, seed=11)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)])
        rows = embed_dataset(ds, str(model), num_workers=2, batch_size=256).take_all()
    finally:
        ray.shutdown()
    rows.sort(key=lambda r: r["i"])
    assert [r["text"] for r in rows] == texts
    assert_parity(encoder.encode(texts), np.stack([np.asarray(r["embedding"], np.float32) for r in rows]))
