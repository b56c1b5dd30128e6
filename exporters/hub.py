"""st-export --push-to-hub: upload a validated export folder to the Hugging Face hub, with a model card, as one
commit built from huggingface_hub's own commit operations. Loading ``ORG/REPO`` then downloads it without torch
(st_runtime.hub.fetch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from st_runtime.hub.cache import repo_id_of
from st_runtime.manifest import MANIFEST_NAME, load_manifest, verify_files

from .errors import ExportError

CARD_NAME = "README.md"


def _accuracy(variant: dict[str, Any]) -> str:
    report = variant.get("validation") or {}
    return str(report.get("summary", "not validated")).replace("|", "\\|")


def model_card(manifest: dict[str, Any], repo_id: str) -> str:
    """The README.md pushed beside the export: its source model and revision, and each variant with the accuracy
    measured against sentence-transformers at export."""
    source = manifest["source"]
    model, revision = str(source.get("model")), source.get("revision")
    hub_source = repo_id_of(model) == model  # a hub id, not a local folder's path
    front = ["---", "library_name: st-runtime", "tags:", "- st-runtime", "- onnx", "- sentence-transformers"]
    front += [f"- {manifest['task']}"]
    if hub_source:
        front += [f"base_model: {model}"]
    front += ["---", ""]
    link = f"[{model}](https://huggingface.co/{model})" if hub_source else f"`{model}`"
    at = f" at revision `{revision}`" if revision else ""
    rows = [
        "| tower | variant | precision | runs on | accuracy against sentence-transformers (fp32) |",
        "|---|---|---|---|---|",
    ]
    for tname, tower in manifest["towers"].items():
        for vname, v in tower["variants"].items():
            runs_on = ", ".join(
                p.replace("ExecutionProvider", "").replace("Tensorrt", "TensorRT") for p in v["providers"]
            )
            rows.append(f"| {tname} | {vname} | {v['precision']} | {runs_on} | {_accuracy(v)} |")
    rejected = manifest["export"].get("rejected_variants") or {}
    left_out = [
        f"- {name}: {_accuracy(v) if v.get('validation') else v.get('error', '')}" for name, v in rejected.items()
    ]
    versions = ", ".join(f"{k} {v}" for k, v in manifest["export"]["versions"].items())
    body = [
        f"# {manifest['name']} for st-runtime",
        "",
        f"{link}{at}, exported by st-export to ONNX graphs that st-runtime runs without "
        "PyTorch (onnxruntime and tokenizers only). Each variant below was validated against sentence-transformers "
        "on st-export's battery of real text before it was written.",
        "",
        *rows,
        "",
        *(
            ["Variants left out (built but not within their gate, or not buildable):", "", *left_out, ""]
            if left_out
            else []
        ),
        "## Use",
        "",
        "```python",
        'from st_runtime import load  # pip install "st-runtime[hub]"',
        "",
        f'model = load("{repo_id}")  # downloads the files manifest.json lists and checks their sha256',
        "```",
        "",
        f"`st-serve {repo_id}` and `st-embed {repo_id} ...` take the name too.",
        "",
        f"Exported on {manifest['export'].get('created_utc', '?')} with {versions}; ONNX opset "
        f"{manifest['export']['opset']}, manifest format {manifest['format_version']}.",
        "",
    ]
    return "\n".join(front + body)


def commit_operations(folder: Path, repo_id: str) -> list:
    """What the push sends: manifest.json, every file it lists (checked against its sha256 first), and the model
    card, as huggingface_hub CommitOperationAdd objects."""
    from huggingface_hub import CommitOperationAdd

    manifest = load_manifest(folder)
    verify_files(folder, manifest)
    if CARD_NAME in manifest["files"]:
        raise ExportError(f"{folder} lists a file named {CARD_NAME}, which the push writes as the model card.")
    ops = [CommitOperationAdd(path_in_repo=MANIFEST_NAME, path_or_fileobj=str(folder / MANIFEST_NAME))]
    ops += [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in sorted(manifest["files"])
    ]
    ops.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=model_card(manifest, repo_id).encode()))
    return ops


def push_to_hub(folder: Path, repo_id: str, private: bool = False, api=None, log: Callable[[str], None] = print) -> str:
    """Create ``repo_id`` (when missing; ``private`` then) and upload ``folder`` as one commit; the commit's URL."""
    if repo_id_of("hf://" + repo_id) != repo_id or "/" not in repo_id:
        raise ExportError(f"--push-to-hub takes ORG/NAME (a repository id), got {repo_id!r}.")
    from huggingface_hub import HfApi

    api = api if api is not None else HfApi()
    operations = commit_operations(folder, repo_id)
    manifest = load_manifest(folder)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=f"st-export of {manifest['source']['model']}",
            repo_type="model",
        )
    except Exception as exc:  # network, authentication, permissions: said with the folder that stays written
        raise ExportError(
            f"the export is written to {folder}, but pushing it to {repo_id} failed ({type(exc).__name__}: {exc}). "
            "Log in with `hf auth login` (a token that may write to the organisation), then run the command again."
        ) from exc
    log(f"Pushed {len(operations)} files to https://huggingface.co/{repo_id} ({info.commit_url})")
    return str(info.commit_url)
