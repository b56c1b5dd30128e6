"""onnxruntime sessions: the session factory with st_runtime's defaults, the CUDA-graph provider option,
and onnxruntime's load errors mapped to typed errors with a fix."""

from __future__ import annotations

import re
from pathlib import Path

import onnxruntime as ort

from .errors import GraphLoadError
from .graph_meta import graph_load_error
from .providers import check_session_providers


def with_cuda_graphs(providers: list) -> list:
    """The provider list with onnxruntime's CUDA-graph option set on its (first) CUDA provider."""
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if first != "CUDAExecutionProvider":
        raise ValueError(
            f"cuda_graphs=True needs the CUDA execution provider first (providers='cuda'), but this "
            f"encoder runs on {first}. Pass providers='cuda', or leave cuda_graphs off."
        )
    options = dict(providers[0][1]) if isinstance(providers[0], tuple) else {}
    options["enable_cuda_graph"] = "1"
    return [("CUDAExecutionProvider", options), *providers[1:]]


def session_options_for(threads: int, spinning: bool = True) -> ort.SessionOptions:
    """st_runtime's session options: ``threads`` intra-op threads, sequential execution, every graph
    optimization. ``spinning=False`` lets the intra-op threads sleep between runs instead of spinning (a
    server's event loop then gets the cores back between batches; for st-serve on 2 cores, 64 clients, an A/B run
    gave 917-958 requests/s sleeping against 912-933 spinning: within this VM's noise, kept for the principle)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def make_session(
    path: Path,
    providers,
    fallback_allowed: bool,
    threads: int,
    session_options: ort.SessionOptions | None,
    cuda_graphs: bool = False,
) -> ort.InferenceSession:
    so = session_options or session_options_for(threads)
    if cuda_graphs:
        providers = with_cuda_graphs(providers)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors; re-raise with a fix
        if cuda_graphs and re.search(r"cannot use the (graph capture|cuda graph) feature", str(exc), re.I):
            raise GraphLoadError(
                f"onnxruntime cannot capture {path.name} as a CUDA graph: {exc}. Run it "
                "without cuda_graphs=True (CUDA graphs need every node on the CUDA provider)."
            ) from exc
        raise graph_load_error(path, exc, ort.__version__) from exc
    check_session_providers(session, providers, fallback_allowed, path.name)
    return session
