"""GPU throughput sweep: st_runtime's variants x CUDA graphs x batch sizes against sentence-transformers fp32
and fp16, in one run, on the same texts, with what limits each figure.

    python -m benchmarks.gpu_sweep EXPORT_FOLDER --json OUT.json [--png OUT.png] [--provider cuda]
        [--batch-sizes 128,256,512,1024,2048,4096] [--variants fp16,opt] [--st-batch-sizes 32,512]
        [--queries 32768] [--passages 4096] [--rounds 3] [--budget-s 240]

Per system and batch size it records items/s (median of --rounds timed encode calls after a warm-up, end to end:
tokenization, batching, host-device copies, the graph), the ratio to sentence-transformers fp32 and fp16 at
their default batch size (32) and at their best measured one, the min/mean cosine to sentence-transformers
fp32, and the GPU's busy percentage over the timed calls (NVML, sampled every 10 ms). It also measures what
bounds the end-to-end figure: the tokenizer alone on this machine's cores, and the graph alone on prebuilt
device feeds (the GPU-side ceiling). Results are saved after every system, so a run cut short keeps what
it measured. Benchmarks are not tests: this writes JSON, it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bundled_path, machine, make_corpus


class GpuBusy:
    """Mean NVML utilization (percent of time a kernel ran) while the block runs; None without NVML."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.samples: list[int] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._dev = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML here (CPU machine): the figure is recorded as null
            self._nvml = None

    def __enter__(self):
        self.samples = []
        self._stop = threading.Event()
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(self.period):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._dev).gpu)

    def __exit__(self, *exc):
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def parse_configs(spec: str) -> list[tuple[str, bool, bool, list[int | None]]]:
    """ "fp16@default,fp16/graphs@1024,fp16/nopipe@default" -> [(variant, flags, [batch size])]. Flags: graphs
    (cuda_graphs=True), nopipe (tokenize everything first), bigchunk (tokenize 16384 texts per chunk), switch (a
    0.1 ms GIL switch interval during the measurement: tells whether threads wait on the GIL)."""
    plan = []
    for item in spec.split(","):
        name, _, bs = item.partition("@")
        variant, *flags = name.split("/")
        unknown = set(flags) - {"graphs", "nopipe", "bigchunk", "switch"}
        if unknown or not variant:
            raise SystemExit(f"--configs {item!r}: expected VARIANT[/graphs][/nopipe]@BATCH, got flags {unknown}")
        plan.append((variant, "graphs" in flags, set(flags), [None if bs in ("", "default") else int(bs)]))
    return plan


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def timed(fn, texts, rounds: int, busy: GpuBusy) -> tuple[np.ndarray, list[float], float | None]:
    first = np.asarray(fn(texts))  # warm-up (captures, allocations), and the output for accuracy
    times = []
    with busy:
        for _ in range(rounds):
            t = time.perf_counter()
            fn(texts)
            times.append(time.perf_counter() - t)
    return first, times, busy.mean


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--provider", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    p.add_argument("--batch-sizes", default="128,256,512,1024,2048,4096")
    p.add_argument("--variants", default="fp16,opt")
    p.add_argument("--graphs", default="0,1", help="CUDA graphs off/on to measure (0,1)")
    p.add_argument("--st-batch-sizes", default="32,512", help="sentence-transformers batch sizes (32: its default)")
    p.add_argument("--st-precisions", default="fp32,fp16", help="sentence-transformers systems to measure")
    p.add_argument("--st-workloads", default="queries,passages", help="workloads sentence-transformers runs")
    p.add_argument("--st-rounds", type=int, default=None, help="timed rounds for sentence-transformers (--rounds)")
    p.add_argument(
        "--configs",
        default=None,
        help="instead of the grid: comma-separated VARIANT[/graphs][/nopipe]@BATCH (BATCH: a number "
        "or default), e.g. fp16@default,fp16/graphs@1024,fp16/nopipe@default",
    )
    p.add_argument("--queries", type=int, default=32768)
    p.add_argument("--passages", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=240.0, help="stop starting new systems after this long")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--png", type=Path, default=None)
    return p


