"""st-export as a pipeline of named steps: resolve, inspect, load, trace towers, write manifest, validate,
build variants, time, place. Each step reads and extends one ExportRun; per-variant knowledge lives in the
variant plans (variants.PLANS), per-kind knowledge in the tasks (tasks.TASKS, the kind chosen by
st_model.choose_task), per-architecture knowledge in the family registry (specs.py)."""

from __future__ import annotations

import datetime as _dt
import gc
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st_runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, dump_manifest, file_record

from .artifacts import cleanup_stale, externalize, place, variant_entry, versions
from .errors import ExportError, ValidationFailedError
from .memory import release_memory
from .resolve import ResolvedModel, resolve
from .st_model import ModelDescription, choose_task, describe, inspect_folder, prepare_for_tracing
from .tasks import TASKS
from .variants import PLANS, BuildContext

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from .specs import TextEncoderSpec

DEFAULT_OPSET = 17


def default_variants() -> list[str]:
    """Every variant this machine can validate (fp16 only where CUDA is there to validate it)."""
    return [name for name, plan in PLANS.items() if plan.unavailable_reason() is None and not plan.on_request]


def _load_st(path: Path, trust_remote_code: bool, attn_implementation: str | None, st_class: str):
    """The model as the sentence-transformers class ``st_class`` (the task's: Task.st_class)."""
    import sentence_transformers

    kwargs: dict[str, Any] = {"device": "cpu", "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["model_kwargs"] = {"attn_implementation": attn_implementation}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = getattr(sentence_transformers, st_class)(str(path), **kwargs)
    return model.eval()


def _as_users_load_it(st_model, spec, path: Path, trust_remote_code: bool, log: Callable[[str], None]):
    """The reference: the model with the attention implementation a plain load picks (sdpa where the model
    supports it). The traced model was loaded with the family's tracing implementation (eager); switching the
    loaded model over saves loading the weights a second time. Where transformers cannot switch it, load
    it again."""
    if spec.attn_implementation is None:
        return st_model
    auto = getattr(st_model[0], "auto_model", None)
    target = "sdpa" if getattr(auto, "_supports_sdpa", False) else "eager"
    try:
        if auto is None:
            raise AttributeError("no auto_model")
        auto.set_attn_implementation(target)
        if auto.config._attn_implementation != target:
            raise ValueError(f"still {auto.config._attn_implementation!r}")
        return st_model
    except Exception as exc:  # any failure: the reference is loaded as users load it
        log(
            f"note: could not switch the loaded model to {target} attention ({type(exc).__name__}: {exc}); "
            "loading it again as the reference"
        )
        reference = _load_st(path, trust_remote_code, None, type(st_model).__name__)
        _adjust(reference, spec)  # the reference runs what was traced: adjusted, with the same length
        reference.max_seq_length = st_model.max_seq_length
        return reference


def _adjust(st_model, spec) -> None:
    """What the family spec changes on a loaded model before it is traced (and on its reference): the tokenizer's
    padding side where the spec names one, then the family's patcher."""
    tokenizer = getattr(st_model[0], "tokenizer", None)
    if spec.padding_side is not None and tokenizer is not None:
        tokenizer.padding_side = spec.padding_side
    if spec.patcher is not None:
        spec.patcher(st_model)


@dataclass
class ExportRun:
    """The state the steps share: the request, then what each step adds."""

    name_or_path: str
    output: Path | None
    revision: str | None
    trust_remote_code: bool
    opset: int
    external_data: bool | None
    wanted: list[str]
    log: Callable[[str], None]
    resolved: ResolvedModel | None = None
    model_type: str = ""
    modules_json: list[dict[str, Any]] = field(default_factory=list)
    spec: TextEncoderSpec | None = None  # the family's spec (exporters.specs)
    # the loaded sentence-transformers model (SentenceTransformer, CrossEncoder or SparseEncoder)
    st_model: torch.nn.Module | None = None
    desc: ModelDescription | None = None
    tmp: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, Any] = field(default_factory=dict)
    capped_at: int | None = None
    hf_config: PretrainedConfig | None = None
    references: dict[str, Any] = field(default_factory=dict)
    unnormalized_references: dict[str, Any] = field(default_factory=dict)  # per tower with unnormalized_output
    kind: str | None = None  # st-export --kind: the task asked for (None: the folder's own)
    task: str = ""  # the manifest task it is exported as (st_model.choose_task)
    timing: bool = True  # time the variants and batch budgets on this CPU (st-export --no-timing: False)


