"""How every graph of one model runs (SessionConfig): providers, threads, session options, IO binding, CUDA
graphs, and the threads that tokenize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .providers import device_providers, resolve_providers, resolve_threads
from .session import make_session, with_cuda_graphs


@dataclass(frozen=True)
class SessionConfig:
    """How every graph of one model runs: providers (and whether falling back among them is allowed), threads,
    session options, IO binding and CUDA graphs."""

    providers: list
    fallback_allowed: bool
    threads: int
    session_options: ort.SessionOptions | None = None
    io_binding: bool | None = None
    cuda_graphs: bool = False
    feed_threads: int | None = None  # tokenization threads (None: st_runtime.feeding's default)

    @classmethod
    def build(
        cls, providers, device, threads, session_options, io_binding, cuda_graphs, feed_threads=None
    ) -> SessionConfig:
        if device is not None:
            if providers is not None:
                raise ValueError("pass either device (sentence-transformers' 'cpu', 'cuda:1') or providers, not both")
            providers = device_providers(device)
        resolved, fallback_allowed = resolve_providers(providers)
        if not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        if cuda_graphs:
            with_cuda_graphs(resolved)  # the provider check, before any loading
            if io_binding is False:
                raise ValueError(
                    "cuda_graphs=True needs IO binding (CUDA graphs replay fixed device buffers); "
                    "leave io_binding at its default."
                )
        if feed_threads is not None and (
            not isinstance(feed_threads, int) or isinstance(feed_threads, bool) or feed_threads < 1
        ):
            raise ValueError(f"feed_threads must be a positive integer or None (automatic), got {feed_threads!r}")
        threads = resolve_threads(threads)
        return cls(resolved, fallback_allowed, threads, session_options, io_binding, cuda_graphs, feed_threads)

    def session(self, path: Path) -> ort.InferenceSession:
        return make_session(path, self.providers, self.fallback_allowed, self.threads, self.session_options)
