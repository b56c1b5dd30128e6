"""The multi-vector (late-interaction, ColBERT) task of st-export: sentence-transformers' ``MultiVectorEncoder``.

The model (Transformer, token-level Dense, MultiVectorMask with its skiplist, token-level Normalize; legacy PyLate v3
and Stanford-NLP ColBERT folders as sentence-transformers loads them) becomes one graph from token ids to, per
token, its vector and its role, packed in one output ``token_vectors`` [batch, tokens, dim + 1]: columns ``:dim``
are the vector, the last column the role:

- 0: padding (never counts),
- 1: a real token (counts),
- 2: a real token in the skiplist (counts where the task is not in ``skiplist_tasks``: queries by default),
- 3: a query expansion position ([MASK] in an unattended pad slot below the expansion length; counts for queries).

The graph does ColBERT's query expansion itself: it widens a batch to at least the expansion length, puts the
expansion token into every unattended slot below it and leaves those slots unattended (``attend=False``, as classic
ColBERT and PyLate do), so real tokens' vectors are those of the unexpanded input and one graph serves queries and
documents alike. The runtime (st_runtime.kinds.multi_vector) keeps each task's roles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnsupportedModelError

OUTPUT = "token_vectors"
ROLES = {"padding": 0, "token": 1, "skiplisted": 2, "expansion": 3}
MODULES = (
    "Transformer",
    "Dense (token-level)",
    "MultiVectorMask",
    "Normalize (token-level)",
    "HierarchicalTokenPooling",
)


# ---------------------------------------------------------------- description
def describe_multi_vector(st_model, desc):
    """Check a MultiVectorEncoder's pipeline against what the graph reproduces and describe it (the manifest's
    ``multi_vector`` block)."""
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import (
        BaseTokenPooling,
        HierarchicalTokenPooling,
        MultiVectorMask,
    )

    from .towers import check_input_module

    mods = list(st_model)
    names = [type(m).__name__ for m in mods]
    if (
        not mods
        or not isinstance(mods[0], Transformer)
        or getattr(mods[0], "transformer_task", None) != "feature-extraction"
    ):
        raise UnsupportedModelError(
            f"the MultiVectorEncoder's modules are {names}; st-export exports late-interaction models made of "
            f"{', '.join(MODULES)} (a text Transformer first)."
        )
    transformer = mods[0]
    check_input_module(transformer, desc.spec)
    dense: list[dict[str, Any]] = []
    mask = None
    normalized = False
    pooling = None
    dim = int(transformer.get_embedding_dimension())
    for mod in mods[1:]:
        if isinstance(mod, Dense) and mod.module_input_name == "token_embeddings" and not normalized:
            act = mod.activation_function
            dense.append(
                {
                    "in_features": int(mod.linear.in_features),
                    "out_features": int(mod.linear.out_features),
                    "bias": mod.linear.bias is not None,
                    "activation": f"{type(act).__module__}.{type(act).__name__}",
                }
            )
            dim = int(mod.linear.out_features)
        elif isinstance(mod, MultiVectorMask) and mask is None:
            mask = mod
        elif isinstance(mod, Normalize) and mod.module_input_name == "token_embeddings":
            normalized = True
        elif isinstance(mod, HierarchicalTokenPooling) and mod is mods[-1]:
            pooling = _pooling_config(mod)
        elif isinstance(mod, BaseTokenPooling):
            raise UnsupportedModelError(
                f"token pooling {type(mod).__name__} is not supported by st-export (st_runtime applies "
                "HierarchicalTokenPooling only, as the pipeline's last module)."
            )
        else:
            raise UnsupportedModelError(
                f"module {type(mod).__module__}.{type(mod).__name__} (in {names}) is not supported in a "
                f"MultiVectorEncoder by st-export; it exports {', '.join(MODULES)}."
            )
    if mask is None:
        raise UnsupportedModelError(
            f"the MultiVectorEncoder's modules {names} have no MultiVectorMask, so sentence-transformers scores every "
            "position (padding included) and no export can say which tokens count. Add a MultiVectorMask."
        )
    if mask.keep_only_token_ids:
        raise UnsupportedModelError(
            "MultiVectorMask.keep_only_token_ids (ColPali-style image-patch documents) is not supported by st-export."
        )
    tokenizer = transformer.tokenizer
    if tokenizer.padding_side != "right":
        raise UnsupportedModelError(
            f"the tokenizer pads on the {tokenizer.padding_side}; st-export exports late-interaction models whose "
            "tokenizer pads on the right (query expansion fills the slots after the text)."
        )
    max_len = st_model.max_seq_length
    expansion = _expansion(transformer, tokenizer)
    desc.multi_vector = {
        "dimension": dim,
        "dense": dense,
        "normalized": normalized,
        "similarity_fn_name": st_model.similarity_fn_name,
        "truncate_dim": st_model.truncate_dim,
        "query_length": _length("query", transformer, expansion, max_len),
        "document_length": _length("document", transformer, expansion, max_len),
        "expansion": expansion,
        "skiplist_words": list(mask.skiplist_words),
        "skiplist_ids": [] if mask._skiplist_ids is None else [int(i) for i in mask._skiplist_ids.tolist()],
        "skiplist_tasks": list(mask.skiplist_tasks),
        "token_pooling": pooling,
        "roles": dict(ROLES),
    }
    return desc


def _expansion(transformer, tokenizer) -> dict[str, Any] | None:
    expansion = transformer.query_expansion
    if expansion is None:
        return None
    if expansion["attend"]:
        raise UnsupportedModelError(
            "query_expansion attend=True (the encoder attends to the [MASK] expansion slots, PyLate's "
            "attend_to_expansion_tokens) is not supported by st-export yet: its graph expands queries in "
            "unattended slots only, as classic ColBERT does."
        )
    if expansion["token"] is not None:
        token_id = tokenizer.convert_tokens_to_ids(expansion["token"])
    else:
        token_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise UnsupportedModelError(
            "query expansion is on, but the tokenizer has no [MASK] (or EOS) token to expand with."
        )
    return {"strategy": expansion["strategy"], "length": int(expansion["length"]), "token_id": int(token_id)}


def _length(task: str, transformer, expansion: dict[str, Any] | None, max_len: int | None) -> int | None:
    """Tokens a text of ``task`` is truncated to, as Transformer.preprocess decides it (None: max_seq_length)."""
    own = transformer.query_length if task == "query" else transformer.document_length
    if task == "query" and expansion is not None:
        if expansion["strategy"] == "fixed":
            return expansion["length"]
        return max(own, expansion["length"]) if own is not None else None
    return int(own) if own is not None else None


def _pooling_config(mod) -> dict[str, Any]:
    return {
        "kind": "hierarchical",
        "pool_factor": float(mod.pool_factor),
        "max_tokens": mod.max_tokens,
        "distance_threshold": mod.distance_threshold,
        "num_protected_tokens": int(mod.num_protected_tokens),
        "normalize_embeddings": bool(mod.normalize_embeddings),
        "tasks": list(mod.tasks),
    }


# ---------------------------------------------------------------- the traced graph
def multi_vector_graph(st_model, desc, input_names: list[str], features: dict[str, Any]):
    """The module traced for the text tower: token ids -> [batch, tokens, dim + 1] (vectors and roles)."""
    import torch
    from sentence_transformers.multi_vector_encoder.modules import BaseTokenPooling, MultiVectorMask

    block = desc.multi_vector
    expansion = block["expansion"]
    pad_id = st_model[0].tokenizer.pad_token_id or 0
    stages = [m for m in st_model if not isinstance(m, (MultiVectorMask, BaseTokenPooling))]
    skip = torch.tensor(block["skiplist_ids"] or [-1], dtype=torch.long)

    def widen(x, fill: int, length: int):
        """``x`` [b, w] widened to [b, max(w, length)] with ``fill`` (traced with dynamic shapes)."""
        block_ = torch.full((1, length), fill, dtype=x.dtype).expand(x.shape[0], length)
        width = torch.clamp(torch._shape_as_tensor(x)[1], min=length)
        return torch.cat([x, block_], dim=1).index_select(1, torch.arange(width))

    class MultiVectorGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList(stages)

        def forward(self, *tensors):
            feats: dict[str, Any] = dict(zip(input_names, tensors))
            feats.update(features)
            ids, attention = feats["input_ids"], feats["attention_mask"]
            expanded = torch.zeros_like(ids, dtype=torch.bool)
            if expansion is not None:
                length = expansion["length"]
                ids, attention = widen(ids, pad_id, length), widen(attention, 0, length)
                if "token_type_ids" in feats:
                    feats["token_type_ids"] = widen(feats["token_type_ids"], 0, length)
                position = torch.arange(ids.shape[1]).unsqueeze(0)
                expanded = (attention == 0) & (position < length)
                ids = torch.where(expanded, torch.full_like(ids, expansion["token_id"]), ids)
                feats["input_ids"], feats["attention_mask"] = ids, attention
            for stage in self.stages:
                feats = stage(feats)
            vectors = feats["token_embeddings"]
            real = attention > 0
            skipped = (ids.unsqueeze(-1) == skip).any(dim=-1) & real
            role = real.to(vectors.dtype) + skipped.to(vectors.dtype) + 3 * expanded.to(vectors.dtype)
            return torch.cat([vectors, role.unsqueeze(-1)], dim=-1)

    return MultiVectorGraph().eval()


# ---------------------------------------------------------------- reference and validation
def reference_multi_vector(st_model, texts: list[str]) -> dict[str, list[np.ndarray]]:
    """sentence-transformers' encode_query and encode_document of ``texts``: per text, its kept tokens' vectors."""
    return {
        "query": [np.asarray(v, np.float32) for v in st_model.encode_query(texts, convert_to_numpy=True)],
        "document": [np.asarray(v, np.float32) for v in st_model.encode_document(texts, convert_to_numpy=True)],
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-30)


def ranking_changes(ref: dict, got: dict, top_k: int, tie: float) -> list[int]:
    """The queries whose first ``top_k`` documents by MaxSim (st_runtime's) are not sentence-transformers' in the
    same order; two documents whose reference scores are within ``tie`` of the larger (relative) may swap."""
    from st_runtime.kinds.multi_vector import maxsim

    want_scores = maxsim(ref["query"], ref["document"])
    have_scores = maxsim(got["query"], got["document"])
    changed = []
    for q, (scores, have) in enumerate(zip(want_scores, have_scores)):
        want = np.argsort(-scores, kind="stable")[:top_k]
        mine = np.argsort(-have, kind="stable")[:top_k]
        close = np.abs(scores[want] - scores[mine]) <= tie * np.maximum(np.abs(scores[want]), np.abs(scores[mine]))
        if any(a != b and not c for a, b, c in zip(want, mine, close)):
            changed.append(q)
    return changed


def check_multi_vector(
    ref, folder: Path, providers: str, variant: str, plan, items, manifest, unnormalized=None
) -> dict[str, Any]:
    """st_runtime's encode_query / encode_document of the battery against sentence-transformers', at batch size 1
    and in one mixed batch: the same kept tokens, each vector at cosine >= the variant's gate; approximate variants
    (int8) also keep the MaxSim ranking of every query over the battery's documents."""
    from st_runtime.multi_vector import MultiVectorEncoder

    model = MultiVectorEncoder(folder, providers=providers, variant=variant)
    texts = [s for _, s in items]
    tags = [t for t, _ in items]
    failures: list[dict[str, Any]] = []
    worst, total, count = 1.0, 0.0, 0
    got_runs: dict[str, dict[str, list[np.ndarray]]] = {}
    for run, batch_size in (("batch_1", 1), (f"batch_{len(texts)}", len(texts))):
        got_runs[run] = {
            "query": model.encode_query(texts, batch_size=batch_size),
            "document": model.encode_document(texts, batch_size=batch_size),
        }
        for side in ("query", "document"):
            for i, (want, have) in enumerate(zip(ref[side], got_runs[run][side])):
                where = {"run": f"{run}/{side}", "index": i, "tag": tags[i], "text": texts[i][:80]}
                if have.shape != want.shape:
                    failures.append(
                        {**where, "error": f"{have.shape[0]} tokens kept, sentence-transformers {want.shape[0]}"}
                    )
                    continue
                cos = _cosines(want, have)
                if len(cos):
                    worst, total, count = min(worst, float(cos.min())), total + float(cos.sum()), count + len(cos)
                    if cos.min() < plan.min_cosine:
                        failures.append({**where, "cosine": float(cos.min())})
    ranking_identical = True
    if not plan.exact:
        for run, got in got_runs.items():
            for q in ranking_changes(ref, got, plan.top_k_identical, plan.max_score_diff):
                ranking_identical = False
                error = f"MaxSim top-{plan.top_k_identical} of the battery's documents differs"
                failures.append({"run": f"{run}/maxsim", "index": int(q), "tag": tags[q], "text": texts[q][:80],
                                 "error": error})  # fmt: skip
    mean = total / count if count else 1.0
    gate_mean = plan.mean_cosine
    if gate_mean is not None and mean < gate_mean:
        failures.append({"run": "all", "error": f"mean cosine {mean:.6f} below {gate_mean}"})
    report = {
        "items": len(texts),
        "runs": sorted(got_runs),
        "tags": sorted(set(tags)),
        "min_cosine": worst,
        "mean_cosine": mean,
        "gate_min_cosine": plan.min_cosine,
        "gate_mean_cosine": gate_mean,
        "ranking_identical": ranking_identical,
        "passed": not failures,
        "failures": failures,
    }
    report["summary"] = (
        f"{len(texts)} texts as queries and documents x {len(got_runs)} batchings, {count} token vectors: min cosine "
        f"{worst:.7f}, mean {mean:.7f}"
        + ("" if plan.exact else f", MaxSim rankings {'identical' if ranking_identical else 'DIFFERENT'}")
        + f" (gate {plan.min_cosine})"
    )
    return report


# ---------------------------------------------------------------- timing and int8
def time_multi_vector(folder: Path, variant: str):
    from st_runtime.multi_vector import MultiVectorEncoder

    from .battery import PASSAGES, SHORT_QUERIES

    model = MultiVectorEncoder(folder, providers="cpu", variant=variant)
    queries, passages = SHORT_QUERIES * 16, PASSAGES * 4

    def run():
        model.encode_query(queries)
        model.encode_document(passages)

    return len(queries) + len(passages), run


def token_agreement(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """The cosine with fp32 of every counted token's vector (roles 1-3; int8 scores per-token outputs a row per
    token, exporters.int8.build.as_rows)."""
    ref, got = np.asarray(ref), np.asarray(got)
    counted = ref[:, -1] > 0
    a, b = ref[counted, :-1].astype(np.float64), got[counted, :-1].astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def int8_gate(plan, manifest):
    """Every counted token vector's cosine, with the cosine targets' margins."""
    return token_agreement, plan.min_cosine + 0.003, plan.mean_cosine + 0.002
