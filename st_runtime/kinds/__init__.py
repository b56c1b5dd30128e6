"""The registry of model kinds: the one place that knows which kinds exist.

Each kind lives in its own module here (embedding, cross_encoder, sparse, multi_vector) and registers itself with
:func:`register`. A kind from another package registers itself the same way when imported, or through the entry
point group ``st_runtime.kinds`` (each entry a module that registers its kinds), which is read the first time a
manifest names a task no registered kind runs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from ..errors import ModelKindError
from .base import Kind, Prepared, Route

__all__ = [
    "Kind",
    "Prepared",
    "Route",
    "bulk_kind",
    "get",
    "instance",
    "kind_of",
    "load",
    "output_blocks",
    "public_class",
    "register",
]

_KINDS: dict[str, Kind] = {}
_ENTRY_POINTS_READ = False


def register(kind_cls: type[Kind]) -> type[Kind]:
    """Class decorator: register a kind under its task. A second kind for the same task is refused."""
    if kind_cls.task in _KINDS:
        raise ValueError(f"a model kind for task {kind_cls.task!r} is already registered: {_KINDS[kind_cls.task]!r}")
    _KINDS[kind_cls.task] = kind_cls()
    return kind_cls


def _read_entry_points() -> None:
    global _ENTRY_POINTS_READ
    if _ENTRY_POINTS_READ:
        return
    _ENTRY_POINTS_READ = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="st_runtime.kinds"):
        ep.load()


def get(task: str) -> Kind:
    """The kind registered for a manifest task."""
    if task not in _KINDS:
        _read_entry_points()
    kind = _KINDS.get(task)
    if kind is None:
        raise ModelKindError(
            f"no model kind {task!r} is known to this st-runtime (known: {', '.join(sorted(_KINDS))}). Upgrade "
            "st-runtime, or install the package that provides the kind."
        )
    return kind


K = TypeVar("K", bound=Kind)


def instance(kind_cls: type[K]) -> K:
    """The registered instance of ``kind_cls`` (what a public class declares as its ``kind``)."""
    kind = get(kind_cls.task)
    if not isinstance(kind, kind_cls):
        raise TypeError(f"the kind registered for {kind_cls.task!r} is {kind!r}, not a {kind_cls.__name__}")
    return kind


def all_kinds() -> Mapping[str, Kind]:
    return dict(_KINDS)


def output_blocks() -> dict[str, tuple[str, Any]]:
    """Each registered task's output block key and schema (what the manifest schema checks)."""
    _read_entry_points()
    return {task: (k.output, k.output_schema) for task, k in _KINDS.items()}


def public_class(kind: Kind) -> type:
    module, _, name = kind.public_class.partition(":")
    return getattr(importlib.import_module(module), name)


def kind_of(folder: str | os.PathLike) -> Kind:
    """The kind of an exported folder (its manifest's task)."""
    from ..manifest import load_manifest
    from ..schema import DEFAULT_TASK

    return get(load_manifest(folder).get("task", DEFAULT_TASK))


def bulk_kind(folder: str | os.PathLike, tokens: bool = False) -> Kind:
    """The kind of ``folder`` when st-embed and Ray can write its rows (fixed-width vectors; ``tokens``: or lists of
    them per text, which st-embed writes and Ray does not), else a typed error."""
    kind = kind_of(folder)
    if not kind.bulk or (kind.bulk_tokens and not tokens):
        able = sorted(task for task, k in _KINDS.items() if k.bulk and (tokens or not k.bulk_tokens))
        raise ModelKindError(
            f"{folder} holds a {kind.task} model; st-embed and st_runtime.ray write one fixed-width vector per row, "
            f"which models of the kinds {', '.join(able)} give. Use the model's own class in process instead."
        )
    return kind


def load(model_path: str | os.PathLike, revision: str | None = None, **kwargs: Any):
    """The public class for the model in ``model_path`` (SentenceEncoder, CrossEncoder, SparseEncoder, ... as
    its manifest says), loaded with ``kwargs`` (the load arguments every class takes: providers, device,
    threads, variant, verify_checksums, session_options, io_binding, cuda_graphs). ``model_path`` may be a model
    name (hub id or short name, at ``revision``), resolved through the export cache (st_runtime.hub)."""
    from ..hub.resolve import resolve_model

    folder = resolve_model(model_path, revision, kwargs.get("variant"))
    return public_class(kind_of(folder))(folder, **kwargs)


# the built-in kinds register themselves
from . import cross_encoder, embedding, multi_vector, sparse  # noqa: E402, F401
