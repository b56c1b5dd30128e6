"""st-embed: embed a file of any size into Parquet part files, resumably, locally or on Ray.

    st-embed MODEL_DIR_OR_NAME INPUT -o OUTPUT [--revision REV] [--column text] [--id-column ID] [--variant V]
             [--precision float32|float16|int8|uint8|binary|ubinary] [--normalize] [--prompt-name NAME]
             [--chunk-rows 8192] [--ray [ADDRESS]] [--num-workers N] [--gpus-per-worker G]

Rerunning the same command after a crash continues from the first incomplete part (the parts written are
checked first). Exit codes: 0 done, 1 a usage or input error, 2 an operating-system error (a read-only or full
disk, permissions, a vanished file: one line names the path and the cause), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli_args import missing_extra, positive_int
from . import PRECISIONS

EXTRA = "pip install 'st-runtime[bulk]'"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="st-embed",
        description="Embed INPUT (Parquet file or folder, JSONL, CSV, or plain text with one text per line) with a "
        "model exported by st-export into a folder of Parquet part files. Resumable: rerun the same command after "
        "a crash.",
    )
    p.add_argument(
        "model_dir",
        help="a folder written by st-export, or a model name (hub id, hf://ORG/NAME or a short name such as "
        "all-MiniLM-L6-v2) resolved through the export cache (on Ray: by each node into its own cache)",
    )
    p.add_argument("--revision", default=None, help="hub commit, branch or tag of a named model (default: main)")
    p.add_argument("input", type=Path, help="the texts: .parquet (or a folder of them), .jsonl, .csv, or text")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--column", default="text", help="the text column (default 'text'; ignored for plain text)")
    p.add_argument("--id-column", default=None, help="a column copied to the output beside each embedding")
    p.add_argument("--variant", default=None, help="graph variant (default: the fastest exact one)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="stored precision (default float32)")
    p.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    p.add_argument("--prompt-name", default=None, help="one of the model's prompts, e.g. 'document'")
    p.add_argument(
        "--long-inputs",
        choices=["truncate", "chunk", "error"],
        default="truncate",
        help="texts over the model's limit: truncate (default), chunk (windows, pooled) or error",
    )
    p.add_argument("--chunk-rows", type=positive_int, default=8192, help="rows per part file (default 8192)")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime threads (local runs)")
    p.add_argument("--skip-invalid", action="store_true", help="write a null embedding for null/non-string rows")
    p.add_argument("--overwrite", action="store_true", help="replace an output written with other settings")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: a local Ray without ADDRESS, or 'auto' / 'ray://host:port' for a cluster",
    )
    p.add_argument("--num-workers", type=positive_int, default=None, help="Ray actors (default: the cluster's CPUs)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per Ray actor (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray actor (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from . import job
        from .sources import InputError, Source
    except ImportError as exc:
        return missing_extra("st-embed", exc, EXTRA)
    from ..errors import StRuntimeError
    from ..hub.resolve import locate

    log = (lambda _m: None) if args.quiet else (lambda m: print(f"st-embed: {m}", file=sys.stderr))
    try:  # a name: the folder in this machine's export cache (made once), and the commit Ray's nodes then load
        args.model = locate(args.model_dir, args.revision, args.variant)
    except (StRuntimeError, ValueError) as exc:
        print(f"st-embed: {exc}", file=sys.stderr)
        return 1
    spec = job.JobSpec(
        model_dir=args.model.path,
        input=args.input,
        output=args.output,
        column=args.column,
        id_column=args.id_column,
        variant=args.variant,
        precision=args.precision,
        normalize=args.normalize,
        prompt_name=args.prompt_name,
        long_inputs=args.long_inputs,
        chunk_rows=args.chunk_rows,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
        threads=args.threads,
    )
    t0 = time.perf_counter()
    try:
        source = Source(spec.input, spec.column, spec.id_column)
        run = _run_local if args.ray is None else _run_ray
        record = run(spec, source, args, log)
    except job.StorageError as exc:  # read-only or full disk, permissions, a vanished input: what and where
        print(f"st-embed: {exc}", file=sys.stderr)
        return 2
    except (StRuntimeError, InputError, ValueError) as exc:
        print(f"st-embed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # any other (opening the input or the model): one line, never a traceback
        print(f"st-embed: {job.StorageError('use', exc.filename or '', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("st-embed: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    log(f"{record['rows']} rows in {args.output} ({time.perf_counter() - t0:.1f} s this run)")
    return 0


def _progress(source, spec, args):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=source.total_rows,
        unit="rows",
        unit_scale=True,
        dynamic_ncols=True,
        disable=args.quiet or not sys.stderr.isatty(),
        desc="st-embed",
    )


def _run_local(spec, source, args, log):
    from ..kinds import bulk_kind, load
    from . import job

    kind = bulk_kind(spec.model_dir, tokens=True)
    model = load(spec.model_dir, threads=spec.threads, variant=spec.variant)
    output = job.Output(spec, source, model.variant, kind.bulk_width(model), per_token=kind.bulk_tokens)
    submit, result = job.iter_local(model, spec)
    spec.extra = {"mode": "local", "threads": model.threads}
    with _bar(source, spec, args) as bar:
        return job.run(spec, source, output, submit, result, window=1, progress=bar, log=log)


class _bar:
    def __init__(self, source, spec, args):
        self.bar = _progress(source, spec, args)

    def __enter__(self):
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _run_ray(spec, source, args, log):
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs ray: pip install 'st-runtime[ray]'") from None
    from ..kinds import bulk_kind
    from ..ray import EmbedBatch
    from . import job

    bulk_kind(spec.model_dir)  # refuses a kind without fixed-width rows before Ray starts
    if args.ray == "local":
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=args.ray, log_to_driver=False, configure_logging=False)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = args.num_workers or max(1, int(cpus // max(args.cpus_per_worker, 1e-9)))
        options = {"num_cpus": args.cpus_per_worker}
        if args.gpus_per_worker:
            options["num_gpus"] = args.gpus_per_worker
        actor_cls = ray.remote(EmbedBatch).options(**options)
        # a folder must be readable at the same path on every node; a name is resolved by each node into its own
        # export cache, at the commit this machine resolved it to
        model = args.model
        model_dir = model.repo_id or str(Path(spec.model_dir).resolve())
        kwargs = {"variant": spec.variant, **job.encode_kwargs(spec)}
        actors = [actor_cls.remote(model_dir, revision=model.commit, **kwargs) for _ in range(workers)]
        described = ray.get([a.describe.remote() for a in actors])
        output = job.Output(spec, source, described[0]["variant"], described[0]["dimension"])
        turn = iter(range(1 << 62))

        def submit(texts):
            return actors[next(turn) % workers].embed.remote(texts)

        spec.extra = {"mode": "ray", "address": args.ray, "workers": workers, "threads": described[0]["threads"]}
        log(f"Ray: {workers} workers on {cpus} CPUs")
        with _bar(source, spec, args) as bar:
            # two chunks in flight per worker: each has the next one queued while it embeds
            return job.run(spec, source, output, submit, ray.get, window=2 * workers, progress=bar, log=log)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
