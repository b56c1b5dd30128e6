"""Command line: st-export NAME_OR_PATH [-o DIR] [--revision REV] [--trust-remote-code] [--kind KIND]."""

from __future__ import annotations

import argparse
import sys

from .errors import ExportError
from .tasks import TASKS

# the modules of the [export] extra, which a runtime-only install lacks
EXPORT_STACK = ("torch", "transformers", "sentence_transformers", "onnx", "huggingface_hub")


def missing_export_stack() -> list[str]:
    import importlib.util

    return [m for m in EXPORT_STACK if importlib.util.find_spec(m) is None]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="st-export",
        description="Export a sentence-transformers model to ONNX graphs that st_runtime runs without torch. "
        "Every export is validated against sentence-transformers before it is written.",
    )
    p.add_argument(
        "model",
        help="local sentence-transformers folder, hub id (org/name), or a short name from the "
        "sentence-transformers model table (all-MiniLM-L6-v2)",
    )
    p.add_argument("-o", "--output", help="output folder (default: exported_models/<name>)")
    p.add_argument("--revision", help="hub commit, branch or tag to export")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow models whose repository ships custom Python code (it is executed)",
    )
    p.add_argument(
        "--kind",
        choices=list(TASKS),
        default=None,
        help="the kind of model to export it as (default: the class a sentence-transformers folder was saved as, "
        "or what a plain Hugging Face folder's architecture leaves no doubt about). A plain *ForMaskedLM folder "
        "needs it: sparse-embedding (SPLADE, as sentence_transformers.SparseEncoder loads it) or embedding (mean "
        "pooling, as SentenceTransformer loads it)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--external-data", action="store_true", help="store weights as ONNX external data even under 2 GB")
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated variants besides fp32: opt, int8, int8-dynamic, fp16 (default: all this machine "
        "can validate but int8-dynamic: opt,int8, plus fp16 where CUDA is available). int8 quantizes each token's "
        "activations on their own (a text's vector does not depend on its batch); int8-dynamic, the earlier "
        "int8, per batch (faster on some CPUs, but a text's vector moves with its batch company)",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="ORG/REPO",
        default=None,
        help="after the export, upload the validated folder and a model card to this Hugging Face repository "
        "(created when missing); st_runtime then loads ORG/REPO by name, without torch",
    )
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument(
        "--no-timing",
        action="store_true",
        help="skip timing the variants and CPU batch budgets on this machine (minutes on a base-size model): for "
        "an export served on other machines, where these timings would not hold; the runtime then picks the "
        "exact variant by rank and uses its default batch budgets",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_export_stack()
    if missing:  # `pip install .` alone has the runtime, not the exporter's stack
        print(
            f"st-export: error: the exporter needs {', '.join(missing)}, which this environment lacks. Install "
            "PyTorch first (the CPU build is enough: pip install torch --index-url "
            'https://download.pytorch.org/whl/cpu), then the export extra: pip install "st-runtime[export]".',
            file=sys.stderr,
        )
        return 2
    from .export import DEFAULT_OPSET, export_model

    if args.quiet:  # no progress bars either (transformers' weight loading, the hub's downloads)
        import huggingface_hub.utils
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()

    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    if args.private and not args.push_to_hub:
        print("st-export: error: --private applies to --push-to-hub ORG/REPO", file=sys.stderr)
        return 2
    try:
        folder = export_model(
            args.model,
            output=args.output,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            opset=args.opset or DEFAULT_OPSET,
            external_data=True if args.external_data else None,
            variants=[v for v in args.variants.split(",") if v] if args.variants is not None else None,
            log=log,
            kind=args.kind,
            timing=not args.no_timing,
        )
        if args.push_to_hub:
            from .hub import push_to_hub

            push_to_hub(folder, args.push_to_hub, private=args.private, log=log)
    except ExportError as exc:
        print(f"st-export: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
