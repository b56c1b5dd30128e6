"""Families beyond the architecture x pooling grid: text pairs (DPR ctx / nq-distilbert), GloVe-style word
embeddings, CLIP (text and image towers), in sentence-transformers 6's layout and the hub's legacy layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import TEXTS, assert_parity

from st_runtime import SentenceEncoder
from st_runtime.errors import UnsupportedInputError

pytestmark = pytest.mark.filterwarnings("ignore")

PAIRS = [
    ("London", "London has 9,787,426 inhabitants at the 2011 census."),
    ("Paris", "Paris is the capital and most populous city of France."),
    ("", "an empty title"),
    ("a title", ""),
    ("A short title", " ".join(["a long passage that goes past the maximum sequence length"] * 30)),
    (" ".join(["long title"] * 40), " ".join(["and a long passage"] * 40)),
]


# ------------------------------------------------------------------------------------------------ text pairs
@pytest.mark.parametrize("arch,pooling", [("bert", "cls"), ("distilbert", "mean"), ("bert", "mean")])
def test_text_pairs_match_sentence_transformers(zoo, arch, pooling):
    """[title, passage] items are tokenized as pairs (BERT: token_type_ids 1 on the second segment)."""
    src = zoo.model(arch, pooling=pooling, normalize=False)
    enc = SentenceEncoder(zoo.export(arch, pooling=pooling, normalize=False))
    ref_model = zoo.reference(src)
    ref = ref_model.encode([list(p) for p in PAIRS])
    assert_parity(ref, enc.encode([list(p) for p in PAIRS]))
    assert_parity(ref, enc.encode(PAIRS, batch_size=1))  # tuples, one at a time
    assert_parity(ref_model.encode([PAIRS[0]]), enc.encode([PAIRS[0]]))
    # A pair is not the concatenated text: the check can fail.
    joined = enc.encode([" ".join(p) for p in PAIRS[:2]])
    assert not np.allclose(joined, enc.encode(PAIRS[:2]), atol=1e-4)


def test_pair_uses_token_type_ids_for_bert(zoo):
    enc = SentenceEncoder(zoo.export("bert", pooling="cls", normalize=False))
    assert "token_type_ids" in enc.text_tower.inputs
    e = enc.tokenizer.encode("London", "London has inhabitants")
    assert set(e.type_ids) == {0, 1}
    ref_model = zoo.reference(zoo.model("bert", pooling="cls", normalize=False))
    feats = ref_model.preprocess([("London", "London has inhabitants")])
    assert feats["token_type_ids"][0].tolist() == e.type_ids


def test_export_validates_pairs(zoo):
    manifest = json.loads((zoo.export("bert", pooling="cls", normalize=False) / "manifest.json").read_text())
    val = manifest["towers"]["text"]["variants"]["fp32"]["validation"]
    assert "pair" in val["tags"] and "pair_over_max_seq_length" in val["tags"]
    assert manifest["towers"]["text"]["tokenizer"]["pairs"] is True


# ------------------------------------------------------------------------------------------------ GloVe
GLOVE_TEXTS = [
    "London is a big city",  # exact hits and stop words
    "LONDON london London",  # case: exact, then lower-case fallback
    "Hello, world! (hello) 'London'...",  # punctuation stripped from both ends
    "U.S. u.s. U.S it's don't rock'n'roll e-mail",  # inner punctuation kept; stripped forms
    "... !? — 9,787,426 inhabitants",  # punctuation-only tokens and stop-word punctuation
    "the a of and is",  # nothing left after stop words: zero vector
    "",  # empty
    "   \t\n ",  # whitespace only
    "unknown words only zzz qqq",  # all unknown
    "Москва 東京は日本の首都です。 café Café CAFÉ straße STRASSE ß",  # unicode, casing
    "The Weather Is Lovely Today.",  # stop word with capital letter is not a stop word as-is
    "hello",  # duplicated vocabulary entry: last id wins
    " ".join(["paris london"] * 50),
]


def test_glove_parity_on_tricky_text(zoo_families):
    src, out = zoo_families.glove()
    ref_model = zoo_families.reference(src)
    enc = SentenceEncoder(out)
    ref = ref_model.encode(GLOVE_TEXTS)
    got = enc.encode(GLOVE_TEXTS)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(enc.encode(GLOVE_TEXTS, batch_size=1), ref, atol=1e-6)
    assert np.all(got[5] == 0) and np.all(got[6] == 0)  # empty after stop words -> zero, as in ST
    # the tokenizer port gives the very ids sentence-transformers gives
    st_tok = ref_model[0].tokenizer
    for t in GLOVE_TEXTS:
        assert enc.tokenizer.tokenize(t) == st_tok.tokenize(t), t
    manifest = json.loads((out / "manifest.json").read_text())
    tok = manifest["towers"]["text"]["tokenizer"]
    assert tok["kind"] == "whitespace" and tok["do_lower_case"] is False
    assert tok["stop_words"] == sorted(st_tok.stop_words)
    assert manifest["architecture"]["family"] == "word-embeddings"


def test_glove_lower_case_truncation_and_custom_stop_words(zoo_families):
    src, out = zoo_families.glove(do_lower_case=True, max_seq_length=3, stop_words=["london", "is", "."])
    ref_model = zoo_families.reference(src)
    enc = SentenceEncoder(out)
    np.testing.assert_allclose(enc.encode(GLOVE_TEXTS), ref_model.encode(GLOVE_TEXTS), atol=1e-6)
    assert enc.max_seq_length == 3
    assert len(enc.tokenizer.encode("paris paris paris paris paris").ids) == 3


def test_glove_legacy_hub_layout(zoo_families, tmp_path):
    from tiny_models import glove_to_legacy_layout

    from exporters import export_model

    src, out = zoo_families.glove()
    legacy = glove_to_legacy_layout(src, tmp_path / "legacy")
    assert (legacy / "0_WordEmbeddings" / "whitespacetokenizer_config.json").is_file()
    assert (legacy / "0_WordEmbeddings" / "wordembedding_config.json").is_file()
    legacy_out = export_model(str(legacy), output=tmp_path / "onnx", log=lambda _m: None)
    ref = zoo_families.reference(legacy).encode(GLOVE_TEXTS)
    np.testing.assert_allclose(SentenceEncoder(legacy_out).encode(GLOVE_TEXTS), ref, atol=1e-6)
    np.testing.assert_allclose(SentenceEncoder(out).encode(GLOVE_TEXTS), ref, atol=1e-6)


def test_glove_refuses_pairs_with_a_typed_error(zoo_families):
    enc = SentenceEncoder(zoo_families.glove()[1])
    with pytest.raises(UnsupportedInputError, match=r"input 1 is a .text, text_pair. pair.*word-embeddings"):
        enc.encode(["London", ["London", "Paris"]])
    with pytest.raises(UnsupportedInputError, match="pairs are not supported"):  # the tokenizer itself refuses too
        enc.tokenizer.encode_batch([("London", "Paris")])


def test_word_embeddings_with_a_transformers_tokenizer_is_refused(zoo_families, tmp_path):
    """WordEmbeddings can wrap a Hugging Face tokenizer; st-export supports only the WhitespaceTokenizer and
    says so."""
    import numpy as np_
    from sentence_transformers import SentenceTransformer, models
    from tiny_models import minilm_dir
    from transformers import BertTokenizerFast

    from exporters import errors, export_model

    hf_tok = BertTokenizerFast.from_pretrained(str(minilm_dir()))
    emb = models.WordEmbeddings(hf_tok, np_.zeros((len(hf_tok), 4), dtype=np_.float32))
    st = SentenceTransformer(modules=[emb, models.Pooling(4, pooling_mode="mean")], device="cpu")
    st.save(str(tmp_path / "m"))
    with pytest.raises(errors.UnsupportedModelError, match=r"TransformersTokenizerWrapper.*WhitespaceTokenizer"):
        export_model(str(tmp_path / "m"), output=tmp_path / "out", log=lambda _m: None)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ CLIP
def test_clip_exports_two_towers(zoo_families):
    _, out = zoo_families.clip()
    manifest = json.loads((out / "manifest.json").read_text())
    towers = manifest["towers"]
    assert sorted(towers) == ["image", "text"]
    assert towers["text"]["variants"]["fp32"]["file"] == "text.onnx"
    assert towers["image"]["variants"]["fp32"]["file"] == "image.onnx"
    assert towers["image"]["inputs"] == ["pixel_values"]
    for t in towers.values():
        val = t["variants"]["fp32"]["validation"]
        assert t["variants"]["fp32"]["status"] == "passed" and val["min_cosine"] >= 0.99999
    assert any(tag.startswith("image_") for tag in towers["image"]["variants"]["fp32"]["validation"]["tags"])
    pre = towers["image"]["preprocessor"]
    assert pre["size"] == {"shortest_edge": 32} and pre["resample"] == 3 and pre["image_size"] == [32, 32]
    assert towers["text"]["tokenizer"]["max_seq_length"] == 77


def test_clip_text_only_use_loads_no_image_graph(zoo_families):
    enc = SentenceEncoder(zoo_families.clip()[1])
    enc.encode(["a photo of a red square"])
    assert enc._loaded_towers == {}
    assert enc.modalities == ["image", "text"]


def _images():
    from exporters.battery import image_battery

    return [img for _, img in image_battery()]


def test_clip_text_and_image_parity(zoo_families):
    from tiny_models import CAPTIONS

    src, out = zoo_families.clip()
    ref_model = zoo_families.reference(src)
    enc = SentenceEncoder(out)
    texts = CAPTIONS + TEXTS
    assert_parity(ref_model.encode(texts), enc.encode(texts))
    images = _images()
    ref_img = ref_model.encode(images)
    assert_parity(ref_img, enc.encode(images))
    assert_parity(ref_img, enc.encode(images, batch_size=1))
    assert_parity(ref_img[:1], enc.encode(images[0])[None])  # a single image: 1-D result
    # numpy arrays (H, W, C) and (C, H, W) are images too, as in sentence-transformers
    arr = np.asarray(images[0])
    assert_parity(ref_model.encode([arr]), enc.encode([arr]))
    assert_parity(ref_model.encode([arr]), enc.encode([np.moveaxis(arr, -1, 0)]))


def test_clip_mixed_list_and_file_paths(zoo_families, tmp_path):
    src, out = zoo_families.clip()
    ref_model = zoo_families.reference(src)
    enc = SentenceEncoder(out)
    images = _images()[:3]
    paths = []
    for i, img in enumerate(images):
        p = tmp_path / f"img{i}.png"
        img.save(p)
        paths.append(str(p))
    # sentence-transformers 6 treats an existing image file path as an image
    assert_parity(ref_model.encode(paths), enc.encode(paths))
    # a mixed list (sentence-transformers 6 refuses mixed batches; st_runtime splits them and keeps the order)
    mixed = ["a red square", images[0], paths[1], "a blue circle", np.asarray(images[2])]
    got = enc.encode(mixed)
    ref = np.concatenate(
        [
            ref_model.encode(["a red square"]),
            ref_model.encode([images[0]]),
            ref_model.encode([paths[1]]),
            ref_model.encode(["a blue circle"]),
            ref_model.encode([np.asarray(images[2])]),
        ]
    )
    assert_parity(ref, got)
    # a string that is not an existing image file stays text
    assert_parity(ref_model.encode(["missing.png"]), enc.encode(["missing.png"]))


def test_clip_image_text_ranking_equals_sentence_transformers(zoo_families):
    from tiny_models import CAPTIONS

    src, out = zoo_families.clip()
    ref_model = zoo_families.reference(src)
    enc = SentenceEncoder(out)
    images = _images()
    ref_sim = ref_model.similarity(ref_model.encode(images), ref_model.encode(CAPTIONS)).numpy()
    sim = enc.similarity(enc.encode(images), enc.encode(CAPTIONS))
    np.testing.assert_allclose(sim, ref_sim, atol=1e-5)
    assert (np.argsort(-sim, axis=1) == np.argsort(-ref_sim, axis=1)).all()
    assert (sim.argmax(0) == ref_sim.argmax(0)).all()


def test_clip_bad_image_inputs_are_typed(zoo_families):
    enc = SentenceEncoder(zoo_families.clip()[1])
    with pytest.raises(UnsupportedInputError, match="uint8"):
        enc.encode([np.zeros((8, 8, 3), dtype=np.float32)])
    with pytest.raises(UnsupportedInputError, match="does not download"):
        enc.encode(["https://example.com/cat.jpg"])
    with pytest.raises(UnsupportedInputError, match="input 1"):
        enc.encode(["text", 3])
    # sentence-transformers 6 refuses text pairs for CLIP (ValueError); st_runtime refuses them with a typed error
    with pytest.raises(UnsupportedInputError, match=r"pair.*clip"):
        enc.encode([("a photo", "of a cat")])


def test_clip_legacy_hub_layout(zoo_families, tmp_path):
    """clip-ViT-* on the hub: the legacy sentence_transformers.models.CLIPModel module in 0_CLIPModel/."""
    from tiny_models import CAPTIONS, clip_to_legacy_layout

    from exporters import export_model

    src, out = zoo_families.clip()
    legacy = clip_to_legacy_layout(src, tmp_path / "legacy")
    legacy_out = export_model(str(legacy), output=tmp_path / "onnx", log=lambda _m: None)
    ref_model = zoo_families.reference(legacy)
    enc = SentenceEncoder(legacy_out)
    images = _images()[:4]
    assert_parity(ref_model.encode(CAPTIONS), enc.encode(CAPTIONS))
    assert_parity(ref_model.encode(images), enc.encode(images))
    assert_parity(SentenceEncoder(out).encode(images), enc.encode(images))


def test_clip_processor_setting_outside_what_runtime_reproduces_is_refused(zoo_families, tmp_path):
    from exporters import errors, export_model

    src = shutil.copytree(zoo_families.clip()[0], tmp_path / "m")
    proc = json.loads((src / "processor_config.json").read_text())
    proc["image_processor"]["size"] = {"shortest_edge": 32, "longest_edge": 64}
    (src / "processor_config.json").write_text(json.dumps(proc))
    with pytest.raises(errors.UnsupportedModelError, match="size"):
        export_model(str(src), output=tmp_path / "out", log=lambda _m: None)
    assert not (tmp_path / "out").exists()


_HYGIENE = """
import sys
from st_runtime import SentenceEncoder
m = SentenceEncoder(sys.argv[1])
m.encode(["a photo of a red square"])
print("PIL_AFTER_TEXT:", "PIL" in sys.modules)
if len(sys.argv) > 2:
    m.encode([sys.argv[2], "a caption"])