def sweep_plan(args) -> list[tuple[str, bool, set[str], list[int | None]]]:
    """The st_runtime systems to measure: --configs, or the grid of variants x graphs x batch sizes, with
    tokenization unpipelined once, for the first variant."""
    sizes = [None] + [int(b) for b in args.batch_sizes.split(",") if b]
    if args.configs:
        return parse_configs(args.configs)
    variants = [v for v in args.variants.split(",") if v]
    return [
        (v, graphs, flags, sizes)
        for graphs in [g == "1" for g in args.graphs.split(",") if g]
        for v in variants
        for flags in (({""}, {"nopipe"}) if not graphs and v == variants[0] else ({""},))
    ]


ROW_PRINTED = ("system", "pipelined_tokenization", "tokenize_chunk", "gil_switch_interval_s", "batch_size")


class Sweep:
    """One run of the sweep: its arguments, the texts and sentence-transformers' embeddings of them, and the JSON
    it writes (saved after every system)."""

    def __init__(self, args, t_start: float):
        self.args, self.t_start = args, t_start
        self.gpu = args.provider == "cuda"
        manifest = json.loads((args.folder / "manifest.json").read_text())
        self.known = manifest["towers"]["text"]["variants"]
        source = manifest["source"]["model"]
        if manifest["source"]["origin"].startswith("bundled:") and not Path(source).is_dir():
            source = bundled_path(manifest)
        self.source = source
        self.corpus = make_corpus(n_queries=args.queries, n_passages=args.passages)
        self.busy = GpuBusy()
        self.out = {
            "created_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "model": args.folder.resolve().name,
            "source": source,
            "provider": args.provider,
            "rounds": args.rounds,
            "machine": machine(args.provider),
            "workloads": {k: len(v) for k, v in self.corpus.items()},
            "measure": "items/s = texts / median seconds of one encode call over the whole workload, end to end "
            "(tokenization included); gpu_busy_pct = NVML utilization over the timed calls",
            "tokenizer": {},
            "sentence_transformers": {},
            "st_runtime": [],
            "device_only": {},
            "skipped": [],
        }
        self.st = self.out["sentence_transformers"]
        self.encoders: dict = {}

    def save(self) -> None:
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        self.args.json.write_text(json.dumps(self.out, indent=2))

    def over_budget(self, what: str, grace: float = 0.0) -> bool:
        if time.perf_counter() - self.t_start > self.args.budget_s + grace:
            self.out["skipped"].append(what)
            return True
        return False

    def figures(self, w: str, emb, ts: list[float], pct: float | None) -> dict:
        """Speed and accuracy (to sentence-transformers fp32) of one system on workload ``w``."""
        cos = cosines(self.refs[w], emb)
        return {
            "items_per_s": len(self.corpus[w]) / statistics.median(ts),
            "all_s": ts,
            "gpu_busy_pct": pct,
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
        }

    # ------------------------------------------------------------------------------ sentence-transformers
    def load_references(self) -> None:
        """sentence-transformers, the reference: fp32 (and fp16 on CUDA), and fp32's embeddings of every text."""
        import torch
        from sentence_transformers import SentenceTransformer

        device = "cuda" if self.gpu else "cpu"
        self.st_models = {"fp32": SentenceTransformer(self.source, device=device)}
        if self.gpu:
            self.st_models["fp16"] = SentenceTransformer(self.source, device=device).half()
        self.refs = {}
        for w, texts in self.corpus.items():
            with torch.inference_mode():
                self.refs[w] = self.st_models["fp32"].encode(texts, batch_size=256, convert_to_numpy=True)
        self.st_workloads = [w for w in self.args.st_workloads.split(",") if w in self.corpus]

    def measure_st(self, batch_sizes: list[int], grace: float = 0.0) -> None:
        rounds = self.args.st_rounds or self.args.rounds
        for name, model in self.st_models.items():
            if name not in self.args.st_precisions.split(","):
                continue
            for bs in batch_sizes:
                if self.over_budget(f"sentence-transformers {name} batch {bs}", grace):
                    continue
                for w in self.st_workloads:
                    emb, ts, pct = timed(
                        lambda x, m=model, b=bs: m.encode(x, batch_size=b), self.corpus[w], rounds, self.busy
                    )
                    self.st.setdefault(name, {}).setdefault(w, {})[str(bs)] = self.figures(w, emb, ts, pct)
                self.save()

    def st_rate(self, name: str, w: str, which: str) -> float | None:
        rows = self.st.get(name, {}).get(w, {})
        if not rows:
            return None
        if which == "default" and "32" in rows:
            return rows["32"]["items_per_s"]
        return max(r["items_per_s"] for r in rows.values())

    def add_ratios(self) -> None:
        """Ratios of every st_runtime row to sentence-transformers at its default batch and at its best one
        measured (recomputed as sentence-transformers' larger batches come in)."""
        for row in self.out["st_runtime"]:
            for w, got in row.get("workloads", {}).items():
                if "items_per_s" not in got:
                    continue
                for n in self.st:
                    for which in ("default", "best"):
                        if r := self.st_rate(n, w, which):
                            got[f"ratio_to_st_{n}_{which}"] = got["items_per_s"] / r

    # ------------------------------------------------------------------------------------------- st_runtime
    def measure_tokenizer(self) -> None:
        """The tokenizer alone, on all cores."""
        from st_runtime import SentenceEncoder

        probe = SentenceEncoder(
            self.args.folder, providers=self.args.provider, variant="fp32" if not self.gpu else None
        )
        tok = probe.tokenizer
        for w, texts in self.corpus.items():
            ts = []
            for _ in range(self.args.rounds):
                t = time.perf_counter()
                enc = tok.encode_batch(texts)
                ts.append(time.perf_counter() - t)
            tokens = sum(len(e) for e in enc)
            self.out["tokenizer"][w] = {
                "texts_per_s": len(texts) / statistics.median(ts),
                "tokens_per_text": tokens / len(texts),
                "all_s": ts,
            }
        self.save()

    def encoder(self, v: str, graphs: bool, label: str):
        """st_runtime's encoder of variant ``v`` (made once), or None when it cannot be made (recorded)."""
        from st_runtime import SentenceEncoder

        if (v, graphs) not in self.encoders:
            try:
                self.encoders[(v, graphs)] = SentenceEncoder(
                    self.args.folder, providers=self.args.provider, variant=v, cuda_graphs=graphs
                )
            except Exception as exc:  # recorded, not hidden
                self.out["st_runtime"].append({"system": label, "error": f"{type(exc).__name__}: {exc}"})
                self.save()
                return None
        return self.encoders[(v, graphs)]

    def measure_system(self, v: str, graphs: bool, flags: set[str], batch_sizes: list[int | None]) -> None:
        """One st_runtime system of the plan at each of its batch sizes."""
        pipeline = "nopipe" not in flags
        if v not in self.known or (graphs and not self.gpu):
            self.out["skipped"].append(f"{v} graphs={graphs}: not available here")
            return
        label = f"{v}{' + CUDA graphs' if graphs else ''}"
        if self.over_budget(label):
            return
        enc = self.encoder(v, graphs, label)
        if enc is None:
            return
        default_chunk = enc.text_tower.policy.pipeline_items(1)
        enc.text_tower.policy.pipeline_chunk = (16384 if "bigchunk" in flags else default_chunk) if pipeline else None
        switch = sys.getswitchinterval()
        if "switch" in flags:
            sys.setswitchinterval(1e-4)
        for bs in batch_sizes:
            if self.over_budget(f"{label} batch {bs}"):
                break
            self.measure_row(enc, label, v, graphs, pipeline, bs)
        enc.text_tower.policy.pipeline_chunk = default_chunk
        sys.setswitchinterval(switch)
        if graphs:
            self.out.setdefault("graphs_captured", {})[v] = {
                "graphs": enc.text_tower.runner.graphs_taken,
                "uncaptured": enc.text_tower.runner.uncaptured,
            }

    def measure_row(self, enc, label: str, v: str, graphs: bool, pipeline: bool, bs: int | None) -> None:
        row = {
            "system": label,
            "variant": v,
            "cuda_graphs": graphs,
            "pipelined_tokenization": pipeline,
            "tokenize_chunk": enc.text_tower.policy.pipeline_chunk,
            "gil_switch_interval_s": sys.getswitchinterval(),
            "batch_size": bs,
            "workloads": {},
        }
        for w, texts in self.corpus.items():
            try:
                emb, ts, pct = timed(
                    lambda x, e=enc, b=bs: e.encode(x, batch_size=b), texts, self.args.rounds, self.busy
                )
            except Exception as exc:
                row["workloads"][w] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
                continue
            row["workloads"][w] = self.figures(w, emb, ts, pct)
        self.out["st_runtime"].append(row)
        self.add_ratios()
        print(
            json.dumps({k: row[k] for k in ROW_PRINTED}),
            {w: round(r.get("items_per_s", 0)) for w, r in row["workloads"].items()},
            flush=True,
        )
        self.save()

    # ------------------------------------------------------------------------------------------ device only
    def device_only(self) -> None:
        """The graph alone on prebuilt feeds, for the fastest configuration on queries: the device-side ceiling."""
        from st_runtime import SentenceEncoder

        best = max(
            (
                r
                for r in self.out["st_runtime"]
                if "queries" in r.get("workloads", {}) and "items_per_s" in r["workloads"]["queries"]
            ),
            key=lambda r: r["workloads"]["queries"]["items_per_s"],
            default=None,
        )
        if best is None or self.over_budget("device-only", grace=20.0):  # cheap, and it says what limits
            return
        enc = SentenceEncoder(
            self.args.folder, providers=self.args.provider, variant=best["variant"], cuda_graphs=best["cuda_graphs"]
        )
        for w, texts in self.corpus.items():
            self.out["device_only"][w] = self.graph_alone(enc.text_tower, best, texts)
        self.save()

    def graph_alone(self, text, best: dict, texts: list[str]) -> dict:
        from st_runtime.batching import longest_first

        bs = best["batch_size"] or text.policy.auto_batch_size
        t = time.perf_counter()
        encodings = text.tokenizer.encode_batch(texts)
        t_tok = time.perf_counter() - t
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        order = longest_first(lengths)
        batches = text.plan(lengths[order], bs, text.max_seq_length)
        t = time.perf_counter()
        feeds = [text.feeds(encodings, lengths, order[s:e], wd) for s, e, wd in batches]
        t_feeds = time.perf_counter() - t
        for f in feeds:  # warm
            text.runner(f)
        ts = []
        with self.busy:
            for _ in range(self.args.rounds):
                t = time.perf_counter()
                for f in feeds:
                    text.runner(f)
                ts.append(time.perf_counter() - t)
        return {
            "system": best["system"],
            "batch_size": bs,
            "batches": len(batches),
            "padded_tokens": int(sum((e - s) * wd for s, e, wd in batches)),
            "graph_items_per_s": len(texts) / statistics.median(ts),
            "gpu_busy_pct": self.busy.mean,
            "tokenize_s": t_tok,
            "build_feeds_s": t_feeds,
            "graph_s": statistics.median(ts),
        }


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    t_start = time.perf_counter()
    sweep = Sweep(args, t_start)
    sweep.load_references()
    # sentence-transformers at its first batch size (its default) now; its larger ones after st_runtime's
    # systems, so that a tight budget never leaves st_runtime unmeasured
    st_sizes = [int(b) for b in args.st_batch_sizes.split(",") if b]
    sweep.measure_st(st_sizes[:1])
    sweep.measure_tokenizer()
    for v, graphs, flags, batch_sizes in sweep_plan(args):
        sweep.measure_system(v, graphs, flags, batch_sizes)
    sweep.encoders.clear()
    sweep.device_only()
    sweep.measure_st(st_sizes[1:], grace=30.0)  # sentence-transformers' larger batches, where time is left
    sweep.add_ratios()
    sweep.out["elapsed_s"] = time.perf_counter() - t_start
    sweep.save()
    print(f"wrote {args.json}")
    if args.png:
        plot(sweep.out, args.png)
    return 0


def plot(out: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return
    workloads = list(out["workloads"])
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5))
    for ax, w in zip(np.atleast_1d(axes), workloads):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in out["st_runtime"]:
            got = r.get("workloads", {}).get(w, {})
            if r.get("batch_size") and "items_per_s" in got:
                name = f"st_runtime {r['system']}" + ("" if r["pipelined_tokenization"] else " (no pipelining)")
                series.setdefault(name, []).append((r["batch_size"], got["items_per_s"]))
        for name, pts in series.items():
            ax.plot(*zip(*sorted(pts)), marker="o", label=name)
        for name, rows in out["sentence_transformers"].items():
            pts = sorted((int(b), r["items_per_s"]) for b, r in rows.get(w, {}).items())
            if pts:
                ax.plot(*zip(*pts), marker="s", ls="--", label=f"sentence-transformers {name}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("texts per batch")
        ax.set_ylabel(f"{w} / s (end to end)")
        ax.set_title(f"{out['model']}, {w}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{out['machine'].get('gpu') or out['machine']['cpu']}, median of {out['rounds']} rounds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
