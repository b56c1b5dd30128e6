"""One graph per tower: text (transformer or word embeddings) and image (CLIP's vision tower).

The registry spec of a family says which towers it has (:class:`exporters.specs.TowerSpec`); this module
traces each one as "the sentence-transformers pipeline run on that modality", writes what its input side
needs (tokenizer.json, the WhitespaceTokenizer vocabulary, the image preprocessor parameters) and validates
each tower end to end against sentence-transformers.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .artifacts import EXTERNAL_DATA_THRESHOLD, gather_external_data, variant_entry, write_tokenizer
from .errors import ExportError, UnsupportedModelError
from .specs import TextEncoderSpec, TowerSpec
from .tasks import TASKS, Task

_TRACE_TEXTS = ["a short text", "a noticeably longer text so that the batch needs padding"]
# the graph output holding the sentence embedding before the model's final Normalize (manifest: unnormalized_output)
UNNORMALIZED = "sentence_embedding_unnormalized"


def ends_in_normalize(st_model, desc) -> bool:
    """Whether an embedding model's last module is a Normalize (its graph then also returns UNNORMALIZED)."""
    from sentence_transformers.models import Normalize

    return desc.embedding is not None and bool(desc.normalized) and isinstance(list(st_model)[-1], Normalize)


# Image preprocessor settings st_runtime.image reproduces; anything else set on the processor is refused.
IMAGE_KEYS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)
_SUPPORTED_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


# ---------------------------------------------------------------- checks
def check_input_module(module, spec: TextEncoderSpec) -> None:
    """Refuse an input module whose set-up this family's export cannot reproduce, naming what is wrong."""
    if spec.tokenizer_kind == "whitespace":
        from sentence_transformers.models.tokenizer import WhitespaceTokenizer

        tok = getattr(module, "tokenizer", None)
        if not isinstance(tok, WhitespaceTokenizer):
            raise UnsupportedModelError(
                f"{type(module).__name__} uses the tokenizer {type(tok).__module__}.{type(tok).__name__}; st-export "
                "supports WordEmbeddings only with sentence-transformers' WhitespaceTokenizer."
            )
    modality_config = getattr(module, "modality_config", None)
    if isinstance(modality_config, dict):
        missing = [t.modality for t in spec.tower_specs() if t.modality not in modality_config]
        if missing:
            raise UnsupportedModelError(
                f"the {spec.family} model's Transformer module has no {missing} modality (it has "
                f"{sorted(modality_config)}); st-export exports the towers {[t.name for t in spec.tower_specs()]}."
            )


# ---------------------------------------------------------------- input sides
def _write_whitespace_tokenizer(module, path: Path) -> dict[str, Any]:
    tok = module.tokenizer
    vocab = list(tok.get_vocab())
    if not all(isinstance(w, str) for w in vocab):
        raise ExportError("the WhitespaceTokenizer vocabulary holds non-string entries; it cannot be exported.")
    path.write_text(json.dumps({"vocab": vocab}, ensure_ascii=False), encoding="utf-8")
    max_len = getattr(module, "max_seq_length", None)
    return {
        "kind": "whitespace",
        "file": path.name,
        "vocab_size": len(vocab),
        # sentence-transformers keeps stop words in a set; sorted here so exports are reproducible.
        "stop_words": sorted(tok.stop_words),
        "do_lower_case": bool(tok.do_lower_case),
        "max_seq_length": int(max_len) if max_len is not None else None,
        "truncation_side": "right",
        "pad_token_id": 0,
        "model_input_names": ["input_ids", "attention_mask"],
    }