heavy = sorted(k for k in sys.modules if k.split(".")[0] in
               {"torch", "transformers", "sentence_transformers", "onnx", "exporters"})
print("HEAVY:", heavy)
"""


@pytest.mark.parametrize("family", ["clip", "glove"])
def test_new_families_run_without_heavy_imports(zoo_families, tmp_path, family):
    import subprocess
    import sys

    out = zoo_families.clip()[1] if family == "clip" else zoo_families.glove()[1]
    args = [sys.executable, "-c", _HYGIENE, str(out)]
    if family == "clip":
        p = tmp_path / "img.png"
        _images()[0].save(p)
        args.append(str(p))
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "HEAVY: []" in r.stdout and "PIL_AFTER_TEXT: False" in r.stdout, r.stdout


def test_unsupported_modules_around_new_families_are_named(zoo_families, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    from exporters import errors, export_model

    glove = SentenceTransformer(str(zoo_families.glove()[0]), device="cpu")
    lstm = SentenceTransformer(
        modules=[glove[0], models.LSTM(12, 6), models.Pooling(12, pooling_mode="mean")], device="cpu"
    )
    lstm.save(str(tmp_path / "lstm"))
    with pytest.raises(errors.UnsupportedModelError, match=r"LSTM.*Supported modules: .*WordEmbeddings"):
        export_model(str(tmp_path / "lstm"), output=tmp_path / "out1", log=lambda _m: None)
    bow = SentenceTransformer(modules=[models.BoW(["a", "b", "c"])], device="cpu")
    bow.save(str(tmp_path / "bow"))
    with pytest.raises(errors.UnsupportedModelError, match=r"BoW.*WordEmbeddings"):
        export_model(str(tmp_path / "bow"), output=tmp_path / "out2", log=lambda _m: None)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


# ------------------------------------------------------------------------------------------------ RoBERTa, ALBERT
@pytest.mark.parametrize(
    "arch,pooling,normalize",
    [
        ("roberta", "mean", True),  # all-distilroberta-v1
        ("albert", "mean", False),  # paraphrase-albert-small-v2
    ],
)
def test_roberta_and_albert(zoo, arch, pooling, normalize):
    src = zoo.model(arch, pooling=pooling, normalize=normalize)
    enc = SentenceEncoder(zoo.export(arch, pooling=pooling, normalize=normalize))
    ref_model = zoo.reference(src)
    assert_parity(ref_model.encode(TEXTS), enc.encode(TEXTS))
    assert_parity(ref_model.encode(TEXTS), np.stack([enc.encode(t) for t in TEXTS]))
    assert_parity(ref_model.encode([list(p) for p in PAIRS]), enc.encode(PAIRS))
    assert enc.max_seq_length == ref_model.max_seq_length


def test_bert_weights_with_xlm_r_tokenizer(zoo):
    """paraphrase-multilingual-MiniLM-L12-v2: model_type bert, sentencepiece Unigram tokenizer that gives no
    token_type_ids, so the graph takes none (BERT then uses zeros, as in sentence-transformers)."""
    src = zoo.model("bert", pooling="mean", tokenizer_arch="xlm-roberta")
    out = zoo.export("bert", pooling="mean", tokenizer_arch="xlm-roberta")
    enc = SentenceEncoder(out)
    assert enc.text_tower.inputs == ["input_ids", "attention_mask"]
    assert enc.tokenizer.encode("hello").tokens[0] == "<s>"
    ref_model = zoo.reference(src)
    assert_parity(ref_model.encode(TEXTS), enc.encode(TEXTS))
    assert_parity(ref_model.encode([list(p) for p in PAIRS]), enc.encode(PAIRS))


def test_manifest_format_version_marks_new_fields(zoo_families):
    """Readers of format 1 would misread image towers and whitespace tokenizers (format 2), readers of format 2
    refuse tasks, token outputs and measured batch policies (format 3) as unknown keys: new exports say 3, so an
    older st-runtime asks to be upgraded."""
    from st_runtime.manifest import FORMAT_VERSION

    assert FORMAT_VERSION == 3
    for out in (zoo_families.clip()[1], zoo_families.glove()[1]):
        assert json.loads((out / "manifest.json").read_text())["format_version"] == 3


def test_format_1_manifest_still_reads(zoo, tmp_path):
    """An export written before format 2 (no tokenizer kind, no pairs flag) reads and encodes as before."""
    out = shutil.copytree(zoo.export("bert", pooling="cls", normalize=False), tmp_path / "v1")
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 1
    for key in ("kind", "pairs"):
        m["towers"]["text"]["tokenizer"].pop(key)
    (out / "manifest.json").write_text(json.dumps(m))
    enc = SentenceEncoder(out)
    ref = SentenceEncoder(zoo.export("bert", pooling="cls", normalize=False))
    np.testing.assert_array_equal(enc.encode(PAIRS + TEXTS), ref.encode(PAIRS + TEXTS))


def test_clip_tokenizer_without_a_length_limit_is_capped_at_the_position_table(zoo_families, tmp_path):
    """A CLIP tokenizer that declares no model_max_length made sentence-transformers fail on long texts
    ("Sequence length must be less than max_position_embeddings"): the export caps it at the model's 77
    positions, validates against the capped reference, records the cap, and the runtime truncates there."""
    from exporters import export_model

    src = shutil.copytree(zoo_families.clip()[0], tmp_path / "clip-unlimited")
    cfg_path = src / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("model_max_length", None)
    cfg_path.write_text(json.dumps(cfg))
    said = []
    out = export_model(str(src), output=tmp_path / "out", variants=[], log=said.append)
    tok = json.loads((out / "manifest.json").read_text())["towers"]["text"]["tokenizer"]
    assert tok["max_seq_length"] == 77 and tok["capped_at_positions"] == 77
    assert any("capped at the model's 77 positions" in line for line in said)
    enc = SentenceEncoder(out)
    long_text = "a photo of a cat " * 400
    assert enc.encode([long_text]).shape == (1, enc.get_sentence_embedding_dimension())


def test_roberta_style_tokenizer_without_a_limit_is_capped_at_the_usable_positions(zoo, tmp_path):
    """sentence-transformers caps a tokenizer without model_max_length at max_position_embeddings, which
    RoBERTa-style models (XLM-R, MPNet) cannot use whole (their first positions are reserved): the export
    caps at what they can use, so the battery's long texts export instead of failing."""
    from exporters import export_model

    src = shutil.copytree(zoo.model("xlm-roberta"), tmp_path / "xlmr-unlimited")
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        cfg = json.loads((src / name).read_text())
        cfg.pop(key, None)
        (src / name).write_text(json.dumps(cfg))
    positions = json.loads((src / "config.json").read_text())["max_position_embeddings"]
    out = export_model(str(src), output=tmp_path / "out", variants=[], log=lambda _m: None)
    tok = json.loads((out / "manifest.json").read_text())["towers"]["text"]["tokenizer"]
    assert tok["max_seq_length"] == tok["capped_at_positions"] == positions - 2
