"""Embedding on Ray (the ``[ray]`` extra). ``import st_runtime`` never imports this module or ray.

* :class:`EmbedBatch`: a callable class for ``ray.data.Dataset.map_batches``. It loads the model once per actor
  (in ``__init__``), with onnxruntime's threads set to the CPUs Ray gave the actor, and adds an embedding
  column to each batch.
* :func:`embed_dataset`: ``ds.map_batches(EmbedBatch, ...)`` with the actor pool, CPUs and GPUs set.

    import ray.data
    from st_runtime.ray import embed_dataset

    ds = embed_dataset(ray.data.read_parquet("corpus/"), "exported_models/all-MiniLM-L6-v2", column="text",
                       num_workers=4)
    ds.write_parquet("embedded/")
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _actor_cpus() -> int | None:
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # outside an actor, or an older Ray without the call: the encoder's default
        return None
    return max(1, int(cpus)) if cpus else None


class EmbedBatch:
    """Embeds ``column`` of each batch into ``output_column`` (a list of float32 vectors per row).

    Use it with ``ray.data.Dataset.map_batches(EmbedBatch, fn_constructor_kwargs={"model_dir": ...})``: each actor
    loads the model once.

    Args:
        model_dir: a folder written by st-export, readable at the same path on every node; or a model name (hub
            id or short name), which each node resolves into its own export cache (at ``revision``), once per node.
        column: the text column.
        output_column: the column added (default "embedding").
        variant: the exported graph to run, as in ``SentenceTransformer(variant=...)``.
        providers: as in ``SentenceTransformer(providers=...)``; default "cuda" when Ray gave the actor a GPU.
        threads: onnxruntime threads (default: the CPUs Ray assigned to this actor).
        normalize: L2-normalize, as ``encode``'s ``normalize_embeddings``.
        prompt_name: as ``encode``'s ``prompt_name``.
        long_inputs: as ``encode``'s ``long_inputs`` ("truncate", "chunk" or "error"; docs/long-inputs.md).
    """

    def __init__(
        self,
        model_dir: str,
        column: str = "text",
        output_column: str = "embedding",
        variant: str | None = None,
        providers: Any = None,
        threads: int | None = None,
        normalize: bool = False,
        prompt_name: str | None = None,
        revision: str | None = None,
        long_inputs: str = "truncate",
    ):
        from .hub.resolve import resolve_model
        from .kinds import bulk_kind, load

        if providers is None:
            try:
                import ray

                if ray.is_initialized() and ray.get_gpu_ids():
                    providers = "cuda"
            except Exception:
                pass
        self.column = column
        self.output_column = output_column
        folder = resolve_model(model_dir, revision, variant)
        self.kind = bulk_kind(folder)
        self.model = load(folder, providers=providers, threads=threads or _actor_cpus(), variant=variant)
        self.kwargs: dict[str, Any] = {"normalize": normalize, "prompt_name": prompt_name}
        if long_inputs != "truncate":
            self.kwargs["long_inputs"] = long_inputs

    def describe(self) -> dict[str, Any]:
        """The variant, row width and threads this actor's model runs with."""
        m = self.model
        return {"variant": m.variant, "dimension": self.kind.bulk_width(m, **self.kwargs), "threads": m.threads}

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), width] float32 rows (the kind's bulk rows: embeddings for an embedding model)."""
        return self.kind.bulk_encode(self.model, list(texts), **self.kwargs)

    def __call__(self, batch):
        """A batch as Ray Data gives it (a dict of numpy arrays, a pandas DataFrame or a pyarrow Table); the
        same kind comes back, with ``output_column`` added."""
        if isinstance(batch, dict):
            texts = batch[self.column]
            emb = self.embed([str(t) if not isinstance(t, str) else t for t in texts.tolist()])
            return {**batch, self.output_column: emb}
        try:
            import pyarrow as pa
        except ImportError:  # pragma: no cover - ray data depends on pyarrow
            pa = None
        if pa is not None and isinstance(batch, pa.Table):
            emb = self.embed(batch.column(self.column).to_pylist())
            values = pa.array(emb.reshape(-1), type=pa.float32())
            return batch.append_column(self.output_column, pa.FixedSizeListArray.from_arrays(values, emb.shape[1]))
        out = batch.copy()  # pandas
        out[self.output_column] = list(self.embed(batch[self.column].tolist()))
        return out


def embed_dataset(
    ds,
    model_dir: str,
    column: str = "text",
    output_column: str = "embedding",
    num_workers: int = 1,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    batch_size: int = 4096,
    variant: str | None = None,
    normalize: bool = False,
    prompt_name: str | None = None,
    revision: str | None = None,
):
    """A Ray Dataset with an embedding column added, computed by actors that each load the model once.

    Args:
        ds: a ``ray.data.Dataset`` (for example ``ray.data.read_parquet(path)``).
        model_dir: a folder written by st-export, readable at the same path on every node; or a model name, which
            each node resolves into its own export cache (at ``revision``).
        column: the text column.
        output_column: the column added (default "embedding"), float32 vectors.
        num_workers: the number of actors.
        cpus_per_worker: CPUs per actor (onnxruntime runs that many threads).
        gpus_per_worker: GPUs per actor (an actor with a GPU runs on CUDA).
        batch_size: rows per ``map_batches`` batch.
        variant: the exported graph to run, as in ``SentenceTransformer(variant=...)``.
        normalize: L2-normalize, as ``encode``'s ``normalize_embeddings``.
        prompt_name: as ``encode``'s ``prompt_name``.
        revision: the model's revision, when ``model_dir`` is a name.

    Returns:
        ``ds`` with ``output_column`` added (lazy, as Ray Data is).
    """
    resources: dict[str, float] = {"num_cpus": cpus_per_worker}
    if gpus_per_worker:
        resources["num_gpus"] = gpus_per_worker
    return ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "column": column,
            "output_column": output_column,
            "variant": variant,
            "normalize": normalize,
            "prompt_name": prompt_name,
            "revision": revision,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=num_workers,
        **resources,
    )