def image_preprocessor_info(module) -> dict[str, Any]:
    processor = getattr(module, "processor", None)
    ip = getattr(processor, "image_processor", None)
    if ip is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} has no image processor, so its image tower cannot be exported."
        )
    info: dict[str, Any] = {"kind": "clip", "processor_class": type(ip).__name__}
    saved = ip.to_dict()  # exactly what the model's preprocessor config holds (plain JSON types)
    for key in IMAGE_KEYS:
        value = saved.get(key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        info[key] = value
    for flag in ("do_pad", "do_reduce_labels"):
        if saved.get(flag):
            raise UnsupportedModelError(
                f"the image processor {type(ip).__name__} sets {flag}; st_runtime's image "
                f"preprocessing supports {list(IMAGE_KEYS)} only."
            )
    size = info["size"] or {}
    if info["do_resize"] and not (("shortest_edge" in size and len(size) == 1) or set(size) == {"height", "width"}):
        raise UnsupportedModelError(
            f"image processor size {size} is not supported; st_runtime resizes to "
            "{'shortest_edge': n} or {'height': h, 'width': w}."
        )
    if info["do_resize"] and info["resample"] not in _SUPPORTED_RESAMPLE:
        raise UnsupportedModelError(
            f"image processor resample {info['resample']!r} is not supported; supported: {_SUPPORTED_RESAMPLE}."
        )
    if info["do_center_crop"] and set(info["crop_size"] or {}) != {"height", "width"}:
        raise UnsupportedModelError(f"image processor crop_size {info['crop_size']} is not supported.")
    crop = info["crop_size"] if info["do_center_crop"] else size
    if set(crop or {}) != {"height", "width"}:
        raise UnsupportedModelError(
            "the image processor does not give a fixed output size (no center crop and no "
            "fixed resize), which the exported image tower needs."
        )
    info["image_size"] = [int(crop["height"]), int(crop["width"])]
    return info


# ---------------------------------------------------------------- tracing
def sample_images() -> list:
    """Two small deterministic RGB images of different shapes, for tracing and as a validation seed."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(7)
    return [Image.fromarray(rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in ((40, 52), (61, 33))]


def _graph_module(
    st_model,
    input_names: list[str],
    features: dict[str, str],
    output: str = "sentence_embedding",
    extra=(),
    first=None,
):
    """``extra``: further outputs the graph also returns: per-token ones (token_embeddings), and UNNORMALIZED, the
    sentence embedding as the model's last module (a Normalize) receives it; ``first``: a module traced in place
    of the model's input module (spec.traced_input_module)."""
    import torch

    class TowerGraph(torch.nn.Module):
        """input tensors (+ constant features such as the modality) -> every module in order -> ``output`` (the
        sentence embedding, or a cross-encoder's scores), then any ``extra`` features (token_embeddings)."""

        def __init__(self):
            super().__init__()
            stages = list(st_model)
            if first is not None:
                stages[0] = first
            self.stages = torch.nn.ModuleList(stages)

        def forward(self, *tensors):
            feats: dict[str, Any] = dict(zip(input_names, tensors))
            feats.update(features)
            last = len(self.stages) - 1
            for i, stage in enumerate(self.stages):
                if i == last and UNNORMALIZED in extra:  # Normalize replaces the entry, so this one is kept
                    feats[UNNORMALIZED] = feats[output]
                feats = stage(feats)
            return (feats[output], *(feats[name] for name in extra)) if extra else feats[output]

    return TowerGraph().eval()


def trace_tower(
    st_model,
    tower: TowerSpec,
    input_names: list[str],
    path: Path,
    opset: int,
    external_data: bool | None,
    output: str = "sentence_embedding",
    extra: tuple[str, ...] = (),
    first=None,
    sample: dict[str, Any] | None = None,
    module=None,
    per_token: bool = False,
) -> bool:
    """Trace one tower into ``path``; ``extra`` names further per-token outputs (token_embeddings) the graph also
    returns, [batch, sequence, ...]; ``first`` replaces the input module in the graph (see ``_graph_module``), and
    ``sample`` gives the tracing inputs (default: :func:`trace_sample` of texts); ``module``: the module traced
    (default: ``_graph_module``'s), ``per_token``: ``output`` is [batch, tokens, ...]. Returns whether the weights
    went to external data."""
    import torch

    if sample is None:
        sample = trace_sample(st_model, tower)
    missing = [n for n in input_names if n not in sample]
    if missing:
        raise ExportError(
            f"the {tower.name} tower's preprocessing gives {sorted(k for k in sample)} but not "
            f"{missing}; this model does not fit the {tower.name} tower spec."
        )
    args = tuple(sample[name] for name in input_names)
    dynamic_axes = {
        name: ({0: "batch"} if name == "pixel_values" else {0: "batch", 1: "sequence"}) for name in input_names
    }
    dynamic_axes[output] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    for name in extra:
        dynamic_axes[name] = {0: "batch"} if name == UNNORMALIZED else {0: "batch", 1: "sequence"}
    before = {f.name for f in path.parent.iterdir()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module
            if module is not None
            else _graph_module(st_model, input_names, dict(tower.features), output, extra, first),
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=[output, *extra],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return _store_weights(path, before, external_data, tower)


def trace_sample(st_model, tower: TowerSpec, pairs: bool = False) -> dict[str, Any]:
    """The model's own preprocessing of a few texts (``pairs``: of (query, document) pairs), or for an image
    tower of a few images: the inputs a tower is traced on."""
    if tower.modality != "text":
        return st_model.preprocess(sample_images())
    if pairs:
        return st_model.preprocess([(t, t) for t in _TRACE_TEXTS])
    return st_model.preprocess(_TRACE_TEXTS)


def _store_weights(path: Path, before: set[str], external_data: bool | None, tower: TowerSpec) -> bool:
    """Whether the traced graph at ``path`` keeps its weights as external data, gathered into one file next to it
    if so: as ``external_data`` asks, or (None) where the graph is too large to hold them. ``before``: the files
    of its folder before tracing."""
    # torch writes each weight of a graph over 2 GB to a file of its own next to it
    spilled = [f.name for f in path.parent.iterdir() if f != path and f.is_file() and f.name not in before]
    if spilled and external_data is False:
        raise ExportError(
            f"the {tower.name} tower's graph is over protobuf's 2 GB limit, so its weights must be stored as ONNX "
            "external data; call export_model with external_data=None (the default) or True."
        )
    use_external = (
        external_data if external_data is not None else bool(spilled) or path.stat().st_size >= EXTERNAL_DATA_THRESHOLD
    )
    if use_external:  # one tensor at a time: the torch model is still loaded here
        gather_external_data(path)
    return use_external


def build_towers(
    st_model, desc, folder: Path, opset: int, external_data: bool | None, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Trace every tower of ``desc.spec`` into ``folder`` and return manifest["towers"] (variants pending)."""
    spec: TextEncoderSpec = desc.spec
    towers: dict[str, dict[str, Any]] = {}
    task = TASKS[desc.task]
    output = task.output
    for tower in spec.tower_specs():
        entry: dict[str, Any] = {"modality": tower.modality, "output": output}
        if tower.modality == "text":
            if spec.tokenizer_kind == "whitespace":
                info = _write_whitespace_tokenizer(st_model[0], folder / "whitespace_tokenizer.json")
            else:
                info = {"kind": "hf", **write_tokenizer(st_model, folder / "tokenizer.json")}
                if info["max_seq_length"] is not None and info["max_seq_length"] >= 2**31:
                    info["max_seq_length"] = None  # "unlimited" (tokenizer without model_max_length): no truncation
            info["pairs"] = spec.text_pairs and task.text_pairs
            if not spec.add_special_tokens:
                info["add_special_tokens"] = False
            entry["tokenizer"] = info
            input_names = [
                i for i in tower.inputs if i in ("input_ids", "attention_mask") or i in info["model_input_names"]
            ]
        elif tower.modality == "image":
            entry["preprocessor"] = image_preprocessor_info(st_model[0])
            input_names = list(tower.inputs)
        else:
            raise ExportError(f"tower modality {tower.modality!r} of spec {spec.family!r} is not implemented.")
        # an embedding model's text tower also returns the token embeddings its Pooling reads
        # (encode(output_value="token_embeddings")); sentence-transformers' Dense and Normalize leave them as they are
        extra: tuple[str, ...] = ("token_embeddings",) if tower.modality == "text" and desc.pooling is not None else ()
        if extra:
            entry["token_output"] = extra[0]
        if tower.modality == "text" and ends_in_normalize(st_model, desc):
            # the embedding before the final Normalize (TEI's normalize=false, pooling of long inputs' windows)
            extra += (UNNORMALIZED,)
            entry["unnormalized_output"] = UNNORMALIZED
        if spec.traced_input_module is not None and tower.modality == "text":
            first = spec.traced_input_module(st_model[0])
            sample = _runtime_sample(folder, entry["tokenizer"], input_names)
        else:
            first, sample = None, trace_sample(st_model, tower, task.pairs)
        module = None
        if task.graph is not None and tower.modality == "text":
            module = task.graph(st_model, desc, input_names, dict(tower.features))
        log(f"Tracing {tower.graph_file} ({tower.name} tower, inputs {input_names}, opset {opset})")
        used_external = trace_tower(
            st_model, tower, input_names, folder / tower.graph_file, opset, external_data, output, extra, first, sample,
            module, task.per_token,
        )  # fmt: skip
        entry["inputs"] = input_names
        entry["variants"] = {"fp32": variant_entry("fp32", tower.graph_file, {"external_data": used_external})}
        towers[tower.name] = entry
    return towers


def _runtime_sample(folder: Path, info: dict[str, Any], input_names: list[str]) -> dict[str, Any]:
    """The trace texts as the runtime feeds them: tokenized with the tokenizer file just written and its manifest
    settings, padded to the longest (for input modules traced through a replacement that takes padded inputs)."""
    import numpy as np
    import torch

    from st_runtime.batching import build_feeds
    from st_runtime.feeding import load_tokenizer

    tok = load_tokenizer(folder, info)
    kwargs = {} if info.get("add_special_tokens", True) else {"add_special_tokens": False}
    encodings = tok.encode_batch(_TRACE_TEXTS, **kwargs)
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    feeds = build_feeds(
        encodings, lengths, np.arange(len(encodings)), int(lengths.max()), input_names, info.get("pad_token_id") or 0
    )
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def validation_items(tower: dict[str, Any], task: Task) -> list[tuple[str, Any]]:
    """The battery a tower is validated on: text (and text pairs where the family takes them), images, or for a
    task that takes (query, document) pairs (a cross-encoder's), each query with every passage, and the pair
    battery."""
    from .battery import battery, image_battery, pair_battery, rerank_battery

    if tower["modality"] == "image":
        return image_battery()
    if task.pairs:
        return rerank_battery() + pair_battery()
    items = battery()
    if tower["tokenizer"].get("pairs"):
        items += pair_battery()
    return items
