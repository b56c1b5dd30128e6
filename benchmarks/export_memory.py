"""Peak memory of an export, per step, sampled from outside the exporter.

    python -m benchmarks.export_memory SOURCE [--variants int8,opt] [--json FILE]
    python -m benchmarks.export_memory --random-weights qwen3-0.6b [--variants int8]

Runs st-export's ``export_model`` in a child process and samples the resident memory of that process and of every
process it starts, every 10 ms, from this one (a sampler thread inside the exporter would miss the peaks of long
calls that hold Python's GIL). Two figures per step: resident memory (RSS, which counts the pages of memory-mapped
checkpoints the kernel can drop) and anonymous memory (what the process itself allocated: the figure that decides
whether an export fits in a machine). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
from exporters import export_model
def log(m):
    print(f"{time.time():.3f} {m}", flush=True)
export_model(sys.argv[1], output=sys.argv[2], variants=[v for v in sys.argv[3].split(',') if v], log=log)
"""


def _status(pid: int) -> tuple[int, int]:
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, anon


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, anonymous) bytes of ``pid`` and all its descendants."""
    todo, rss, anon = [pid], 0, 0
    while todo:
        p = todo.pop()
        r, a = _status(p)
        rss, anon = rss + r, anon + a
        todo += _children(p)
    return rss, anon


def measure(source: str, variants: list[str], out: Path, interval: float = 0.01) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryFile("w+") as logf:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, source, str(out), ",".join(variants)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        samples: list[tuple[float, int, int]] = []
        while child.poll() is None:
            rss, anon = tree_memory(child.pid)
            samples.append((time.time(), rss, anon))
            time.sleep(interval)
        logf.seek(0)
        lines = logf.read().splitlines()
    if child.returncode != 0:
        raise SystemExit(f"the export failed (exit {child.returncode}):\n" + "\n".join(lines[-20:]))
    marks = []
    for line in lines:
        stamp, _, message = line.partition(" ")
        try:
            marks.append((float(stamp), message))
        except ValueError:
            continue
    steps: list[dict] = []
    for i, (t0, message) in enumerate(marks):
        t1 = marks[i + 1][0] if i + 1 < len(marks) else float("inf")
        # a step shorter than the sampling interval gets the sample just before its end
        inside = [s for s in samples if t0 <= s[0] < t1] or [s for s in samples if s[0] < t1][-1:]
        if inside:
            steps.append(
                {
                    "from": message[:120],
                    "seconds": round(min(t1, samples[-1][0]) - t0, 1),
                    "peak_rss_gib": round(max(s[1] for s in inside) / 2**30, 2),
                    "peak_anon_gib": round(max(s[2] for s in inside) / 2**30, 2),
                }
            )
    before = [s for s in samples if not marks or s[0] < marks[0][0]]
    weights = sum(p.stat().st_size for p in Path(source).rglob("*.safetensors")) if Path(source).is_dir() else None
    return {
        "source": source,
        "variants": variants,
        "weights_gib": round(weights / 2**30, 2) if weights else None,
        "seconds": round(samples[-1][0] - samples[0][0], 1) if samples else None,
        "peak_rss_gib": round(max(s[1] for s in samples) / 2**30, 2),
        "peak_anon_gib": round(max(s[2] for s in samples) / 2**30, 2),
        "start_anon_gib": round(max((s[2] for s in before), default=0) / 2**30, 2),
        "steps": steps,
        "log": lines,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", help="a model name or folder st-export accepts")
    p.add_argument("--random-weights", default=None, help="a shape of benchmarks/random_shapes.py, built first")
    p.add_argument("--variants", default="int8", help="comma-separated variants besides fp32 (default int8)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if (args.source is None) == (args.random_weights is None):
        p.error("name a source or --random-weights (one of them)")
    source = args.source
    if args.random_weights:
        from benchmarks.random_shapes import SHAPES, build

        if args.random_weights not in SHAPES:
            p.error(f"unknown shape {args.random_weights!r}; choose from {', '.join(SHAPES)}")
        src = ROOT / "exported_models" / f"random-{args.random_weights}-src"
        if not (src / "modules.json").is_file():
            build(args.random_weights, src)
        source = str(src)
    (ROOT / "exported_models").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="st-export-memory-", dir=ROOT / "exported_models") as tmp:
        result = measure(source, [v for v in args.variants.split(",") if v], Path(tmp) / "out")
    result["random_weights"] = args.random_weights
    result["machine"] = machine()
    for step in result["steps"]:
        print(
            f"{step['peak_anon_gib']:6.2f} GiB anon {step['peak_rss_gib']:6.2f} GiB RSS {step['seconds']:7.1f} s  "
            f"{step['from']}"
        )
    print(
        f"peak: {result['peak_anon_gib']} GiB anonymous, {result['peak_rss_gib']} GiB resident "
        f"({result['weights_gib']} GiB of fp32 weights), {result['seconds']} s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
