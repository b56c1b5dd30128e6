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


# st-serve's intra-op threads spin at most this long waiting for the next operator, and not after a run (see
# session_options_for)
SERVER_SPIN_US = 10


def session_options_for(threads: int, spin_us: int | None = None) -> ort.SessionOptions:
    """st_runtime's session options: ``threads`` intra-op threads, sequential execution, every graph optimization.

    ``spin_us=None`` (in-process encode): onnxruntime's default, intra-op threads spinning between operators and for
    a while after a run. A number (st-serve: SERVER_SPIN_US): they spin at most that many microseconds waiting for
    the next operator, then sleep, and stop when a run ends (``session.force_spinning_stop``): the server's event
    loop and tokenizer need the cores between and beside runs. Measured with st-serve on a 2-vCPU VM
    (all-MiniLM-L6-v2, 2026-12-07; benchmarks/results/serve-spin-ab*.json), against sleeping threads (st-serve's
    earlier setting; a sleeping thread is woken for every operator, which on a VM takes 0.1 ms to milliseconds when
    its vCPU went idle): one client of single queries 324 against 251 requests/s at 4.9 against 5.6 CPU ms each,
    64 clients 625 against 601; with a 1-core busy loop beside it 254 against 214 and 465 against 463. Longer spins
    (50 us, or onnxruntime's default even with the stop) did a little better on the calm machine and far worse
    beside the busy loop (64 clients: 312-364 requests/s against 436-471 sleeping; docs/speed.md)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if spin_us is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(int(spin_us)))
        so.add_session_config_entry("session.force_spinning_stop", "1")
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