def _validate_variant(
    manifest: dict[str, Any],
    folder: Path,
    tower: str,
    name: str,
    reference: np.ndarray,
    source: str,
    log: Callable[[str], None],
    required: bool = True,
    unnormalized: np.ndarray | None = None,
) -> bool:
    """Validate one variant of one tower through st_runtime itself and record the result in the manifest
    (``unnormalized``: sentence-transformers' outputs before the final Normalize, for a graph that also gives
    them)."""
    from .towers import validation_items

    plan = PLANS[name]
    providers = "cuda" if "CPUExecutionProvider" not in plan.providers else "cpu"
    entry = manifest["towers"][tower]
    task = TASKS[manifest["task"]]
    report = task.check(reference, folder, providers, name, plan, validation_items(entry, task), manifest, unnormalized)
    report["provider"] = providers
    variant = entry["variants"][name]
    variant["status"] = "passed" if report["passed"] else "failed"
    variant["validation"] = report
    log(f"{tower} {name}: {report['summary']} -> {variant['status']}")
    if report["passed"] or not required:
        return report["passed"]
    lines = "\n".join(
        f"  [{f['run']}] #{f.get('index')} ({f.get('tag')}) "
        + (f"cosine {f['cosine']:.7f}" if "cosine" in f else f"diff {f.get('diff', float('nan')):.2e}")
        + f": {f.get('text', f.get('error'))!r}"
        for f in report["failures"][:50]
    )
    raise ValidationFailedError(
        f"The exported {name} graph of the {tower} tower of {source} does not reproduce sentence-transformers "
        f"({report['summary']}); {len(report['failures'])} failure(s):\n{lines}\nNothing was written. "
        "Please report this with the model name and the versions in the manifest.",
        report,
    )


# The most seconds the variants' CPU timing should take (a 0.6B model's warm-up alone takes a minute on 2 cores).
TIMING_SECONDS = 120.0


