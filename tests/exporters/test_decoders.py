"""Decoder families: Qwen3-Embedding (causal attention, last-token pooling, left padding, an appended EOS, an
instruction prompt) and EmbeddingGemma (Gemma 3 with bidirectional and sliding-window attention, mean pooling,
two Dense layers), as tiny random models built through transformers and sentence-transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TEXTS, assert_parity

from st_runtime import SentenceEncoder

pytestmark = pytest.mark.filterwarnings("ignore")

# lengths 1 and 2 after the special tokens, mixed lengths, and texts past max_seq_length
DECODER_TEXTS = [*TEXTS, "", "?", " ".join(["another long passage"] * 60)]


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """{family: (sentence-transformers folder, export)}: Qwen3 with int8, Gemma 3 asked for opt and (as on a GPU
    machine, where fp16 can be validated) fp16."""
    pytest.importorskip("sentence_transformers")
    from tiny_models import build_tiny_gemma, build_tiny_qwen3

    from exporters import export_model
    from exporters.variants import PLANS, VariantPlan

    root = tmp_path_factory.mktemp("decoders")
    out = {}
    src = build_tiny_qwen3(root / "qwen3")
    out["qwen3"] = (src, export_model(str(src), output=root / "qwen3-onnx", variants=["opt", "int8"], log=print))
    src = build_tiny_gemma(root / "gemma3")
    with pytest.MonkeyPatch.context() as mp:  # this CPU cannot validate fp16: ask as a GPU machine would
        mp.setattr(VariantPlan, "unavailable_reason", lambda self: None)
        assert PLANS["fp16"].unavailable_reason() is None
        out["gemma3"] = (src, export_model(str(src), output=root / "gemma3-onnx", variants=["opt", "fp16"], log=print))
    return out


@pytest.fixture(scope="module")
def references(decoders):
    from sentence_transformers import SentenceTransformer

    return {f: SentenceTransformer(str(src), device="cpu").eval() for f, (src, _) in decoders.items()}


FAMILIES = ("qwen3", "gemma3")


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_in_mixed_batches_and_alone(decoders, references, family):
    enc = SentenceEncoder(decoders[family][1])
    ref = references[family].encode(DECODER_TEXTS, batch_size=4)
    assert_parity(ref, enc.encode(DECODER_TEXTS, batch_size=len(DECODER_TEXTS)))
    assert_parity(ref, enc.encode(DECODER_TEXTS))
    assert_parity(ref, np.stack([enc.encode(t) for t in DECODER_TEXTS]))
    manifest = json.loads((decoders[family][1] / "manifest.json").read_text())
    val = manifest["towers"]["text"]["variants"]["fp32"]["validation"]
    assert val["passed"] and val["min_cosine"] >= 0.99999


@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_are_sentence_transformers_ids(decoders, references, family):
    """tokenizer.json reproduces sentence-transformers' input ids and mask exactly, padding side included (Qwen3:
    <|endoftext|> appended, also after truncation, padded on the left; Gemma: <bos> ... <eos>)."""
    enc = SentenceEncoder(decoders[family][1])
    ref_model = references[family]
    for texts in (DECODER_TEXTS, DECODER_TEXTS[:1], ["", "a b c d e f g"]):
        want = ref_model.preprocess(texts)
        got = enc.tokenize(texts)
        for key in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(got[key], want[key].numpy(), err_msg=f"{family} {key} {texts[:2]}")
    tok = ref_model.tokenizer
    ids = enc.tokenize([DECODER_TEXTS[-1]])["input_ids"][0]
    assert len(ids) == ref_model.max_seq_length
    if family == "qwen3":
        assert tok.padding_side == "left"
        assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")  # kept when the text is cut
        assert enc.tokenize(["", "a"])["attention_mask"][0].tolist()[0] == 0  # pads on the left
    else:
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_at_lengths_one_two_and_max_with_left_padding(decoders, references, family):
    """The graph itself at sequence length 1, 2 and max_seq_length, batch 1 and many, and in a batch padded on
    the left: the tracer bakes Python conditions (causal-mask shortcuts, sliding windows) into the graph."""
    import torch

    enc = SentenceEncoder(decoders[family][1])
    ref_model = references[family]
    session = enc.text_tower.session
    tok_id = 300  # an ordinary token of both tiny vocabularies
    n = ref_model.max_seq_length
    rows = {1: [tok_id], 2: [tok_id, tok_id + 1], n: [tok_id + (i % 7) for i in range(n)]}
    cases = [([rows[1]], None), ([rows[2]], None), ([rows[n]], None), ([rows[1], rows[1]], None)]
    for side in ("left", "right"):
        width = n
        ids = np.zeros((3, width), dtype=np.int64)
        mask = np.zeros((3, width), dtype=np.int64)
        for r, row in enumerate((rows[1], rows[2], rows[n])):
            sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[r, sl], mask[r, sl] = row, 1
        cases.append((ids, mask))
    for ids, mask in cases:
        ids = np.asarray(ids, dtype=np.int64)
        mask = np.ones_like(ids) if mask is None else mask
        got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        with torch.no_grad():
            feats = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            ref = ref_model(feats)["sentence_embedding"].numpy()
        assert_parity(ref, got)
        # every row as it is alone: padding does not change a text's embedding
        alone = [
            session.run(None, {"input_ids": i[m == 1][None], "attention_mask": m[m == 1][None]})[0][0]
            for i, m in zip(ids, mask)
        ]
        assert_parity(np.stack(alone), got)


def test_left_padded_mixed_batch_equals_batch_of_one(decoders):
    """st_runtime pads Qwen3's batches on the left (pad ids and zero mask first), and a text's embedding in a
    batch of very different lengths is its embedding alone."""
    enc = SentenceEncoder(decoders["qwen3"][1])
    assert enc.text_tower.padding_side == "left"
    feeds = enc.tokenize(DECODER_TEXTS)
    lengths = feeds["attention_mask"].sum(1)
    assert lengths.min() < lengths.max() // 4  # really mixed
    for row, n in zip(feeds["attention_mask"], lengths):
        assert row[-n:].all() and not row[: len(row) - n].any()
    pad = enc.text_tower.pad_id
    assert all((ids[: len(ids) - n] == pad).all() for ids, n in zip(feeds["input_ids"], lengths))
    batch = enc.text_tower.runner(feeds)
    alone = np.stack([enc.encode(t) for t in DECODER_TEXTS])
    assert_parity(alone, batch)
    # token embeddings: each text's own rows (not its left pads), as alone
    tokens = enc.encode(DECODER_TEXTS, output_value="token_embeddings", batch_size=len(DECODER_TEXTS))
    for text, rows, n in zip(DECODER_TEXTS, tokens, lengths):
        assert rows.shape[0] == n
        np.testing.assert_allclose(rows, enc.encode([text], output_value="token_embeddings")[0], atol=1e-4)


def test_prompts_and_truncate_dim(decoders, references):
    from tiny_models import GEMMA_PROMPTS, QWEN3_PROMPTS

    texts = ["What is the capital of China?", "Explain gravity", "The capital of China is Beijing."]
    for family, prompts in (("qwen3", QWEN3_PROMPTS), ("gemma3", GEMMA_PROMPTS)):
        enc, ref_model = SentenceEncoder(decoders[family][1]), references[family]
        assert enc.prompts == ref_model.prompts == prompts
        assert_parity(ref_model.encode_query(texts), enc.encode_query(texts))
        assert_parity(ref_model.encode_document(texts), enc.encode_document(texts))
        assert not np.allclose(enc.encode_query(texts), enc.encode(texts), atol=1e-4)  # the prompt is applied
        # Matryoshka: the first dimensions, as sentence-transformers cuts them (after Normalize)
        ref = ref_model.encode_query(texts, truncate_dim=8)
        got = enc.encode_query(texts, truncate_dim=8)
        assert got.shape == ref.shape == (3, 8)
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_manifest_records_padding_and_variants_with_reasons(decoders):
    qwen = json.loads((decoders["qwen3"][1] / "manifest.json").read_text())
    assert qwen["architecture"]["family"] == "qwen3"
    assert qwen["towers"]["text"]["tokenizer"]["padding_side"] == "left"
    assert qwen["embedding"]["pooling"]["modes"] == ["lasttoken"] and qwen["embedding"]["normalized"]
    rejected = qwen["export"]["rejected_variants"]
    assert "opt" not in qwen["towers"]["text"]["variants"]
    assert "no Qwen3 fusion" in rejected["opt"]["error"]
    # int8 is kept only through its gate
    int8 = qwen["towers"]["text"]["variants"].get("int8") or rejected["int8"]
    assert int8["validation"]["gate_min_cosine"] == 0.99
    assert (int8["status"] == "passed") == int8["validation"]["passed"]

    gemma = json.loads((decoders["gemma3"][1] / "manifest.json").read_text())
    assert gemma["towers"]["text"]["tokenizer"]["padding_side"] == "right"
    assert [d["out_features"] for d in gemma["embedding"]["dense"]] == [128, 32]
    assert not any(d["bias"] for d in gemma["embedding"]["dense"])
    assert set(gemma["towers"]["text"]["variants"]) == {"fp32"}
    assert "float16" in gemma["export"]["rejected_variants"]["fp16"]["error"]
    assert "no Gemma 3 fusion" in gemma["export"]["rejected_variants"]["opt"]["error"]
    assert not list(decoders["gemma3"][1].glob("*fp16*"))


def test_gemma_bidirectional_and_sliding_window_are_exercised(decoders, references):
    """The tiny Gemma's window is shorter than max_seq_length and longer than the texts st-export traces with, so
    a window baked in at tracing (or none) would fail the long texts; attention is bidirectional: changing the
    last token changes the first token's state."""
    import torch
    from tiny_models import GEMMA_SLIDING_WINDOW

    ref_model = references["gemma3"]
    config = ref_model[0].auto_model.config
    assert config.use_bidirectional_attention
    assert config.sliding_window == GEMMA_SLIDING_WINDOW // 2 + 1 < ref_model.max_seq_length
    feats = ref_model.preprocess(["a b c d", "a b c e"])
    with torch.no_grad():
        states = ref_model[0](feats)["token_embeddings"]
    assert not torch.allclose(states[0, 1], states[1, 1])


def test_int8_of_a_graph_with_external_data(decoders, tmp_path):
    """int8 of a model over 2 GB (Qwen3-Embedding-0.6B in fp32): built from the graph's structure with the weights
    read from disk one at a time, written with external data itself (forced here on the tiny model), and no scratch
    file stays in the export."""
    from exporters import export_model

    src = decoders["qwen3"][0]
    out = export_model(str(src), output=tmp_path / "ext", external_data=True, variants=["int8"], log=print)
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["towers"]["text"]["variants"]["int8"]
    assert int8["status"] == "passed" and int8["external_data"]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.onnx.data",
        "model_int8.onnx",
        "model_int8.onnx.data",
        "tokenizer.json",
    ]
    assert_parity(
        SentenceEncoder(decoders["qwen3"][1], variant="int8").encode(TEXTS),
        SentenceEncoder(out, variant="int8").encode(TEXTS),
        0.999,
    )
