"""The CPU batch policy of each variant, measured at export: how many padded tokens a batch of short texts and a
batch of long texts should hold on this model and variant. One budget does not fit every variant (int8 quantizes
activations per batch and keeps other data in cache) nor every length, so the export times a small grid and
records the fastest budget per length class in the manifest (``cpu_batching``), which ``encode(batch_size=None)``
then uses on the CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from st_runtime.batching import CPU_BATCH_TOKENS, LONG_FROM

SHORT_BUDGETS = (256, 512, 1024, 2048, 4096, 8192)
LONG_BUDGETS = (512, 1024, 2048, 4096, 8192)
# another budget must beat the default by this much to replace it: smaller differences are this VM's noise
MARGIN = 0.05


def _workloads() -> dict[str, list[str]]:
    from .battery import PASSAGES, SHORT_QUERIES

    longer = [f"{a} {b}" for a, b in zip(PASSAGES, PASSAGES[1:] + PASSAGES[:1])]  # about 130 tokens each
    return {"short": SHORT_QUERIES * 32, "long": longer * 8}


def _fastest(times: dict[int, list[float]]) -> int:
    medians = {b: statistics.median(ts) for b, ts in times.items()}
    best = min(medians, key=medians.get)
    default = medians.get(CPU_BATCH_TOKENS)
    if default is not None and medians[best] > default * (1 - MARGIN):
        return CPU_BATCH_TOKENS
    return best


def measure_cpu_batching(manifest: dict[str, Any], folder: Path, log: Callable[[str], None], rounds: int = 5) -> None:
    """Time each passed CPU variant of an embedding model's text tower at the budgets of the grid, on short
    queries and on long passages (budgets alternating within each round), and record the fastest per class."""
    from dataclasses import replace

    from st_runtime import SentenceEncoder

    tower = manifest["towers"].get("text")
    if tower is None or manifest.get("task", "embedding") != "embedding":
        return
    work = _workloads()
    for name, variant in tower["variants"].items():
        if variant["status"] != "passed" or "CPUExecutionProvider" not in variant["providers"]:
            continue
        enc = SentenceEncoder(folder, providers="cpu", variant=name)
        text = enc.text_tower
        base = text.policy
        chosen: dict[str, Any] = {"long_from": LONG_FROM}
        measured: dict[str, dict[str, float]] = {}
        for cls, budgets in (("short", SHORT_BUDGETS), ("long", LONG_BUDGETS)):
            texts = work[cls]
            widths = [len(e) for e in text.tokenize(texts)]
            if cls == "long" and max(widths) < LONG_FROM:
                continue  # the model truncates below the long class (tiny test models): nothing to measure
            times: dict[int, list[float]] = {b: [] for b in budgets}
            enc.encode(texts[:32])  # warm-up
            for r in range(rounds):
                order = list(budgets[r % len(budgets) :] + budgets[: r % len(budgets)])
                for b in order:
                    text.policy = replace(base, max_batch_tokens=b, long_batch_tokens=None)
                    t = time.perf_counter()
                    enc.encode(texts)
                    times[b].append(time.perf_counter() - t)
            text.policy = base
            chosen[f"{cls}_tokens"] = _fastest(times)
            measured[cls] = {str(b): round(len(texts) / statistics.median(ts), 1) for b, ts in times.items()}
        chosen["measured_items_per_s"] = measured
        variant["cpu_batching"] = chosen
        log(
            f"CPU batching of {name}: {chosen.get('short_tokens')} tokens per batch of short texts, "
            f"{chosen.get('long_tokens', '-')} of long ones"
        )


def route_by_length(manifest: dict[str, Any], folder: Path, log: Callable[[str], None], rounds: int = 5) -> None:
    """Time every passed exact CPU variant of an embedding model on short queries and on long passages
    (alternating within each round, each under its own measured batch budgets), record the rates in its
    cpu_timing, and where the fastest on long texts is another variant than the fastest on short ones, and beats
    it there by more than MARGIN, record ``cpu_routing`` on the tower: the runtime's default then runs batches
    narrower than ``long_from`` tokens on one graph and wider ones on the other (both within fp32 accuracy)."""
    from st_runtime import SentenceEncoder

    tower = manifest["towers"].get("text")
    if tower is None or manifest.get("task", "embedding") != "embedding":
        return
    exact = [
        n
        for n, v in tower["variants"].items()
        if v["status"] == "passed" and v.get("exact", True) and "CPUExecutionProvider" in v["providers"]
    ]
    if len(exact) < 2:
        return
    encoders = {n: SentenceEncoder(folder, providers="cpu", variant=n) for n in exact}
    rates: dict[str, dict[str, float]] = {n: {} for n in exact}
    for cls, texts in _workloads().items():
        if cls == "long" and max(len(e) for e in encoders[exact[0]].text_tower.tokenize(texts)) < LONG_FROM:
            continue
        times: dict[str, list[float]] = {n: [] for n in exact}
        for enc in encoders.values():
            enc.encode(texts[:32])
        for r in range(rounds):
            for n in exact[r % len(exact) :] + exact[: r % len(exact)]:
                t = time.perf_counter()
                encoders[n].encode(texts)
                times[n].append(time.perf_counter() - t)
        for n, ts in times.items():
            rates[n][cls] = len(texts) / statistics.median(ts)
    for n in exact:
        timing = tower["variants"][n].setdefault("cpu_timing", {"median_s": 0.0})
        for cls, rate in rates[n].items():
            timing[f"{cls}_items_per_s"] = round(rate, 1)
    if not all("long" in r for r in rates.values()):
        return
    short = max(exact, key=lambda n: rates[n]["short"])
    long = max(exact, key=lambda n: rates[n]["long"])
    if long != short and rates[long]["long"] > rates[short]["long"] * (1 + MARGIN):
        tower["cpu_routing"] = {"short": short, "long": long, "long_from": LONG_FROM}
        log(f"CPU routing: batches under {LONG_FROM} tokens on {short}, wider ones on {long}")
    else:
        tower.pop("cpu_routing", None)
