"""Which exported graph variant a model runs: the caller's choice, checked, or the fastest that passed its gate."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import VariantError
from .providers import cpu_int8_dot_product


def describe_value(obj: Any) -> str:
    return type(obj).__name__


def warn_if_int8_kernels_differ(vspec: dict[str, Any], path: Path) -> None:
    """int8 graphs are validated on the export machine. One validated where the CPU has an int8 dot product
    (VNNI/AMX) may lose accuracy where it has not: onnxruntime's AVX2 int8 kernels sum pairs of products in
    16 bits, which can saturate. Say so rather than let the manifest's accuracy stand unqualified."""
    exported_with = (vspec.get("build") or {}).get("cpu_int8_dot_product")
    if vspec.get("precision") != "int8" or not exported_with:
        return
    here = cpu_int8_dot_product()
    if here is False:
        warnings.warn(
            f"The int8 graph of {path} was validated on a CPU with an int8 dot-product instruction "
            "(VNNI); this CPU has none, so onnxruntime uses kernels that can saturate and the accuracy "
            "recorded in manifest.json may not hold here. Run `st-export` on this machine to validate "
            "int8 here, or use the default (exact) variant.",
            RuntimeWarning,
            stacklevel=3,
        )


def choose_variant(
    path: Path, rejected: Mapping[str, Any], tower: Mapping[str, Any], requested: str | None, providers
) -> tuple[str, dict[str, Any]]:
    """Default: the fastest variant within fp32 accuracy that passed its gate for the provider.
    "fastest": the fastest that passed its gate (int8 on CPU, fp16 on CUDA). A name: that variant."""
    variants = tower["variants"]
    provider = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    passed = sorted(v for v, s in variants.items() if s["status"] == "passed")
    if requested is not None and requested != "fastest":
        if requested not in variants:
            if requested in rejected:
                entry = rejected[requested]
                if entry.get("error"):
                    raise VariantError(
                        f"variant {requested!r} could not be built at export ({entry['error']}), "
                        f"so it was not written. Passing variants: {passed}."
                    )
                summary = (entry.get("validation") or {}).get("summary", "")
                raise VariantError(
                    f"variant {requested!r} was built but missed its accuracy gate at export "
                    f"({summary}), so it was not written. Passing variants: {passed}."
                )
            raise VariantError(
                f"variant {requested!r} is not in {path}; it has {sorted(variants)}. "
                "Re-export with `st-export --variants ...` to produce it, or pick one of those."
            )
        spec = variants[requested]
        if spec["status"] == "failed":
            raise VariantError(
                f"variant {requested!r} in {path} failed its accuracy gate at export "
                f"({spec.get('validation', {}).get('summary', 'see manifest.json')}); it is "
                f"not safe to use. Passing variants: {passed}."
            )
        return requested, spec
    eligible = {
        name: s
        for name, s in variants.items()
        if s["status"] == "passed" and provider in s["providers"] and (requested == "fastest" or s.get("exact", True))
    }
    # On the CPU, st-export timed the variants: prefer the measured order to the static rank.
    timed = provider == "CPUExecutionProvider" and all("cpu_timing" in s for s in eligible.values())
    candidates = [((s["cpu_timing"]["median_s"] if timed else 0.0), s["rank"], name) for name, s in eligible.items()]
    if not candidates:
        raise VariantError(
            f"{path} has no variant that passed its accuracy gate for {provider} "
            f"(variants: { {n: (s['status'], s['providers']) for n, s in variants.items()} }). "
            "Re-export the model with `st-export`, or choose another provider."
        )
    name = min(candidates)[-1]
    return name, variants[name]


def length_routing(
    tower: Mapping[str, Any], requested: str | None, providers
) -> tuple[str, dict[str, Any], str, dict[str, Any], int] | None:
    """The default on the CPU when st-export measured that another exact variant is faster on long texts
    (``cpu_routing``): (short variant, its spec, long variant, its spec, long_from). None when a variant was
    asked for, off the CPU, or without such a measurement."""
    routing = tower.get("cpu_routing")
    provider = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if routing is None or requested is not None or provider != "CPUExecutionProvider":
        return None
    variants = tower["variants"]
    names = (routing["short"], routing["long"])
    if not all(n in variants and variants[n]["status"] == "passed" and variants[n].get("exact", True) for n in names):
        return None
    return names[0], variants[names[0]], names[1], variants[names[1]], int(routing["long_from"])