def _time_variants_on_cpu(manifest: dict[str, Any], folder: Path, log: Callable[[str], None], rounds: int = 5) -> None:
    """Time every passed CPU variant of the text tower on the same mixed workload, so the runtime can pick
    the fastest one measured rather than guessed (on some CPUs fused graphs are not faster: onnxruntime
    applies its own CPU fusions to the plain graph at load). Variants alternate within each round, so a burst
    of load from elsewhere hits them alike; the median round counts. Variants of a large model are timed one
    at a time (batch_policy.timing_groups), so their graphs are never loaded together."""
    import time

    from st_runtime.providers import physical_cores

    from .batch_policy import timing_groups

    tower = manifest["towers"].get("text")
    if tower is None:
        return
    workload = TASKS[manifest["task"]].timing
    names = [
        name
        for name, v in tower["variants"].items()
        if v["status"] == "passed" and "CPUExecutionProvider" in v["providers"]
    ]
    if not names:
        return
    items: dict[str, int] = {}
    timed: dict[str, float] = {}
    n_rounds: dict[str, int] = {}
    for group in timing_groups(tower, folder, names):
        encoders = {name: workload(folder, name) for name in group}
        times: dict[str, list[float]] = {name: [] for name in group}
        one_round = 0.0
        for _n, run in encoders.values():
            t = time.perf_counter()
            run()  # warm-up, and the round's cost: a large model gets fewer rounds (at least one)
            one_round += time.perf_counter() - t
        fit = max(1, min(rounds, int(TIMING_SECONDS // one_round))) if one_round > 0 else rounds
        for r in range(fit):
            for name in group[r % len(group) :] + group[: r % len(group)]:  # a different variant first each round
                t = time.perf_counter()
                encoders[name][1]()
                times[name].append(time.perf_counter() - t)
        for name, ts in times.items():
            timed[name] = sorted(ts)[len(ts) // 2]
            items[name] = encoders[name][0]
            n_rounds[name] = fit
        del encoders
        release_memory()
    for name in names:
        tower["variants"][name].setdefault("cpu_timing", {}).update(  # beside measure_cpu_batching's rates
            items=items[name], median_s=timed[name], threads=physical_cores(), rounds=n_rounds[name]
        )
    log("CPU timing (items/s): " + ", ".join(f"{n} {items[n] / t:.0f}" for n, t in timed.items()))


def _resolve(run: ExportRun) -> None:
    unknown = [v for v in run.wanted if v not in PLANS]
    if unknown:
        raise ExportError(f"unknown variant(s) {unknown}; choose from {sorted(PLANS)}.")
    for name in run.wanted:
        reason = PLANS[name].unavailable_reason()
        if reason:
            raise ExportError(reason)
    run.resolved = resolve(run.name_or_path, revision=run.revision, log=run.log)
    output = run.output if run.output is not None else Path("exported_models") / run.resolved.name
    run.output = output.resolve()
    if run.output.exists() and (
        not run.output.is_dir() or (any(run.output.iterdir()) and not (run.output / MANIFEST_NAME).is_file())
    ):
        raise ExportError(
            f"{run.output} exists and is not an st-export folder; refusing to replace it. Choose another -o/--output."
        )


def _inspect(run: ExportRun) -> None:
    from .specs import spec_for

    run.task = choose_task(run.resolved.local_path, run.kind)
    run.model_type, run.modules_json = inspect_folder(run.resolved.local_path, run.trust_remote_code)
    run.spec = spec_for(run.model_type)


def _load(run: ExportRun) -> None:
    resolved = run.resolved
    run.log(f"Loading {resolved.source} ({run.model_type}, origin: {resolved.origin})")
    st_class = TASKS[run.task].st_class
    run.st_model = _load_st(resolved.local_path, run.trust_remote_code, run.spec.attn_implementation, st_class)
    run.desc = describe(run.st_model, run.model_type, run.modules_json, run.task)
    _adjust(run.st_model, run.spec)
    prepare_for_tracing(run.st_model, run.desc)
    _cap_unlimited_length(run)
    run.output.parent.mkdir(parents=True, exist_ok=True)
    cleanup_stale(run.output.parent, run.output.name)
    run.tmp = run.output.parent / f".{run.output.name}.partial-{os.getpid()}"
    if run.tmp.exists():
        shutil.rmtree(run.tmp)
    run.tmp.mkdir()


def _cap_unlimited_length(run: ExportRun) -> None:
    """A tokenizer that declares no length limit (no model_max_length) lets texts run past the model's position
    table, where sentence-transformers itself fails: it caps such a tokenizer at max_position_embeddings, but
    not at what RoBERTa-style models can use (their first positions are reserved), and CLIP's not at all. Cap
    max_seq_length at the table's usable size, for the export and for the reference it is validated against,
    and record that in the manifest."""
    config = getattr(getattr(run.st_model[0], "auto_model", None), "config", None)
    limit = run.spec.position_limit(config) if config is not None else None
    current = run.st_model.max_seq_length
    if limit is None or (current is not None and current <= limit):
        return  # no position table (word embeddings), or the length fits it
    run.st_model.max_seq_length = limit
    run.capped_at = limit
    declared = "declares no length limit" if current is None or current >= 2**31 else f"allows {current} tokens"
    run.log(
        f"note: the tokenizer {declared}; max_seq_length capped at the model's {limit} positions "
        "(set max_seq_length in sentence_bert_config.json to choose another)"
    )


def _trace(run: ExportRun) -> None:
    from .towers import build_towers

    towers = build_towers(run.st_model, run.desc, run.tmp, run.opset, run.external_data, run.log)
    text = towers.get("text", {}).get("tokenizer")
    if text is not None and run.capped_at is not None:
        text["capped_at_positions"] = run.capped_at
    st_model, resolved, desc = run.st_model, run.resolved, run.desc
    run.manifest = {
        "format_version": FORMAT_VERSION,
        "name": resolved.name,
        "source": {
            "model": resolved.source,
            "revision": resolved.revision,
            "origin": resolved.origin,
            "modules": run.modules_json,
        },
        "architecture": {"model_type": run.model_type, "family": run.spec.family},
        "task": run.task,
        "towers": towers,
        "prompts": dict(st_model.prompts or {}),
        "default_prompt_name": st_model.default_prompt_name,
        "files": {},
        "export": {
            "exporter": "torch.onnx.export",
            "dynamo": False,
            "opset": run.opset,
            "attn_implementation": run.spec.attn_implementation,
            "versions": versions(),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        },
    }
    block = TASKS[run.task].block
    run.manifest[block] = getattr(desc, block)


def _write_manifest(run: ExportRun) -> None:
    files = sorted(p.name for p in run.tmp.iterdir() if p.is_file() and p.name != MANIFEST_NAME)
    run.manifest["files"] = {f: file_record(run.tmp / f) for f in files}
    dump_manifest(run.manifest, run.tmp)


def _validate(run: ExportRun) -> None:
    from .towers import validation_items

    model = _as_users_load_it(run.st_model, run.spec, run.resolved.local_path, run.trust_remote_code, run.log)
    run.st_model = None
    run.hf_config = getattr(getattr(model[0], "auto_model", None), "config", None)
    # sentence-transformers' outputs on each tower's battery, computed once: every variant is checked against
    # them after the torch model is freed (holding it while variants are built doubled the peak memory)
    task = TASKS[run.manifest["task"]]
    for tname, tower in run.manifest["towers"].items():
        sentences = [s for _, s in validation_items(tower, task)]
        run.references[tname] = task.reference(model, sentences)
        if tower.get("unnormalized_output") and task.unnormalized_reference is not None:
            run.unnormalized_references[tname] = task.unnormalized_reference(model, sentences)
    del model
    release_memory()  # the torch model: variants are built and checked against the saved outputs
    for tname in run.manifest["towers"]:
        ref, unnorm = run.references[tname], run.unnormalized_references.get(tname)
        _validate_variant(run.manifest, run.tmp, tname, "fp32", ref, run.resolved.source, run.log, True, unnorm)


def _build_variants(run: ExportRun) -> None:
    manifest = run.manifest
    task = TASKS[manifest["task"]]
    for tname, tower in manifest["towers"].items():
        if tower["modality"] != "text":
            continue
        fp32_path = run.tmp / tower["variants"]["fp32"]["file"]
        ctx = BuildContext(run.tmp, tname, tower, fp32_path, run.hf_config, run.spec, run.log, manifest)
        left_out = dict(run.spec.variants_left_out)
        for name in [v for v in run.wanted if v in left_out]:
            run.log(f"{tname} {name}: not built for {run.spec.family} models: {left_out[name]}.")
            run.rejected[name] = {"status": "failed", "error": f"not built: {left_out[name]}"}
        for name in [v for v in run.wanted if v != "fp32" and v in run.spec.variants]:
            if name in task.variants_left_out:
                run.log(f"{tname} {name}: not built for {task.name} models: {task.variants_left_out[name]}.")
                continue
            _build_variant(run, ctx, name)
    manifest["export"]["rejected_variants"] = run.rejected


def _build_variant(run: ExportRun, ctx: BuildContext, name: str) -> None:
    """Build variant ``name`` of one tower, record its files in the manifest and validate it. A variant that
    cannot be built, or does not pass, is left out and recorded in ``run.rejected``."""
    path = ctx.folder / f"{ctx.fp32_path.stem}_{name}.onnx"
    run.log(f"Building {name} variant of the {ctx.tower_name} tower")
    try:
        info = PLANS[name].build(ctx, path)
        release_memory()  # what the build dropped, before its graph is loaded for validation
    except Exception as exc:  # an optional variant that cannot be built is reported, not fatal
        error = f"{type(exc).__name__}: {exc}"
        run.log(f"{ctx.tower_name} {name}: could not be built ({error[:300]}); it is left out.")
        run.rejected[name] = {
            "status": "failed",
            "error": error,
            "validation": {"summary": f"build failed: {error[:300]}"},
        }
        for f in (path, path.with_name(path.name + ".data")):
            if f.exists():
                f.unlink()
        return
    written = _record_files(run.manifest, ctx.tower, path, info)
    ctx.tower["variants"][name] = variant_entry(name, path.name, info)
    dump_manifest(run.manifest, ctx.folder)
    reference, unnorm = run.references[ctx.tower_name], run.unnormalized_references.get(ctx.tower_name)
    if not _validate_variant(
        run.manifest, ctx.folder, ctx.tower_name, name, reference, run.resolved.source, run.log, False, unnorm
    ):
        run.rejected[name] = ctx.tower["variants"].pop(name)
        for f in written:
            del run.manifest["files"][f.name]
            f.unlink()


def _record_files(manifest: dict[str, Any], tower: dict[str, Any], path: Path, info: dict[str, Any]) -> list[Path]:
    """The files of a built variant's graph, recorded in the manifest: its weights go to external data where the
    builder wrote them so (int8 of a large graph) or the tower's fp32 graph keeps them so."""
    written = [path]
    data = path.with_name(path.name + ".data")
    if data.exists():
        written.append(data)
        info["external_data"] = True
    elif tower["variants"]["fp32"]["external_data"]:
        written.append(externalize(path))
        info["external_data"] = True
    for f in written:
        manifest["files"][f.name] = file_record(f)
    return written


def _time(run: ExportRun) -> None:
    from .batch_policy import measure_cpu_batching, route_by_length

    if not run.timing:  # no variant gets cpu_timing or cpu_batching: the runtime's choice without them
        dump_manifest(run.manifest, run.tmp)  # the variants' validation, which the timing's dump writes otherwise
        run.log(
            "CPU timing skipped (--no-timing): the runtime picks the exact variant by rank and uses its default "
            "batch budgets"
        )
        return
    measure_cpu_batching(run.manifest, run.tmp, run.log)
    dump_manifest(run.manifest, run.tmp)  # the variants are timed under their own batch policy
    _time_variants_on_cpu(run.manifest, run.tmp, run.log)
    route_by_length(run.manifest, run.log)
    dump_manifest(run.manifest, run.tmp)


def _place_output(run: ExportRun) -> None:
    place(run.tmp, run.output)


# The steps in order; each takes the run and adds to it.
STEPS: tuple[tuple[str, Callable[[ExportRun], None]], ...] = (
    ("resolve", _resolve),
    ("inspect", _inspect),
    ("load", _load),
    ("trace towers", _trace),
    ("write manifest", _write_manifest),
    ("validate", _validate),
    ("build variants", _build_variants),
    ("time", _time),
    ("place", _place_output),
)


def export_model(
    name_or_path: str,
    output: str | os.PathLike | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    variants: list[str] | None = None,
    log: Callable[[str], None] = print,
    kind: str | None = None,
    timing: bool = True,
) -> Path:
    """Export a sentence-transformers model to ``output`` (default ``exported_models/<name>``).

    ``variants``: graph variants to build besides the fp32 graph (which is always built and must pass):
    any of "opt", "int8", "fp16"; default :func:`default_variants`.

    ``kind``: the manifest task to export the model as, "embedding", "cross-encoder", "sparse-embedding" or
    "multi-vector" (st-export --kind); default: the folder's own (:func:`exporters.st_model.choose_task`). A folder
    saved by sentence-transformers keeps the class it was saved as, and a contradicting ``kind`` is refused. A plain
    Hugging Face folder is exported as that kind's sentence-transformers class loads it (``sparse-embedding``:
    ``SparseEncoder(folder)``, SPLADE; ``embedding``: ``SentenceTransformer(folder)``, mean pooling); a plain
    ``*ForMaskedLM`` folder, which could be either, is refused unless ``kind`` says which.

    ``timing``: time the passed variants and the CPU batch budgets on this machine (minutes on a base-size model on
    2 cores) and record them, so the runtime picks the fastest variant and budget measured. False (st-export
    --no-timing) for an export built on one machine and served on others, whose timings would say nothing there:
    the runtime then picks by the variants' static rank and uses its default budgets.
    """
    wanted = list(dict.fromkeys(["fp32", *(variants if variants is not None else default_variants())]))
    run = ExportRun(
        name_or_path,
        Path(output) if output is not None else None,
        revision,
        trust_remote_code,
        opset,
        external_data,
        wanted,
        log,
        kind=kind,
        timing=timing,
    )
    # Objects that exist before the export are set aside from the garbage collector while it runs: each
    # release_memory then scans only what the export made (its torch model, graphs, arrays), not a long-lived
    # process's whole heap (a test process's full collection took 0.8 s, half of a tiny model's export).
    gc.freeze()
    try:
        for _name, step in STEPS:
            step(run)
            release_memory()
    except BaseException:
        if run.tmp is not None:
            shutil.rmtree(run.tmp, ignore_errors=True)
        raise
    finally:
        gc.unfreeze()
    log(f"Wrote {run.output}")
    return run.output
