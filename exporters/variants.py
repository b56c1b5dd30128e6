"""Optimized graph variants built from the fp32 graph: fused ("opt"), int8 (CPU) and fp16 (CUDA).

Every variant is validated end to end against sentence-transformers by export.py before it can be
chosen; this module only builds them and reports what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .int8.build import build_int8
from .int8.rewrites import merge_sibling_matmuls
from .memory import release_memory, run_in_child, weights_from_disk, weights_to_disk
from .tasks import TASKS

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from .specs import TextEncoderSpec

__all__ = [
    "CPU",
    "CUDA",
    "PLANS",
    "TRT",
    "BuildContext",
    "VariantPlan",
    "build_fp16",
    "build_int8",
    "build_opt",
    "calibration_feeds",
    "fused_operator_counts",
    "merge_sibling_matmuls",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class VariantPlan:
    """One graph variant: how it is built, gated and chosen. ``exact``: within fp32 accuracy, so the runtime
    may pick it by default; approximate variants (int8, fp16) are chosen only when asked for. ``builder``
    makes the graph from a BuildContext (None: the traced fp32 graph itself). ``validate_on``: the provider
    its gate runs on (fp16 needs CUDA: onnxruntime's CPU provider computes fp16 graphs in fp32)."""

    name: str
    precision: str
    providers: tuple[str, ...]
    rank: int  # lower is faster; the runtime picks the lowest that passed
    min_cosine: float
    mean_cosine: float | None = None
    exact: bool = True
    builder: Callable[[BuildContext, Path], dict[str, Any]] | None = None
    validate_on: str = "cpu"
    # cross-encoders: the largest difference of a score (after the model's activation) from sentence-transformers;
    # sparse encoders: of a weight (relative above 1)
    max_score_diff: float = 1e-5
    # cross-encoders: each query's first documents that must rank as sentence-transformers ranks them
    top_k_identical: int = 10
    # the most an item's output may move with the other items of its batch (None: measured and recorded only)
    company_max_abs: float | None = None
    # built only when asked for by name (st-export --variants), never by default
    on_request: bool = False
    # int8: the mean cosine to fp32 its calibration must reach over the calibration texts (None: the gate's mean +
    # 0.002); see CALIBRATION_MEAN
    calibration_mean_cosine: float | None = None

    def build(self, ctx: BuildContext, dst: Path) -> dict[str, Any]:
        if self.builder is None:
            raise ValueError(f"variant {self.name!r} is traced, not built")
        return self.builder(ctx, dst)

    def unavailable_reason(self) -> str | None:
        """Why this machine cannot validate the variant (None: it can)."""
        if self.validate_on != "cuda":
            return None
        import onnxruntime as ort

        if CUDA in ort.get_available_providers():
            return None
        return (
            f"the {self.name} variant can only be validated on CUDA, and this onnxruntime offers "
            f"{ort.get_available_providers()}. Export on a machine with onnxruntime-gpu and a GPU, or leave "
            f"{self.name} out."
        )


@dataclass
class BuildContext:
    """What a variant builder may use: the export's working folder, the tower's manifest entry (with the
    variants built so far), its fp32 graph, the transformer's config, the family spec, and the log."""

    folder: Path
    tower_name: str
    tower: dict[str, Any]
    fp32_path: Path
    hf_config: PretrainedConfig
    spec: TextEncoderSpec
    log: Callable[[str], None]
    manifest: dict[str, Any] = field(default_factory=dict)

    def variant_path(self, name: str) -> Path | None:
        """The graph of an already-built variant of this tower, if any."""
        entry = self.tower["variants"].get(name)
        return self.folder / entry["file"] if entry else None


def fused_operator_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    fused = (
        "Attention",
        "MultiHeadAttention",
        "EmbedLayerNormalization",
        "SkipLayerNormalization",
        "BiasGelu",
        "FastGelu",
        "Gelu",
        "LayerNormalization",
    )
    return {op: counts.get(op, 0) for op in fused}


def build_opt(
    src: Path,
    dst: Path,
    optimizer_type: str | None,
    num_heads: int,
    hidden_size: int,
    attention_fusion: str | None = None,
) -> dict[str, Any]:
    """onnxruntime.transformers fusions (Attention, EmbedLayerNorm, SkipLayerNorm, BiasGelu), after our own
    attention fusion where the family needs one. Built in a child process (see :func:`_build_opt_here`)."""
    return run_in_child(
        "exporters.variants:_build_opt_here",
        {
            "src": str(Path(src).resolve()),
            "dst": str(Path(dst).resolve()),
            "optimizer_type": optimizer_type,
            "num_heads": num_heads,
            "hidden_size": hidden_size,
            "attention_fusion": attention_fusion,
        },
        Path(dst).parent,
    )


def _build_opt_here(
    src: str, dst: str, optimizer_type: str | None, num_heads: int, hidden_size: int, attention_fusion: str | None
) -> dict[str, Any]:
    """build_opt's work, in a scratch working directory of a process of its own. onnxruntime's optimizer copies
    the whole model for each symbolic shape inference (twice, and keeps one), so the weights wait in a file
    of the working directory while it runs and are put back, unchanged, before the graph is saved: its
    fusions read the weights they merge from that file."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    info: dict[str, Any] = {}
    # a graph stored with external data (over 2 GB: XLM-R large) is written the same way, its weights copied from
    # the scratch file in pieces; protobuf cannot serialize it whole
    external = Path(src).with_name(Path(src).name + ".data").exists()
    if attention_fusion is not None:
        if attention_fusion != "relative_bias":
            raise ValueError(f"unknown attention fusion {attention_fusion!r}")
        from .fusions import fuse_relative_bias_attention

        pre = OnnxModel(onnx.load(src))
        info["relative_bias_attention_fused"] = fuse_relative_bias_attention(pre, num_heads)
        pre.save_model_to_file(dst)
        del pre  # one copy of the weights in memory at a time
        release_memory()
        src = dst
    weights = "weights.bin"
    structure = _external_structure(Path(src), weights) if external else weights_to_disk(Path(src), weights)
    # opt_level=0: only the portable python fusions; onnxruntime applies its own at session load.
    model = optimize_model(
        structure,
        model_type=optimizer_type or "bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,
    )
    model.shape_infer_helper = None  # its copy of the graph
    release_memory()
    if external:
        from .int8.weights import save_self_contained

        save_self_contained(model.model, Path("."), Path(dst), external=True)
    else:
        weights_from_disk(model.model, weights)
        model.save_model_to_file(dst)
    info["optimizer"] = f"onnxruntime.transformers.optimizer(model_type={optimizer_type or 'bert'!r})"
    info["fused_operators"] = fused_operator_counts(model.model)
    return info


def _external_structure(src: Path, weights: str):
    """The structure of ``src``, a graph stored with external data, its weights read from a copy of the data file
    at ``weights`` (in the working directory)."""
    import shutil

    import onnx
    from onnx import TensorProto

    from .memory import graph_tensors

    structure = onnx.load(str(src), load_external_data=False)
    shutil.copyfile(src.with_name(src.name + ".data"), weights)
    for tensor in graph_tensors(structure.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = weights
    return structure


# ----------------------------------------------------------------------------- fp16
FP16_KEEP_FP32 = ["ReduceSum", "ReduceMean", "ReduceL2", "ReduceMax", "Div", "Sqrt", "Clip", "Max", "Min"]


def build_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and activations, fp32 inputs/outputs; pooling sums, the mask division and the L2 norm
    stay in fp32 (onnxruntime's LayerNorm kernels accumulate statistics in fp32)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    _unique_node_names(model.model.graph)
    model.save_model_to_file(str(dst))
    return {"method": "onnxruntime.transformers float16", "kept_fp32_ops": FP16_KEEP_FP32}


def _unique_node_names(graph) -> None:
    """onnxruntime 1.31's float16 converter names the Cast it puts before each fp32-kept consumer of a tensor
    after the tensor alone, so a tensor feeding two such nodes (the attention mask's Concat in BERT and MPNet)
    gets two identical Casts of one name and one output, which onnxruntime refuses ("two nodes with same node
    name", "Duplicate definition of name"). Drop exact repeats of a node (same operator, inputs, outputs and
    attributes: the same value computed twice), then suffix any name still repeated. Unnamed nodes stay so."""
    kept, computed = [], set()
    for node in graph.node:
        key = (
            node.domain,
            node.op_type,
            tuple(node.input),
            tuple(node.output),
            tuple(a.SerializeToString() for a in node.attribute),
        )
        if node.output and key in computed:
            continue
        computed.add(key)
        kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    seen: set[str] = set()
    for node in graph.node:
        if not node.name:
            continue
        name, k = node.name, 1
        while name in seen:
            name, k = f"{node.name}_{k}", k + 1
        node.name = name
        seen.add(name)


# ----------------------------------------------------------------------------- plans
def calibration_feeds(folder: Path, input_names: list[str], task: str = "embedding") -> list[dict[str, np.ndarray]]:
    """int8 calibration inputs exactly as the runtime builds them: every calibration input of the task
    (Task.calibration: texts, or a cross-encoder's (query, passage) pairs) alone, and the whole set through the
    runtime's own length-sorted batching (int8 activation ranges are per batch, so batch company matters as much
    as the text). The export is loaded as st_runtime.load loads it, so the runtime's own kind feeds it."""
    import st_runtime
    from st_runtime.batching import longest_first

    text = st_runtime.load(folder, variant="fp32").text_tower
    encodings = text.tokenizer.encode_batch(TASKS[task].calibration())
    lengths = np.array([len(e) for e in encodings], dtype=np.int64)
    feeds = [text.feeds(encodings, lengths, np.array([i]), int(n)) for i, n in enumerate(lengths)]
    order = longest_first(lengths)
    for start, end, width in text.plan(lengths[order], text.policy.auto_batch_size, text.max_seq_length):
        if end - start > 1:
            feeds.append(text.feeds(encodings, lengths, order[start:end], width))
    return [{k: f[k] for k in input_names} for f in feeds]


def _build_opt_variant(ctx: BuildContext, dst: Path) -> dict[str, Any]:
    info = build_opt(
        ctx.fp32_path,
        dst,
        ctx.spec.ort_optimizer_type,
        ctx.hf_config.num_attention_heads,
        ctx.hf_config.hidden_size,
        ctx.spec.attention_fusion,
    )
    fused = info["fused_operators"]
    no_fusion_known = ctx.spec.ort_optimizer_type is None and ctx.spec.attention_fusion is None
    if not fused["Attention"] + fused["MultiHeadAttention"] and no_fusion_known:
        ctx.log(  # expected: the family's spec names no attention fusion that could have applied
            f"note: onnxruntime's optimizer has no attention fusion for the {ctx.spec.family} family; the "
            f"{ctx.tower_name} tower's opt graph fuses {fused}."
        )
    elif not fused["Attention"] + fused["MultiHeadAttention"]:
        import onnxruntime as ort

        ctx.log(
            f"warning: onnxruntime {ort.__version__}'s optimizer fused no attention in the {ctx.tower_name} "
            f"tower's opt graph ({fused}); the graph is exact but its attention runs unfused. A newer "
            "onnxruntime may fuse it (1.30 fused none in BERT exports of transformers 5.17, 1.31 does): "
            "`pip install -U onnxruntime`, export again."
        )
    return info


def _int8_builder(name: str, scheme: str) -> Callable[[BuildContext, Path], dict[str, Any]]:
    """The builder of int8 variant ``name``: exporters.int8.build_int8 with activations quantized by ``scheme``."""

    def build(ctx: BuildContext, dst: Path) -> dict[str, Any]:
        return _build_int8_variant(ctx, dst, name, scheme)

    return build


def _build_int8_variant(ctx: BuildContext, dst: Path, name: str, scheme: str) -> dict[str, Any]:
    task = ctx.manifest["task"]
    agreement, target_min, target_mean = TASKS[task].int8_gate(PLANS[name], ctx.manifest)
    try:
        return build_int8(
            ctx.fp32_path,
            dst,
            calibration_feeds(ctx.folder, ctx.tower["inputs"], task),
            ctx.tower["output"],
            target_min=target_min,
            target_mean=target_mean,
            workdir=ctx.folder,
            log=ctx.log,
            agreement=agreement,
            scheme=scheme,
        )
    finally:  # the calibration's scratch graphs never stay in the export, also when it fails
        for scratch in ctx.folder.glob("int8-*"):
            scratch.unlink()


def _build_fp16_variant(ctx: BuildContext, dst: Path) -> dict[str, Any]:
    """From the fused graph when it was built (fp16 Attention kernels), else from the fp32 graph."""
    return build_fp16(ctx.variant_path("opt") or ctx.fp32_path, dst)


# int8's calibration target for the mean cosine (issue #25). The calibration's 33 texts cannot show the tail of
# thousands of real texts, but their mean predicts it: on benchmarks/throughput.py's corpora the worst text's error
# (1 - cosine) was 2.65-6.9x the calibration's mean error with the per-row forms (all-MiniLM-L6-v2,
# all-mpnet-base-v2; benchmarks/results/int8-calibration-mean-*.json). A mean error of 0.0008 kept real text's worst
# at 0.9975 or more on both models (ratio 2.95-3.6 there); 0.9991 left mpnet's worst at 0.9953 against its fp32
# graph (an unrecorded run), too close to 0.995.
CALIBRATION_MEAN = 0.9992

PLANS = {
    "fp32": VariantPlan("fp32", "fp32", (CPU, CUDA, TRT), rank=100, min_cosine=0.99999),
    "opt": VariantPlan("opt", "fp32", (CPU, CUDA, TRT), rank=50, min_cosine=0.99999, builder=_build_opt_variant),
    # activations quantized per row (token): a text's result depends on that text alone, not on its batch company
    "int8": VariantPlan(
        "int8",
        "int8",
        (CPU,),
        rank=10,
        min_cosine=0.99,
        mean_cosine=0.995,
        exact=False,
        builder=_int8_builder("int8", "per_row"),
        # rerankers: scores within 0.01 after the activation and the same top-10 per query (sparse encoders are
        # not offered int8: tasks.TASKS' variants_left_out)
        max_score_diff=0.01,
        # float rounding in the fp32 parts of the graph (attention over another padded width) is all that moves
        company_max_abs=1e-6,
        calibration_mean_cosine=CALIBRATION_MEAN,
    ),
    # the int8 of earlier exports, activations quantized per batch (onnxruntime's quantize_dynamic): faster on
    # CPUs with fast int8 GEMMs, but a text's result moves with the other texts and the padding of its batch
    "int8-dynamic": VariantPlan(
        "int8-dynamic",
        "int8",
        (CPU,),
        rank=9,
        min_cosine=0.99,
        mean_cosine=0.995,
        exact=False,
        builder=_int8_builder("int8-dynamic", "per_tensor"),
        max_score_diff=0.01,
        on_request=True,
    ),
    "fp16": VariantPlan(
        "fp16",
        "fp16",
        (CUDA, TRT),
        rank=10,
        min_cosine=0.999,
        max_score_diff=1e-2,
        exact=False,
        builder=_build_fp16_variant,
        validate_on="cuda",
    ),
}
