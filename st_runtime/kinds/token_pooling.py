"""sentence-transformers' HierarchicalTokenPooling on a multi-vector model's token vectors (numpy; the Ward linkage
is scipy's, imported only when a model pools: ``pip install "st-runtime[token-pooling]"``).

Each text keeps its first ``num_protected_tokens`` vectors ([CLS]) and replaces the others by the means of their
Ward clusters on cosine distance (``len // pool_factor`` clusters, at most ``max_tokens`` vectors, or a cut of the
tree at ``distance_threshold``), then normalizes every vector, as sentence-transformers 6 does per text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KEYS = (
    "kind",
    "pool_factor",
    "max_tokens",
    "distance_threshold",
    "num_protected_tokens",
    "normalize_embeddings",
    "tasks",
)


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _linkage():
    try:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import squareform
    except ImportError:
        raise ImportError(
            "this model pools document tokens (HierarchicalTokenPooling), whose Ward clustering needs scipy: "
            'pip install "st-runtime[token-pooling]" (or scipy), or pass token_pooling=False.'
        ) from None
    return linkage, fcluster, squareform


def pool_one(emb: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """One text's pooled vectors (HierarchicalTokenPooling._pool_batch for one text)."""
    factor, max_tokens, threshold = cfg.get("pool_factor", 1.0), cfg.get("max_tokens"), cfg.get("distance_threshold")
    protected = min(int(cfg.get("num_protected_tokens", 1)), len(emb))
    rest = emb[protected:]
    m = len(rest)
    target = max_tokens - protected if max_tokens is not None else max(int(m // factor), 1)
    target = min(max(target, 1), m) if m else 0
    if m <= 1 or (threshold is None and target >= m):
        out = emb
    elif threshold is None and target == 1:
        out = np.concatenate([emb[:protected], rest.mean(axis=0, keepdims=True)])
    else:
        linkage, fcluster, squareform = _linkage()
        x = rest.astype(np.float32)
        distances = np.clip(1 - x @ x.T, 0, 2)
        tree = linkage(squareform(distances, checks=False), method="ward")
        if threshold is None:
            labels = fcluster(tree, t=target, criterion="maxclust")
        else:
            labels = fcluster(tree, t=threshold, criterion="distance")
        _, dense = np.unique(labels, return_inverse=True)
        sums = np.zeros((int(dense.max()) + 1, x.shape[1]), dtype=np.float32)
        np.add.at(sums, dense, x)
        means = sums / np.bincount(dense).astype(np.float32)[:, None]
        out = np.concatenate([emb[:protected], means])
    return _normalize(out) if cfg.get("normalize_embeddings", False) else np.asarray(out, np.float32)


def pool(embeddings: list[np.ndarray], cfg: dict[str, Any], task: str | None) -> list[np.ndarray]:
    """``embeddings`` pooled where ``cfg``'s tasks include ``task`` (None counts as "document")."""
    unknown = set(cfg) - set(KEYS)
    if cfg.get("kind", "hierarchical") != "hierarchical" or unknown:
        raise ValueError(f"token_pooling takes HierarchicalTokenPooling's settings {list(KEYS[1:])}, got {sorted(cfg)}")
    if (task or "document") not in cfg.get("tasks", ["document"]):
        return embeddings
    return [pool_one(e, cfg) for e in embeddings]
