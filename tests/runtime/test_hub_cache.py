"""Loading by name on the runtime alone (no torch): names, the export cache, downloads of pushed exports (a
repository placed in the local Hugging Face cache as snapshot_download leaves it, loaded with HF_HUB_OFFLINE=1),
their sha256 check, the error naming the fixes where an export would be needed, and `st-runtime cache`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXTS, offline_hub, place_in_hf_cache

from st_runtime import SentenceEncoder, load
from st_runtime.errors import ArtifactCorruptError, ExportUnavailableError, ModelNameError
from st_runtime.hub import cache
from st_runtime.hub.cli import main as cache_cli

PUSHED = "test-org/tiny-bert-st-runtime"  # a repository st-export --push-to-hub made
SOURCE = "test-org/tiny-bert"  # a sentence-transformers repository (needs exporting)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_bert):
    pytest.importorskip("huggingface_hub", reason="needs the hub extra: pip install 'st-runtime[hub]'")
    hf, _ = offline_hub(monkeypatch, tmp_path)
    place_in_hf_cache(tiny_bert[1], hf, PUSHED, COMMIT)
    place_in_hf_cache(tiny_bert[0], hf, SOURCE, COMMIT)
    return hf


def test_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exported").mkdir()
    assert cache.repo_id_of("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert cache.repo_id_of("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert cache.repo_id_of("hf://BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert cache.repo_id_of("hf://all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    for folder in ("exported", "./x", "/abs/x", "~/x", "a/b/c", Path("all-MiniLM-L6-v2")):
        assert cache.repo_id_of(folder) is None, folder
    with pytest.raises(ModelNameError, match="hf://ORG/NAME"):
        cache.repo_id_of("hf://a/b/c")


def test_revision_is_refused_for_a_folder(tiny_bert):
    with pytest.raises(ValueError, match="local folder"):
        SentenceEncoder(tiny_bert[1], revision="main")


SCRIPT = """
import json, sys
import numpy as np
from st_runtime import SentenceEncoder
texts = json.loads(sys.argv[3])
by_name = SentenceEncoder(sys.argv[1], variant=sys.argv[4] or None)
by_folder = SentenceEncoder(sys.argv[2], variant=by_name.variant)
np.testing.assert_array_equal(by_name.encode(texts), by_folder.encode(texts))
heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "transformers", "sentence_transformers", "onnx"))
print(json.dumps({"path": str(by_name.path), "variant": by_name.variant, "heavy": heavy}))
"""


@pytest.mark.parametrize("variant", [None, "int8"])
def test_pushed_export_loads_from_the_hf_cache_without_torch(hub, tiny_bert, variant):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, "hf://" + PUSHED, str(tiny_bert[1]), json.dumps(TEXTS), variant or ""],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["heavy"] == []
    folder = Path(out["path"])
    assert folder == cache.entry_path(PUSHED, COMMIT, "hub-all" if variant is None else "hub-int8")
    manifest = json.loads((folder / "manifest.json").read_text())
    # only the files the manifest lists, and of the graphs only the variant asked for
    want = set(manifest["files"]) if variant is None else {"tokenizer.json", "model_int8.onnx"}
    assert {p.name for p in folder.iterdir()} == want | {"manifest.json"}


def test_a_file_whose_sha256_differs_is_refused(hub):
    blob = next(
        p
        for p in (hub / ("models--" + PUSHED.replace("/", "--")) / "snapshots" / COMMIT).iterdir()
        if p.name == "model.onnx"
    ).resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    blob.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=r"model\.onnx of test-org/tiny-bert-st-runtime"):
        SentenceEncoder(PUSHED)
    assert cache.entries() == []
    assert not list(cache.repo_dir(PUSHED).glob(f"{COMMIT}/.*partial*"))


def test_a_model_to_export_without_the_export_extra_names_the_fixes(hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on the slim install: find_spec("torch") is None
    with pytest.raises(ExportUnavailableError) as info:
        load(SOURCE)
    message = str(info.value)
    assert 'pip install "st-runtime[export]"' in message and f"st-export {SOURCE}" in message
    assert "copy the folder" in message and "torch" in message


def test_offline_and_not_cached(hub):
    with pytest.raises(ModelNameError, match="HF_HUB_OFFLINE=1") as info:
        SentenceEncoder("test-org/never-downloaded")
    assert "hub cannot be reached" in str(info.value)


def test_without_huggingface_hub_the_cache_still_serves(hub, monkeypatch, tiny_bert):
    """A production machine without the [hub] extra: what was cached (with its ref) loads; anything else names the
    extra to install."""
    first = SentenceEncoder(PUSHED)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now fails
    again = SentenceEncoder(PUSHED)
    assert again.path == first.path
    with pytest.raises(ModelNameError, match=r"st-runtime\[hub\]"):
        SentenceEncoder("test-org/other")


def test_cache_cli_ls_path_rm(hub, capsys):
    folder = SentenceEncoder(PUSHED).path
    capsys.readouterr()
    assert cache_cli(["cache", "ls"]) == 0
    listing = capsys.readouterr().out
    assert PUSHED in listing and COMMIT[:12] in listing and "downloaded" in listing and "fp32,int8" in listing
    assert cache_cli(["cache", "path", "hf://" + PUSHED]) == 0
    assert capsys.readouterr().out.split() == [str(folder)]
    assert cache_cli(["cache", "rm", PUSHED]) == 0
    assert str(folder) in capsys.readouterr().out and not folder.exists()
    assert cache_cli(["cache", "path", PUSHED]) == 1
    assert "not in the export cache" in capsys.readouterr().err


def test_a_second_load_reads_the_cache(hub, tiny_bert):
    first = SentenceEncoder(PUSHED)
    stamp = (first.path / "manifest.json").stat().st_mtime_ns
    second = load(PUSHED)
    assert second.path == first.path and (second.path / "manifest.json").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.encode(TEXTS), second.encode(TEXTS))
