"""The manifest schema: every key at every depth is known, typed and required or optional; the reader and
the writer refuse what does not fit, naming the key's path. Runs on a manifest st-export wrote on a GPU
machine (committed under benchmarks/results), so it needs no torch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from st_runtime.errors import ManifestError
from st_runtime.manifest import dump_manifest, load_manifest
from st_runtime.schema import SchemaError, check_manifest

WRITTEN = json.loads(
    (Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu-h200-minilm-manifest.json").read_text()
)


def _edit(fn):
    m = copy.deepcopy(WRITTEN)
    fn(m)
    return m


def test_a_manifest_st_export_wrote_fits():
    check_manifest(WRITTEN)


@pytest.mark.parametrize(
    "edit,path,message",
    [
        (
            lambda m: m["towers"]["text"]["tokenizer"].update(max_seq_lenght=64),
            "towers.text.tokenizer.max_seq_lenght",
            "unknown key",
        ),
        (
            lambda m: m["towers"]["text"]["variants"]["opt"].update(rank="5"),
            "towers.text.variants.opt.rank",
            "expected an integer, found str",
        ),
        (
            lambda m: m["towers"]["text"]["variants"]["opt"].update(exact=1),
            "towers.text.variants.opt.exact",
            "expected true or false",
        ),
        (lambda m: m["embedding"].pop("dimension"), "embedding.dimension", "missing"),
        (
            lambda m: m["towers"]["text"]["variants"]["fp16"].update(status="ok"),
            "towers.text.variants.fp16.status",
            "one of 'passed', 'failed', 'pending'",
        ),
        (
            lambda m: m["towers"]["text"]["tokenizer"].update(max_seq_length=True),
            "towers.text.tokenizer.max_seq_length",
            "expected an integer or null, found true",
        ),
        (lambda m: m["files"]["model.onnx"].update(size="1"), "files.model.onnx.size", "expected an integer"),
        (lambda m: m["export"].update(extra={}), "export.extra", "unknown key"),
        (lambda m: m.update(task="sparse"), "task", "not a model kind this st-runtime knows"),
        (lambda m: m["towers"]["text"].pop("tokenizer"), "towers.text.tokenizer", "needs its tokenizer"),
        (
            lambda m: m["towers"]["text"]["variants"]["opt"].update(file="gone.onnx"),
            "towers.text.variants.opt.file",
            "not listed under 'files'",
        ),
        (lambda m: m["towers"]["text"]["variants"].clear(), "towers.text.variants", "at least one entry"),
    ],
)
def test_what_does_not_fit_is_named_by_its_path(edit, path, message):
    with pytest.raises(SchemaError, match=message) as info:
        check_manifest(_edit(edit))
    assert info.value.path == path


def test_optional_keys_for_what_comes_next_are_accepted():
    check_manifest(
        _edit(lambda m: (m.update(task="embedding"), m["towers"]["text"]["tokenizer"].update(padding_side="left")))
    )


def test_reader_and_writer_refuse_a_bad_manifest(tmp_path):
    bad = _edit(lambda m: m["towers"]["text"]["tokenizer"].update(truncation="left"))
    with pytest.raises(ValueError, match=r"towers\.text\.tokenizer\.truncation: unknown key"):
        dump_manifest(bad, tmp_path)
    assert not (tmp_path / "manifest.json").exists()
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match=r"towers\.text\.tokenizer\.truncation: unknown key.*re-export"):
        load_manifest(tmp_path)
