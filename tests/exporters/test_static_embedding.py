"""StaticEmbedding models (static-retrieval-mrl-en-v1, minishlab/potion-*): a tokenizers.Tokenizer used without
special tokens + an EmbeddingBag mean, exported as a lookup and a masked mean, against sentence-transformers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import TEXTS

from st_runtime import SentenceEncoder

pytestmark = pytest.mark.filterwarnings("ignore")

LONG = " ".join(["a long text that goes well past the maximum sequence length"] * 40)
TRICKY = [
    "",
    " ",
    "a",  # one token
    "?",
    "London",
    "How big is London",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "I love this! 😀🎉👍🏽 👩‍👩‍👧‍👦",
    "e\u0301te\u0301 cafe\u0301",
    "NUL\x00 and \u202ertl\u202c and tab\tnew\nline",
    "[CLS] [SEP] [PAD] <s> </s>",  # special tokens written in the text
    "x" * 300,
    LONG,
    LONG + " past the end",
]


def assert_parity(ref, got, gate: float = 0.99999) -> None:
    """Cosine >= gate per row, where two zero rows (an empty text) count as equal (exporters.validate.cosines)."""
    from exporters.validate import cosines

    assert got.dtype == np.float32 and got.shape == ref.shape, (got.dtype, got.shape, ref.shape)
    cos = cosines(np.asarray(ref), got)
    assert np.all(cos >= gate), f"cosines below {gate}: {cos[cos < gate]} at {np.flatnonzero(cos < gate)}"


def _ref(src, texts, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(src), device="cpu").encode(texts, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # WordPiece, truncation at 48 in tokenizer.json, Normalize
        {"max_length": None, "normalize": False},  # no truncation at all (as the hub's static models)
        {"tokenizer": "unigram", "dense": 8},  # a template that adds <s> </s>, and a Dense layer
    ],
    ids=["wordpiece-truncated", "untruncated-unnormalized", "unigram-dense"],
)
def test_static_parity_on_tricky_text(zoo_families, kwargs):
    src, out = zoo_families.static(**kwargs)
    enc = SentenceEncoder(out)
    ref = _ref(src, TRICKY)
    got = enc.encode(TRICKY)
    assert_parity(ref, got)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.encode(TRICKY, batch_size=1), ref, rtol=1e-5, atol=1e-6)  # each text alone
    one_by_one = np.stack([enc.encode(t) for t in TRICKY])  # batches of one, 1-D
    np.testing.assert_allclose(one_by_one, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=4), _ref(src, TEXTS), rtol=1e-5, atol=1e-6)
    if "dense" not in kwargs:  # the empty text is all zeros in sentence-transformers (an empty bag), normalized or not
        assert not ref[0].any() and not got[0].any()


def test_static_tokenizes_without_special_tokens_and_truncates_as_its_tokenizer_json(zoo_families):
    src, out = zoo_families.static()
    enc = SentenceEncoder(out)
    from sentence_transformers import SentenceTransformer

    ref_model = SentenceTransformer(str(src), device="cpu")
    tok = json.loads((out / "manifest.json").read_text())["towers"]["text"]["tokenizer"]
    assert tok["add_special_tokens"] is False and tok["max_seq_length"] == 48
    assert enc.max_seq_length == 48
    feats = ref_model.preprocess(["How big is London", LONG])
    ids = feats["input_ids"].tolist()
    mine = enc.tokenize(["How big is London", LONG])
    n0 = int(mine["attention_mask"][0].sum())
    assert mine["input_ids"][0, :n0].tolist() == ids[: feats["offsets"][1]]  # no [CLS] / [SEP]
    assert mine["attention_mask"][1].sum() == 48 and mine["input_ids"][1].tolist() == ids[feats["offsets"][1] :]
    # with special tokens the embedding would differ: the check can fail
    special = enc.tokenizer.encode_batch(["How big is London"])[0].ids
    assert special != mine["input_ids"][0, :n0].tolist()
    # a lower per-call limit truncates further, as for any model
    short = enc.encode([LONG], max_seq_length=5)
    assert not np.allclose(short, enc.encode([LONG]), atol=1e-4)


def test_static_pairs_and_prompts_match_sentence_transformers(zoo_families):
    """sentence-transformers tokenizes a [text, pair] item as a pair (without special tokens) for StaticEmbedding."""
    from test_families import PAIRS

    src, out = zoo_families.static(tokenizer="unigram", dense=8)
    enc = SentenceEncoder(out)
    pairs = [list(p) for p in PAIRS]
    assert_parity(_ref(src, pairs), enc.encode(pairs))
    assert_parity(_ref(src, TEXTS, prompt="query: "), enc.encode(TEXTS, prompt="query: "))


def test_static_manifest_and_graph(zoo_families):
    import onnx

    _, out = zoo_families.static()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"]["family"] == "static-embedding"
    text = manifest["towers"]["text"]
    assert text["inputs"] == ["input_ids", "attention_mask"]
    assert sorted(text["variants"]) == ["fp32"]  # variants=(): nothing for opt or int8 to improve
    val = text["variants"]["fp32"]["validation"]
    assert val["min_cosine"] >= 0.99999 and {"over_max_seq_length", "pair"} <= set(val["tags"])
    assert manifest["embedding"] == {
        "dimension": 16,
        "pooling": None,
        "dense": [],
        "normalized": True,
        "similarity_fn_name": "cosine",
    }
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "Gather" in ops and "MatMul" not in ops


@pytest.mark.parametrize("model2vec_keys", [False, True], ids=["0_StaticEmbedding", "model2vec-weights"])
def test_static_hub_layouts(zoo_families, tmp_path, model2vec_keys):
    from tiny_models import static_to_hub_layout

    from exporters import export_model

    src, out = zoo_families.static()
    hub = static_to_hub_layout(src, tmp_path / "hub", model2vec_keys=model2vec_keys)
    hub_out = export_model(str(hub), output=tmp_path / "onnx", log=lambda _m: None)
    ref = _ref(hub, TRICKY)
    np.testing.assert_allclose(SentenceEncoder(hub_out).encode(TRICKY), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(SentenceEncoder(out).encode(TRICKY), ref, rtol=1e-5, atol=1e-6)


def test_static_long_text_cut_counts_tokens_without_special_tokens(zoo_families, monkeypatch):
    """The long-text shortcut (WordPiece tokenizers) must count tokens as the model tokenizes them, without
    [CLS]/[SEP]: a text whose prefix at the cut holds max_seq_length - 1 tokens (max_seq_length + 1 with special
    tokens) must not be cut there, or its last kept token would be lost."""
    from st_runtime.inputs import PRECUT_FACTOR, LongTextCutter
    from st_runtime.longtext import cutter

    # the cut alone (its compaction would shorten the over-long words below and leave nothing to cut)
    monkeypatch.setattr(cutter, "_substitute", lambda text, codes, _matches, _replace: (text, codes))

    src, out = zoo_families.static()
    enc = SentenceEncoder(out)
    n = enc.max_seq_length
    head = " ".join(["london"] * (n - 2)) + " "
    cut_at = PRECUT_FACTOR * n * 2 // 3  # inside the window the cutter searches for its last space
    # n - 2 words and one over-long word ([UNK]) end at the only space of the window; then another [UNK] and more
    text = head + "x" * (cut_at - len(head)) + " " + "y" * (PRECUT_FACTOR * n) + " paris" * 10
    assert len(enc.tokenizer.encode(text[:cut_at], add_special_tokens=False).ids) == n - 1
    assert LongTextCutter(enc.tokenizer, add_special_tokens=True).cut(text) == text[:cut_at]  # the wrong count cuts
    assert enc._cutter.cut(text) == text
    np.testing.assert_allclose(enc.encode([text]), _ref(src, [text]), rtol=1e-5, atol=1e-6)


def test_static_embedding_with_other_bag_settings_is_refused(zoo_families):
    import torch
    from sentence_transformers import SentenceTransformer

    from exporters import errors, specs

    module = SentenceTransformer(str(zoo_families.static()[0]), device="cpu")[0]
    adapt = specs.spec_for("StaticEmbedding").traced_input_module
    adapt(module)  # as sentence-transformers builds it
    for kwargs, what in [({"mode": "max"}, "mode"), ({"max_norm": 1.0}, "max_norm"), ({"padding_idx": 0}, "padding")]:
        module.embedding = torch.nn.EmbeddingBag.from_pretrained(module.embedding.weight, **kwargs)
        with pytest.raises(errors.UnsupportedModelError, match=what):
            adapt(module)


def test_static_embedding_followed_by_pooling_is_refused_with_a_reason(zoo_families, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    from exporters import errors, export_model

    static = SentenceTransformer(str(zoo_families.static(normalize=False, max_length=None)[0]), device="cpu")[0]
    SentenceTransformer(modules=[static, models.Pooling(16)], device="cpu").save(str(tmp_path / "m"))
    with pytest.raises(errors.UnsupportedModelError, match="Pooling module after its StaticEmbedding"):
        export_model(str(tmp_path / "m"), output=tmp_path / "out", log=lambda _m: None)
    assert not (tmp_path / "out").exists()


def test_static_runs_without_heavy_imports(zoo_families):
    import subprocess
    import sys

    _, out = zoo_families.static()
    code = (
        "import sys\nfrom st_runtime import SentenceEncoder\n"
        f"SentenceEncoder({str(out)!r}).encode(['How big is London', ''])\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in "
        "{'torch', 'transformers', 'sentence_transformers', 'onnx', 'exporters'}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_add_special_tokens_is_in_the_typed_schema(zoo_families, tmp_path):
    """add_special_tokens is part of the typed schema: a mistyped value is an error naming the key."""
    from st_runtime.errors import ManifestError

    out = shutil.copytree(zoo_families.static()[1], tmp_path / "m")
    m = json.loads((out / "manifest.json").read_text())
    m["towers"]["text"]["tokenizer"]["add_special_tokens"] = "no"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="add_special_tokens"):
        SentenceEncoder(out)
