"""Feed path benchmark: texts/s of tokenization plus the graph's input arrays, with no graph run: st_runtime's feed
path against the path before it ("today's": one ``encode_batch_fast`` call on the tokenizer, then token counts,
batch plans and padded arrays built by Python loops over the texts), on the same texts, in the same process.

    python -m benchmarks.feed [--model all-MiniLM-L6-v2] [--threads 1,2] [--rounds 7] [--json FILE]

Workloads: queries and passages of the generated corpus and of the docs corpus (benchmarks.common), 2,048 queries
and 256 passages each, and the generated ones in calls 8 times as large (16,384 queries, 2,048 passages: a bulk
job's calls, a GPU's tokenization chunks), truncated at the model's max_seq_length, in CPU batches (1,024 texts /
2,048 padded tokens). Each timed call follows an untimed call of the same path and workload, as in a stream of
calls (a bulk job's, a GPU's feed): a call after another path's would meet that path's leftovers (the tokenizer's
rayon threads spin a while after a call), and one after a rest would meet an idle vCPU, which on a VM can take
milliseconds to start a thread (2-vCPU VM, 16,384 queries natively on 2 threads: 4.0 ms back to back, 7.6-7.9 ms
after 5-20 ms of rest, where 1 thread takes 7.5 ms).
Each thread count runs in a process of its own, since the tokenizer's Rust thread pool (rayon) is sized once per
process (RAYON_NUM_THREADS): today's path runs with n rayon threads, st_runtime's with n rayon threads and n feed
threads (``feed_threads``). Within a process both paths run every workload once per round, alternating, after a
warm-up; figures are medians over rounds. Before timing, the two paths' arrays are compared, bit for bit.
Tokenization alone (no batch plan, no arrays) is timed too, for both paths ("today tokenize", "st_runtime
tokenize"). st_runtime builds its arrays as a GPU tower does: every batch at once (batching.build_all_feeds).

Writes JSON (the machine description, texts/s per path, thread count and workload, the ratios) to --json or
benchmarks/results/feed-<host>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, docs_corpus, ensure_export, machine, make_corpus

BATCH, TOKENS = 1024, 2048
LARGE = 8


# ---------------------------------------------------------------------------------------------- today's path
def legacy_plan(sorted_lengths, batch_size, pad_multiple=1, split_ratio=0.5, max_tokens=None, max_width=None):
    """st_runtime.batching.plan_batches before #30 (a Python loop over the items): the benchmark's "today" and the
    reference tests/runtime/test_batching.py checks today's plans against."""
    out, n, start = [], len(sorted_lengths), 0
    while start < n:
        width = max(int(sorted_lengths[start]), 1)
        floor = width * split_ratio
        padded = -(-width // pad_multiple) * pad_multiple
        if max_width is not None:
            padded = min(padded, max(width, max_width))
        end, limit = start + 1, min(n, start + batch_size)
        if max_tokens is not None:
            limit = min(limit, start + max(1, max_tokens // padded))
        while end < limit and sorted_lengths[end] >= floor:
            end += 1
        out.append((start, end, padded))
        start = end
    return out


def _legacy_feeds(encodings, lengths, idx, width: int, inputs: list[str], pad_id: int) -> dict[str, np.ndarray]:
    """st_runtime.batching.build_feeds before #30 (a generator over the items), right padding, single texts."""
    lens = lengths[idx]
    mask = np.arange(width) < lens[:, None]
    total = int(lens.sum())
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(itertools.chain.from_iterable(encodings[i].ids for i in idx), dtype=np.int64, count=total)
    feeds = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
    if "token_type_ids" in inputs:
        feeds["token_type_ids"] = np.zeros((len(idx), width), dtype=np.int64)
    return {k: feeds[k] for k in inputs}


def legacy_path(tokenizer, texts: list[str], inputs: list[str], pad_id: int) -> list[dict[str, np.ndarray]]:
    encodings = tokenizer.encode_batch_fast(texts)
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
    order = np.argsort(-lengths, kind="stable")
    plan = legacy_plan(lengths[order], BATCH, max_tokens=TOKENS)
    return [_legacy_feeds(encodings, lengths, order[s:e], w, inputs, pad_id) for s, e, w in plan]


# ---------------------------------------------------------------------------------------------- st_runtime's
def new_path(tokenizers, texts: list[str], inputs: list[str], pad_id: int) -> list[dict[str, np.ndarray]]:
    from st_runtime.batching import build_all_feeds, longest_first, plan_batches, token_counts

    encodings = tokenizers.encode_fn(tokenizers.max_seq_length)(texts)
    lengths = token_counts(encodings)
    order = longest_first(lengths)
    plan = plan_batches(lengths[order], BATCH, max_tokens=TOKENS)
    # every batch's arrays at once, on the feed threads, as a GPU tower builds them (TextTower._embed_encoded)
    return build_all_feeds(encodings, lengths, order, plan, inputs, pad_id, True, threads=tokenizers.threads)


def _worker(model: Path, threads: int, rounds: int) -> dict:
    """One thread count's figures (run in a process whose RAYON_NUM_THREADS is ``threads``)."""
    from st_runtime.feeding import Tokenizers, load_tokenizer
    from st_runtime.manifest import load_manifest, read_spec

    tower = read_spec(load_manifest(model)).towers["text"]
    tok = tower.tokenizer
    tokenizer = load_tokenizer(model, tok.raw)
    tokenizer.no_padding()
    tokenizer.enable_truncation(tok.max_seq_length, direction=tok.truncation_side)
    ours = Tokenizers(load_tokenizer(model, tok.raw), tok.max_seq_length, tok.truncation_side, True, threads)
    inputs, pad = list(tower.inputs), tok.pad_token_id
    encode = ours.encode_fn(tok.max_seq_length)
    systems = {
        "today": lambda t: legacy_path(tokenizer, t, inputs, pad),
        "st_runtime": lambda t: new_path(ours, t, inputs, pad),
        # tokenization alone (no batch plan, no arrays)
        "today tokenize": tokenizer.encode_batch_fast,
        "st_runtime tokenize": encode,
    }
    corpora = {"generated": make_corpus(), "docs": docs_corpus()}
    workloads = {f"{c}/{w}": texts for c, corpus in corpora.items() for w, texts in corpus.items()}
    # calls LARGE times as large (a bulk job's, or a GPU's tokenization chunks): a second thread pays only where a
    # call's work is well above what starting it costs (on a 2-vCPU VM, a thread on the idle vCPU starts running
    # 0.1-0.2 ms after it is asked to, and a short query takes 0.4 us to tokenize)
    for w in ("queries", "passages"):
        workloads[f"generated/{w} x{LARGE}"] = corpora["generated"][w] * LARGE
    identical = {}
    for name, texts in workloads.items():
        a, b = systems["today"](texts), systems["st_runtime"](texts)
        identical[name] = len(a) == len(b) and all(
            x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
        )
    times: dict[str, dict[str, list[float]]] = {s: {w: [] for w in workloads} for s in systems}
    names = list(systems)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for workload, texts in workloads.items():
                systems[name](texts)  # untimed: the timed call follows one of its own, as in a stream of calls
                start = time.perf_counter()
                systems[name](texts)
                times[name][workload].append(time.perf_counter() - start)
    rates = {s: {w: len(workloads[w]) / statistics.median(ts) for w, ts in per.items()} for s, per in times.items()}
    ascii_share = {w: sum(map(str.isascii, t)) / len(t) for w, t in workloads.items()}
    return {"threads": threads, "texts_per_s": rates, "identical_feeds": identical, "ascii_share": ascii_share}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    model = ensure_export(args.model)
    if args.worker is not None:
        print(json.dumps(_worker(model, args.worker, args.rounds)))
        return 0
    runs = []
    for n in (int(t) for t in args.threads.split(",")):
        env = {**os.environ, "RAYON_NUM_THREADS": str(n), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "benchmarks.feed", "--model", str(model), "--rounds", str(args.rounds)]
        done = subprocess.run([*cmd, "--worker", str(n)], env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the {n}-thread run failed:\n{done.stderr[-4000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    by = {r["threads"]: r for r in runs}
    for r in runs:
        r["st_runtime_over_today"] = {
            w: round(r["texts_per_s"]["st_runtime"][w] / v, 3) for w, v in r["texts_per_s"]["today"].items()
        }
        r["tokenize_st_runtime_over_today"] = {
            w: round(r["texts_per_s"]["st_runtime tokenize"][w] / v, 3)
            for w, v in r["texts_per_s"]["today tokenize"].items()
        }
        one = by.get(1)
        if one is not None and r["threads"] != 1:
            r["over_one_thread"] = {
                s: {w: round(v / one["texts_per_s"][s][w], 3) for w, v in per.items()}
                for s, per in r["texts_per_s"].items()
            }
        print(f"threads={r['threads']}")
        for w, today in r["texts_per_s"]["today"].items():
            ours = r["texts_per_s"]["st_runtime"][w]
            scale = r.get("over_one_thread", {}).get("st_runtime", {}).get(w)
            extra = f", {scale:.2f}x its 1-thread rate" if scale else ""
            print(f"  {w:18s} today {today:9.0f}/s  st_runtime {ours:9.0f}/s  ({ours / today:.2f}x{extra})")
            alone = r["texts_per_s"]["st_runtime tokenize"][w]
            scale = r.get("over_one_thread", {}).get("st_runtime tokenize", {}).get(w)
            extra = f", {scale:.2f}x its 1-thread rate" if scale else ""
            print(f"  {'':18s} tokenization alone: st_runtime {alone:9.0f}/s{extra}")
    result = {"machine": machine(), "model": args.model, "batch": {"texts": BATCH, "tokens": TOKENS}, "runs": runs}
    out = args.json or ROOT / "benchmarks" / "results" / f"feed-{platform.node() or 'host'}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
