"""What the benchmarks share: the repository root, the seeded generated corpus and the docs corpus, the machine
description every JSON records (CPU model, family/model numbers, ISA flags and a measured fp32 GEMM rate, so that a
ratio can be read against the machine's own limit), and the exports they run (made on first use)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import platform
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "sentence-transformers fp32"  # the label of the reference system in every result

WORDS = """time year people way day man thing woman life child world school state family student group country
problem hand part place case week company system program question work government number night point home water
room mother area money story fact month lot right study book eye job word business issue side kind head house
service friend father power hour game line end member law car city community name president team minute idea kid
body information back parent face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education foot boy age policy music market sense nation
plan college interest death experience effect class control care field development role effort rate heart drug
show leader light voice wife police mind price report decision son view relationship town road arm difference
value building action model season society tax director position player record paper space ground form event
official matter center couple site project activity star table need court oil situation cost industry figure
street image phone data picture practice piece land product doctor wall patient worker news test movie north love
support technology step baby computer type attention film tree source organization hair window evidence
population truth song energy chance dog""".split()  # noqa: SIM905 - word lists read best as text
VERBS = """is was makes takes finds gives tells becomes leaves feels brings begins keeps holds writes stands hears lets
means sets meets runs pays sits speaks lies leads reads grows loses falls sends builds""".split()  # noqa: SIM905


def make_corpus(seed: int = 13, n_queries: int = 2048, n_passages: int = 256) -> dict[str, list[str]]:
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        n = rng.randint(lo, hi)
        words = [rng.choice(WORDS) if i % 4 != 2 else rng.choice(VERBS) for i in range(n)]
        return " ".join(words).capitalize()

    queries = [sentence(5, 11) + "?" for _ in range(n_queries)]
    passages = [". ".join(sentence(10, 22) for _ in range(rng.randint(7, 12))) + "." for _ in range(n_passages)]
    return {"queries": queries, "passages": passages}


def docs_corpus(seed: int = 17, n_queries: int = 2048, n_passages: int = 256) -> dict[str, list[str]]:
    """Real English text: the long descriptions (README text) that installed Python packages ship in their
    METADATA, stripped of code blocks, tables, markup and links. Queries are sentences of 4-16 words, passages runs
    of consecutive sentences of 80-160 words. Which packages are installed decides the text, so the JSON records
    how many packages and sentences it came from."""
    import importlib.metadata as md
    import re

    sentences: list[str] = []
    paragraphs: list[list[str]] = []
    for dist in sorted(md.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower()):
        body = dist.metadata.get_payload() or ""
        if not isinstance(body, str) or len(body) < 500:
            continue
        body = re.sub(r"```.*?```", " ", body, flags=re.S)  # fenced code
        body = re.sub(r"(?m)^(\s{4,}|\t|>>>|\.\.\s|\|).*$", " ", body)  # indented code, doctest, rst, tables
        body = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", body)  # markdown links and images: their text
        body = re.sub(r"https?://\S+|<[^>]+>|[`*_#=~^]+", " ", body)
        for para in re.split(r"\n\s*\n", body):
            words = para.split()
            if len(words) < 6:
                continue
            sents = [x.strip() for x in re.split(r"(?<=[.!?])\s+", " ".join(words)) if len(x.split()) >= 4]
            sents = [x for x in sents if sum(c.isalpha() for c in x) > 0.7 * len(x.replace(" ", ""))]
            if sents:
                paragraphs.append(sents)
                sentences.extend(sents)
    rng = random.Random(seed)
    queries = [x for x in sentences if 4 <= len(x.split()) <= 16]
    passages = []
    for para in paragraphs:
        run: list[str] = []
        for sent in para:
            run.append(sent)
            if len(" ".join(run).split()) >= 80:
                if len(" ".join(run).split()) <= 160:
                    passages.append(" ".join(run))
                run = []
    if len(queries) < 50 or len(passages) < 20:
        raise SystemExit(f"the docs corpus found too little text ({len(queries)} queries, {len(passages)} passages)")
    return {
        "queries": [rng.choice(queries) for _ in range(n_queries)],
        "passages": [rng.choice(passages) for _ in range(n_passages)],
    }


# the instruction-set flags that decide how fast fp32 and int8 GEMMs can run (from /proc/cpuinfo)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def _cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor()


def cpu_description() -> dict:
    """What the CPU is: its model name, family/model numbers and the ISA flags that matter for GEMMs."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    out: dict = {"model_name": info.get("model name") or platform.processor(), "vendor": info.get("vendor_id")}
    for key, name in (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")):
        with contextlib.suppress(KeyError, ValueError):
            out[name] = int(info[key])
    out["isa"] = {flag: flag in flags for flag in ISA_FLAGS} if flags else "unknown (no /proc/cpuinfo)"
    return out


def gemm_rate(seconds: float = 1.5, n: int = 1024) -> dict:
    """The machine's own fp32 limit: the best GFLOP/s of numpy's BLAS on n x n float32 matmuls over ``seconds``,
    with all its threads. A benchmark's ratio reads against it: a system at 90% of it has little left to gain."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS threads start, pages fault in
    best, reps, start = 0.0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
        reps += 1
    return {"gflops": round(best, 1), "n": n, "reps": reps, "library": "numpy " + np.__version__}


VERSIONS_OF = (
    "torch",
    "sentence-transformers",
    "transformers",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
    "numpy",
    "st-runtime",
)


def machine(provider: str = "cpu") -> dict:
    cpu = _cpu_name()
    vers = {}
    for d in VERSIONS_OF:
        with contextlib.suppress(md.PackageNotFoundError):
            vers[d] = md.version(d)
    import onnxruntime as ort

    out = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cpu_detail": cpu_description(),
        "fp32_gemm": gemm_rate(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": vers,
        # the onnxruntime this process imports (a GPU machine may hold the CPU build too)
        "onnxruntime_imported": {
            "version": ort.__version__,
            "file": ort.__file__,
            "providers": ort.get_available_providers(),
        },
    }
    if provider == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch"
    return out


def ensure_export(model: str) -> Path:
    path = Path(model)
    if (path / "manifest.json").is_file():
        return path
    path = ROOT / "exported_models" / model
    if not (path / "manifest.json").is_file():
        from exporters import export_model

        export_model(model, output=path)
    return path


def bundled_path(manifest) -> str:
    from exporters.resolve import _bundled_copy

    return str(_bundled_copy(manifest["source"]["model"])[1])


def export_source(model: str) -> str:
    """The sentence-transformers folder the export of ``model`` was made from (exported first when missing)."""
    manifest = json.loads((ensure_export(model) / "manifest.json").read_text())
    src = manifest["source"]["model"]
    return src if Path(src).is_dir() else bundled_path(manifest)
