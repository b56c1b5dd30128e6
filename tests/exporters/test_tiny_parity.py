"""Every architecture x pooling mode: a tiny random model, exported and compared with
sentence-transformers on mixed lengths, batch of one, one-token input and over-long input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TEXTS, assert_parity, fastest_timed
from tiny_models import POOLING_MODES, TINY_ARCHITECTURES

from st_runtime import SentenceEncoder

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("pooling", POOLING_MODES)
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_parity_arch_x_pooling(zoo, arch, pooling):
    src = zoo.model(arch, pooling=pooling)
    out = zoo.export(arch, pooling=pooling)
    ref_model = zoo.reference(src)
    ref = ref_model.encode(TEXTS, batch_size=4)
    # the default: the variant within fp32 accuracy that st-export timed fastest on this CPU
    assert SentenceEncoder(out).variant == fastest_timed(out)
    for variant in ("fp32", "opt"):
        enc = SentenceEncoder(out, variant=variant)
        # mixed lengths in one batch, and the default batching
        assert_parity(ref, enc.encode(TEXTS, batch_size=len(TEXTS)))
        assert_parity(ref, enc.encode(TEXTS))
        # batch of one, item by item
        assert_parity(ref, np.stack([enc.encode(t) for t in TEXTS]))
    # the manifest records the pooling and the validation that export ran
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding"]["pooling"]["modes"] == [pooling]
    for variant in ("fp32", "opt"):
        val = manifest["towers"]["text"]["variants"][variant]["validation"]
        assert val["passed"] and val["min_cosine"] >= 0.99999


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_sequence_of_one_token(zoo, arch):
    """The graph itself at sequence length 1 and 2 (tracing must not bake in a length)."""
    import torch

    src = zoo.model(arch, pooling="mean")
    enc = SentenceEncoder(zoo.export(arch, pooling="mean"))
    ref_model = zoo.reference(src)
    session = enc.text_tower.session
    cls_id = enc.tokenizer.encode("").ids[0]
    for ids in ([[cls_id]], [[cls_id, cls_id + 1]], [[cls_id], [cls_id]]):
        ids_np = np.asarray(ids, dtype=np.int64)
        feeds = {"input_ids": ids_np, "attention_mask": np.ones_like(ids_np), "token_type_ids": np.zeros_like(ids_np)}
        got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
        with torch.no_grad():
            feats = {k: torch.from_numpy(v) for k, v in feeds.items() if k in enc.text_tower.inputs}
            ref = ref_model(feats)["sentence_embedding"].numpy()
        assert_parity(ref, got)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_truncates_at_max_seq_length_like_sentence_transformers(zoo, arch):
    src = zoo.model(arch, pooling="mean")
    enc = SentenceEncoder(zoo.export(arch, pooling="mean"))
    ref_model = zoo.reference(src)
    assert enc.max_seq_length == ref_model.max_seq_length
    long_text = " ".join(f"word{i}" for i in range(2000))
    n = len(enc.tokenizer.encode(long_text).ids)
    assert n == ref_model.max_seq_length
    assert_parity(ref_model.encode([long_text]), enc.encode([long_text]))
    # A text that only differs after the cut gives the same embedding.
    np.testing.assert_allclose(enc.encode(long_text), enc.encode(long_text + " extra words at the end"), atol=1e-6)


@pytest.mark.parametrize(
    "arch,pooling,dense,normalize",
    [
        ("bert", "cls", [(24, "Tanh")], True),  # LaBSE-style
        ("distilbert", "mean", [(16, "Tanh")], False),  # distiluse-style
        ("distilbert", "mean", [(16, "Identity")], False),  # clip-multilingual-style text tower
        ("xlm-roberta", "mean", [(40, "ReLU"), (8, "Tanh")], True),
        ("mpnet", "max", None, False),
    ],
)
def test_dense_and_normalize(zoo, arch, pooling, dense, normalize):
    src = zoo.model(arch, pooling=pooling, dense=dense, normalize=normalize)
    out = zoo.export(arch, pooling=pooling, dense=dense, normalize=normalize)
    enc = SentenceEncoder(out)
    ref_model = zoo.reference(src)
    dim = dense[-1][0] if dense else 32
    assert enc.get_sentence_embedding_dimension() == dim == ref_model.get_embedding_dimension()
    got = enc.encode(TEXTS)
    assert_parity(ref_model.encode(TEXTS), got)
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize
    manifest = json.loads((out / "manifest.json").read_text())
    assert [d["out_features"] for d in manifest["embedding"]["dense"]] == [d[0] for d in (dense or [])]
    assert manifest["embedding"]["normalized"] == normalize
    # a model ending in Normalize also gives its embedding before it (TEI's normalize=false, long inputs' pooling),
    # checked at export against sentence-transformers with the Normalize passed over
    tower = manifest["towers"]["text"]
    assert ("unnormalized_output" in tower) == normalize
    if normalize:
        from exporters.validate import reference_unnormalized

        report = tower["variants"]["fp32"]["validation"]["unnormalized"]
        assert report["passed"] and report["max_norm_rel_diff"] < 1e-5
        raw = enc.encode(TEXTS, output_value="sentence_embedding_unnormalized")
        assert_parity(reference_unnormalized(ref_model, TEXTS), raw)
        assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)


def test_legacy_hub_layout(zoo, tmp_path):
    """Hub checkpoints written by sentence-transformers 2.x: legacy type paths, pooling_mode_*_tokens keys,
    a 2_Normalize entry without a folder."""
    from tiny_models import to_legacy_layout

    from exporters import export_model

    src = zoo.model("bert", pooling="mean_sqrt_len_tokens", dense=[(24, "Tanh")])
    legacy = to_legacy_layout(src, tmp_path / "legacy")
    modules = json.loads((legacy / "modules.json").read_text())
    assert modules[1]["type"] == "sentence_transformers.models.Pooling"
    assert not (legacy / modules[-1]["path"]).exists()
    out = export_model(str(legacy), output=tmp_path / "onnx", log=lambda _m: None)
    enc = SentenceEncoder(out)
    ref = zoo.reference(legacy).encode(TEXTS)
    assert_parity(ref, enc.encode(TEXTS))
    # Same weights, same vectors as the sentence-transformers 6 layout.
    assert_parity(
        SentenceEncoder(zoo.export("bert", pooling="mean_sqrt_len_tokens", dense=[(24, "Tanh")])).encode(TEXTS),
        enc.encode(TEXTS),
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding"]["pooling"]["modes"] == ["mean_sqrt_len_tokens"]
    assert manifest["embedding"]["normalized"] is True


def test_prompts_and_similarity_function(zoo):
    prompts = {"query": "query: ", "passage": "passage: ", "classification": "classify this: "}
    kwargs = dict(pooling="mean", prompts=prompts, default_prompt_name="classification", similarity_fn_name="dot")
    src = zoo.model("bert", **kwargs)
    enc = SentenceEncoder(zoo.export("bert", **kwargs))
    ref_model = zoo.reference(src)
    assert enc.prompts == ref_model.prompts
    assert enc.default_prompt_name == "classification"
    assert enc.similarity_fn_name == "dot"
    texts = TEXTS[:4]
    assert_parity(ref_model.encode(texts), enc.encode(texts))  # default prompt applied
    assert_parity(ref_model.encode_query(texts), enc.encode_query(texts))
    assert_parity(ref_model.encode_document(texts), enc.encode_document(texts))
    assert_parity(ref_model.encode(texts, prompt="custom: "), enc.encode(texts, prompt="custom: "))
    # The prompt really changes the input.
    assert not np.allclose(enc.encode(texts, prompt_name="query"), enc.encode(texts, prompt_name="passage"))
    a, b = enc.encode(texts[:2]), enc.encode(texts[2:4])
    np.testing.assert_allclose(enc.similarity(a, b), ref_model.similarity(a, b).numpy(), rtol=1e-5, atol=1e-6)
