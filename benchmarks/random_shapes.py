"""Models with random weights at real models' shapes, for speed measurements (speed does not depend on weight
values): `python -m benchmarks.throughput --random-weights modernbert-base` builds one here, exports it with
st-export and benchmarks it against sentence-transformers like any other model.

The tokenizer is all-MiniLM-L6-v2's WordPiece (bundled with the project's benchmark dependencies): token counts
on English text are close to the real models' tokenizers; only the embedding table's size differs in what is
looked up, not in the compute. Results are marked as random-weight shapes everywhere they are written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.common import ROOT, export_source

# name -> (model_type, config kwargs, pooling mode, dense layers [(in, out)], padding side, real model it mimics)
SHAPES: dict[str, tuple[str, dict, str, list[tuple[int, int]], str, str]] = {
    "modernbert-base": (
        "modernbert",
        dict(
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            vocab_size=50368,
            max_position_embeddings=8192,
            local_attention=128,
            global_attn_every_n_layers=3,
        ),
        "mean",
        [],
        "right",
        "Alibaba-NLP/gte-modernbert-base, nomic-ai/modernbert-embed-base",
    ),
    "qwen3-0.6b": (
        "qwen3",
        dict(
            hidden_size=1024,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=3072,
            vocab_size=151669,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        ),
        "lasttoken",
        [],
        "left",
        "Qwen/Qwen3-Embedding-0.6B",
    ),
    "bge-m3": (
        "xlm-roberta",
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            vocab_size=250002,
            max_position_embeddings=8194,
            type_vocab_size=1,
        ),
        "cls",
        [],
        "right",
        "BAAI/bge-m3 (dense output; XLM-R large)",
    ),
    "embeddinggemma-300m": (
        "gemma3_text",
        dict(
            hidden_size=768,
            num_hidden_layers=24,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=256,
            intermediate_size=1152,
            vocab_size=262144,
            max_position_embeddings=2048,
            sliding_window=512,
            use_bidirectional_attention=True,
        ),
        "mean",
        [(768, 3072), (3072, 768)],
        "right",
        "google/embeddinggemma-300m",
    ),
}


def build(name: str, out: Path, max_seq_length: int = 512) -> Path:
    """Save a random model of shape ``name`` with sentence-transformers to ``out``."""
    import torch
    import transformers as tr
    from sentence_transformers import SentenceTransformer, models

    model_type, cfg, pooling, dense, padding_side, _real = SHAPES[name]
    tok = tr.AutoTokenizer.from_pretrained(export_source("all-MiniLM-L6-v2"))
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.padding_side = padding_side
    hf = out.parent / f"{out.name}-hf"
    torch.manual_seed(0)
    config = tr.AutoConfig.for_model(model_type, pad_token_id=tok.pad_token_id, **cfg)
    tr.AutoModel.from_config(config).save_pretrained(str(hf))
    tok.save_pretrained(str(hf))
    # the stand-in WordPiece tokenizer gives no token_type_ids, as the real models' tokenizers (XLM-R's, which
    # has one token type, would otherwise get a pair's second text as type 1); the attribute alone is not saved
    cfg_path = hf / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["model_input_names"] = ["input_ids", "attention_mask"]
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    mods = [models.Transformer(str(hf), max_seq_length=max_seq_length)]
    mods.append(models.Pooling(cfg["hidden_size"], pooling_mode=pooling))
    for i, (a, b) in enumerate(dense):
        torch.manual_seed(1 + i)
        mods.append(models.Dense(a, b, bias=False, activation_function=torch.nn.Identity()))
    mods.append(models.Normalize())
    SentenceTransformer(modules=mods, device="cpu").save(str(out))
    shutil.rmtree(hf)
    return out


def ensure_random(name: str) -> Path:
    """The export of random shape ``name`` (built and exported on first use) in exported_models/random-NAME."""
    if name not in SHAPES:
        raise SystemExit(f"unknown --random-weights shape {name!r}; choose from {', '.join(SHAPES)}")
    out = ROOT / "exported_models" / f"random-{name}"
    if (out / "manifest.json").is_file():
        return out
    from exporters import export_model

    src = build(name, ROOT / "exported_models" / f"random-{name}-src")
    return export_model(str(src), output=out)
