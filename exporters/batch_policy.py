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

from .tasks import TASKS

SHORT_BUDGETS = (256, 512, 1024, 2048, 4096, 8192)
LONG_BUDGETS = (512, 1024, 2048, 4096, 8192)
# another budget must beat the default by this much to replace it: smaller differences are timing noise on a shared
# machine
MARGIN = 0.05
# The most seconds the budget grid may take per length class, and the fewest rounds worth timing. On a large model
# (Qwen3-Embedding-0.6B: a round of the short grid alone takes minutes on 2 cores) the grid is skipped and the default
# budget stays: there compute dominates a batch, and the budget matters least.
GRID_SECONDS = 150.0
MIN_ROUNDS = 3
# Variants whose graphs hold more than this between them are timed one at a time (see timing_groups).
TOGETHER_BYTES = 1 << 30


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
    """Time each passed CPU variant of the text tower at the budgets of the grid, on short queries and on long
    passages, and record the fastest budget per class (``cpu_batching``) and the variant's rate there
    (``cpu_timing``). Only a task with a ``batch_grid`` (an embedding model's) is measured. Variants and budgets
    alternate within each round, so the rates of different variants are comparable: ``route_by_length`` reads
    them."""
    from .memory import release_memory

    tower = manifest["towers"].get("text")
    runtime = TASKS[manifest["task"]].batch_grid
    if tower is None or runtime is None:
        return
    names = [
        n for n, v in tower["variants"].items() if v["status"] == "passed" and "CPUExecutionProvider" in v["providers"]
    ]
    if not names:
        return
    chosen: dict[str, dict[str, Any]] = {n: {"long_from": LONG_FROM, "measured_items_per_s": {}} for n in names}
    for group in timing_groups(tower, folder, names):
        encoders = {n: runtime(folder, n) for n in group}
        _measure_group(encoders, tower, chosen, rounds, log)
        del encoders
        release_memory()
    for n in names:
        if "short_tokens" not in chosen[n] and "long_tokens" not in chosen[n]:
            continue  # nothing measured: the runtime keeps its default budget
        tower["variants"][n]["cpu_batching"] = chosen[n]
        log(
            f"CPU batching of {n}: {chosen[n].get('short_tokens')} tokens per batch of short texts, "
            f"{chosen[n].get('long_tokens', '-')} of long ones"
        )


def timing_groups(tower: dict[str, Any], folder: Path, names: list[str]) -> list[list[str]]:
    """The variants timed together (alternating within each round, so a burst of load from elsewhere hits them
    alike): all of them, unless their graphs hold more than TOGETHER_BYTES between them; then one at a time, so
    the timing never holds a large model's weights twice (fp32 and int8 of Qwen3-Embedding-0.6B: 3.3 GB)."""
    size = 0
    for n in names:
        graph = folder / tower["variants"][n]["file"]
        size += sum(p.stat().st_size for p in (graph, graph.with_name(graph.name + ".data")) if p.exists())
    return [names] if size <= TOGETHER_BYTES else [[n] for n in names]


def _measure_group(encoders: dict[str, Any], tower: dict[str, Any], chosen: dict, rounds: int, log) -> None:
    from dataclasses import replace

    names = list(encoders)
    bases = {n: e.text_tower.policy for n, e in encoders.items()}
    for cls, budgets in (("short", SHORT_BUDGETS), ("long", LONG_BUDGETS)):
        texts = _workloads()[cls]
        if cls == "long" and max(len(e) for e in encoders[names[0]].text_tower.tokenize(texts)) < LONG_FROM:
            continue  # the model truncates below the long class (tiny test models): nothing to measure
        runs = [(n, b) for n in names for b in budgets]
        times: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
        one_round = 0.0  # estimated from the warm-up (which includes onnxruntime's first-run set-up: an overestimate)
        for enc in encoders.values():
            t = time.perf_counter()
            enc.encode(texts[:32])
            one_round += (time.perf_counter() - t) * len(texts) / min(32, len(texts)) * len(budgets)
        fit = min(rounds, int(GRID_SECONDS // one_round)) if one_round > 0 else rounds
        if fit < MIN_ROUNDS:
            log(
                f"CPU batching of {cls} texts not measured: one round of the budget grid would take about "
                f"{one_round:.0f} s on this model (at most {GRID_SECONDS:.0f} s go to it); the default "
                f"{CPU_BATCH_TOKENS}-token budget stays"
            )
            continue
        for r in range(fit):
            for n, b in runs[r % len(runs) :] + runs[: r % len(runs)]:
                text = encoders[n].text_tower
                text.policy = replace(bases[n], max_batch_tokens=b, long_batch_tokens=None)
                t = time.perf_counter()
                encoders[n].encode(texts)
                times[(n, b)].append(time.perf_counter() - t)
        for n in names:
            encoders[n].text_tower.policy = bases[n]
            best = _fastest({b: times[(n, b)] for b in budgets})
            chosen[n][f"{cls}_tokens"] = best
            chosen[n]["measured_items_per_s"][cls] = {
                str(b): round(len(texts) / statistics.median(times[(n, b)]), 1) for b in budgets
            }
            timing = tower["variants"][n].setdefault("cpu_timing", {"median_s": 0.0})
            timing[f"{cls}_items_per_s"] = chosen[n]["measured_items_per_s"][cls][str(best)]


def route_by_length(manifest: dict[str, Any], log: Callable[[str], None]) -> None:
    """From the rates measure_cpu_batching recorded (each variant at its own budgets): where the fastest exact
    variant on long texts is another than the fastest on short ones, and beats it there by more than MARGIN,
    record ``cpu_routing`` on the tower: the runtime's default then runs batches narrower than ``long_from``
    tokens on one graph and wider ones on the other (both within fp32 accuracy)."""
    tower = manifest["towers"].get("text")
    if tower is None:
        return
    rates = {
        n: v["cpu_timing"]
        for n, v in tower["variants"].items()
        if v["status"] == "passed"
        and v.get("exact", True)
        and "long_items_per_s" in v.get("cpu_timing", {})
        and "short_items_per_s" in v.get("cpu_timing", {})
    }
    if len(rates) < 2:
        return
    short = max(rates, key=lambda n: rates[n]["short_items_per_s"])
    long = max(rates, key=lambda n: rates[n]["long_items_per_s"])
    if long != short and rates[long]["long_items_per_s"] > rates[short]["long_items_per_s"] * (1 + MARGIN):
        tower["cpu_routing"] = {"short": short, "long": long, "long_from": LONG_FROM}
        log(f"CPU routing: batches under {LONG_FROM} tokens on {short}, wider ones on {long}")
    else:
        tower.pop("cpu_routing", None)
