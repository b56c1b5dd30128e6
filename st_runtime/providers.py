"""Choosing onnxruntime execution providers without ever falling back silently."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

from .errors import ProviderUnavailableError

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}

ProviderSpec = str | tuple[str, dict[str, Any]]


def _name(p: ProviderSpec) -> str:
    return p[0] if isinstance(p, tuple) else p


def device_providers(device: str) -> ProviderSpec:
    """sentence-transformers' ``device`` ("cpu", "cuda", "cuda:N") as an onnxruntime provider."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {device!r}")
    kind, _, index = device.strip().lower().partition(":")
    if kind == "cpu" and not index:
        return "CPUExecutionProvider"
    if kind == "cuda" and (not index or index.isdigit()):
        return ("CUDAExecutionProvider", {"device_id": int(index)}) if index else "CUDAExecutionProvider"
    raise ValueError(
        f"device {device!r} is not one st_runtime runs on: use 'cpu', 'cuda' or 'cuda:N' (onnxruntime's CPU and "
        "CUDA providers), or pass providers=... for another onnxruntime provider"
    )


def device_name(provider: ProviderSpec) -> str:
    """The sentence-transformers ``device`` string of an onnxruntime provider ("cpu", "cuda:0", ...)."""
    name = _name(provider)
    if name in _GPU_PROVIDERS:
        options = provider[1] if isinstance(provider, tuple) else {}
        return f"cuda:{int(options.get('device_id', 0))}"
    return "cpu"


def resolve_providers(providers: str | Sequence[ProviderSpec] | None) -> tuple[list[ProviderSpec], bool]:
    """Turn the user's ``providers`` argument into onnxruntime's form.

    Returns the provider list and whether the user opted in to fall back (an explicit list
    of several providers). Raises ProviderUnavailableError for a provider this onnxruntime
    cannot use, unless the user listed a fallback after it.
    """
    if providers is None:
        requested: list[ProviderSpec] = ["CPUExecutionProvider"]
    elif isinstance(providers, str):
        requested = [providers]
    elif isinstance(providers, (list, tuple)) and providers:
        requested = list(providers)
    else:
        raise ProviderUnavailableError(
            f"providers must be None, a provider name or a non-empty list of them, got {providers!r}. "
            "Use for example 'cpu', 'cuda' or ['CUDAExecutionProvider', 'CPUExecutionProvider']."
        )
    normalized: list[ProviderSpec] = []
    for p in requested:
        if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict):
            normalized.append((ALIASES.get(p[0].lower(), p[0]), p[1]))
        elif isinstance(p, str):
            normalized.append(ALIASES.get(p.lower(), p))
        else:
            raise ProviderUnavailableError(
                f"Cannot read provider {p!r}: give a name like 'cuda' or 'CUDAExecutionProvider', or a "
                "(name, options) tuple."
            )
    normalized = [full_precision(p) for p in normalized]
    if any(_name(p) in _GPU_PROVIDERS for p in normalized) and hasattr(ort, "preload_dlls"):
        # Loads CUDA/cuDNN from the nvidia-* Python packages when they are installed.
        ort.preload_dlls()
    available = ort.get_available_providers()
    fallback_allowed = len(normalized) > 1
    usable = [p for p in normalized if _name(p) in available]
    missing = [_name(p) for p in normalized if _name(p) not in available]
    if missing and (not fallback_allowed or not usable):
        hint = ""
        if any(m in _GPU_PROVIDERS for m in missing):
            hint = (
                " For CUDA install the GPU build of onnxruntime in place of the CPU one (`pip uninstall -y "
                "onnxruntime && pip install onnxruntime-gpu`), and check that the CUDA and cuDNN libraries it "
                "needs are present."
            )
        raise ProviderUnavailableError(
            f"Execution provider(s) {missing} requested, but this onnxruntime {ort.__version__} only offers "
            f"{available}.{hint} To run on the CPU pass providers='cpu'; to allow falling back, list the "
            "fallback explicitly, e.g. providers=['CUDAExecutionProvider', 'CPUExecutionProvider']."
        )
    if missing:
        warnings.warn(
            f"Execution provider(s) {missing} are not available in onnxruntime {ort.__version__} "
            f"(available: {available}); falling back to {[_name(p) for p in usable]} as your providers list allows.",
            RuntimeWarning,
            stacklevel=3,
        )
    return usable, fallback_allowed


def full_precision(provider: ProviderSpec) -> ProviderSpec:
    """onnxruntime's CUDA provider runs float32 MatMuls in TF32 (10-bit mantissa) on Ampere and newer GPUs
    unless told otherwise; sentence-transformers' torch does not, and our fp32 variants promise its results.
    So CUDA gets use_tf32=0 unless the caller's own provider options set it."""
    if _name(provider) != "CUDAExecutionProvider":
        return provider
    options = dict(provider[1]) if isinstance(provider, tuple) else {}
    options.setdefault("use_tf32", "0")
    return ("CUDAExecutionProvider", options)


def check_session_providers(
    session: ort.InferenceSession, requested: list[ProviderSpec], fallback_allowed: bool, graph: str
) -> None:
    """onnxruntime drops a provider whose libraries fail to load and carries on: catch that."""
    actual = session.get_providers()
    first = _name(requested[0])
    if first in actual:
        return
    msg = (
        f"onnxruntime was asked to run {graph} on {first} but the session only uses {actual}: "
        "the provider failed to initialise (for CUDA usually missing CUDA/cuDNN libraries; onnxruntime "
        "logged the reason above)."
    )
    if not fallback_allowed:
        raise ProviderUnavailableError(msg + " Fix the installation, or pass providers='cpu'.")
    warnings.warn(msg + " Falling back as your providers list allows.", RuntimeWarning, stacklevel=3)


def resolve_threads(threads: int | None) -> int:
    """onnxruntime's intra-op threads: ``threads`` checked, or this machine's physical cores for None."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return threads or physical_cores()


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{base}/core_id") as f:
                core = f.read().strip()
            with open(f"{base}/physical_package_id") as f:
                pkg = f.read().strip()
        except OSError:
            return len(cpus)
        cores.add((pkg, core))
    return max(1, len(cores))


_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_dot_product() -> bool | None:
    """Whether this x86 CPU has an int8 dot-product instruction (VNNI or AMX), which onnxruntime's int8
    MatMul kernels use without intermediate saturation; None where that cannot be read (not Linux x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _INT8_DOT_FLAGS)
    except OSError:
        return None
    return None
