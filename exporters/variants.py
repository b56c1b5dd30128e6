"""Optimized graph variants built from the fp32 graph: fused ("opt"), int8 (CPU) and fp16 (CUDA).

Every variant is validated end to end against sentence-transformers by export.py before it can be
chosen; this module only builds them and reports what it did.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .validate import cosines

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


@dataclass(frozen=True)
class VariantPlan:
    """How a variant is gated and chosen. ``exact``: within fp32 accuracy, so the runtime may pick it
    by default; approximate variants (int8, fp16) are chosen only when asked for."""

    name: str
    precision: str
    providers: tuple[str, ...]
    rank: int                   # lower is faster; the runtime picks the lowest that passed
    min_cosine: float
    mean_cosine: float | None = None
    exact: bool = True


PLANS = {
    "fp32": VariantPlan("fp32", "fp32", (CPU, CUDA, TRT), rank=100, min_cosine=0.99999),
    "opt": VariantPlan("opt", "fp32", (CPU, CUDA, TRT), rank=50, min_cosine=0.99999),
    "int8": VariantPlan("int8", "int8", (CPU,), rank=10, min_cosine=0.99, mean_cosine=0.995, exact=False),
    "fp16": VariantPlan("fp16", "fp16", (CUDA, TRT), rank=10, min_cosine=0.999, exact=False),
}


def fused_operator_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    fused = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")
    return {op: counts.get(op, 0) for op in fused}


def build_opt(src: Path, dst: Path, optimizer_type: str | None, num_heads: int, hidden_size: int,
              attention_fusion: str | None = None) -> dict[str, Any]:
    """onnxruntime.transformers fusions (Attention, EmbedLayerNorm, SkipLayerNorm, BiasGelu), after our own
    attention fusion where the family needs one."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    info: dict[str, Any] = {}
    if attention_fusion is not None:
        if attention_fusion != "relative_bias":
            raise ValueError(f"unknown attention fusion {attention_fusion!r}")
        from .fusions import fuse_relative_bias_attention

        pre = OnnxModel(onnx.load(str(src)))
        info["relative_bias_attention_fused"] = fuse_relative_bias_attention(pre, num_heads)
        pre.save_model_to_file(str(dst))
        src = dst
    # opt_level=0: only the portable python fusions; onnxruntime applies its own at session load.
    model = optimize_model(str(src), model_type=optimizer_type or "bert", num_heads=num_heads,
                           hidden_size=hidden_size, opt_level=0)
    model.save_model_to_file(str(dst))
    info["optimizer"] = f"onnxruntime.transformers.optimizer(model_type={optimizer_type or 'bert'!r})"
    info["fused_operators"] = fused_operator_counts(onnx.load(str(dst), load_external_data=False))
    return info


# ----------------------------------------------------------------------------- int8
def _session(model_or_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, so, providers=[CPU])


def _run_all(session, feeds: list[dict[str, np.ndarray]], names: list[str] | None = None) -> list[list[np.ndarray]]:
    return [session.run(names, f) for f in feeds]


def _weighted_matmuls(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits]


def _with_outputs(model, names: list[str]):
    import onnx
    from onnx import helper

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def _smooth(model, amax: dict[str, np.ndarray], alpha: float):
    """SmoothQuant: move activation outliers of each MatMul input into its weights
    (X W = (X / s)(s W)), so per-tensor int8 activations lose less. Exact in fp32."""
    from onnx import helper, numpy_helper

    m = copy.deepcopy(model)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for node in m.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits and node.input[0] in amax:
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.ndim == 2:
                s = amax[node.input[0]] ** alpha / np.maximum(np.abs(w).max(1), 1e-8) ** (1 - alpha)
                s = np.clip(np.nan_to_num(s, nan=1.0, posinf=1.0), 1e-4, 1e4).astype(np.float32)
                s[amax[node.input[0]] == 0] = 1.0
                inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32),
                                                                      node.input[1]))
                inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{node.name}/smooth_scale")
                m.graph.initializer.append(inv)
                smoothed = f"{node.input[0]}/smoothed_for/{node.name}"
                nodes.append(helper.make_node("Mul", [node.input[0], inv.name], [smoothed],
                                              name=f"{node.name}/smooth"))
                node.input[0] = smoothed
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _quantize(model, exclude: list[str], workdir: Path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = workdir / "int8-src.onnx"
    dst = workdir / "int8-try.onnx"
    onnx.save(model, str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=exclude, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    out = onnx.load(str(dst))
    src.unlink()
    dst.unlink()
    return out


def build_int8(src: Path, dst: Path, calibration_feeds: list[dict[str, np.ndarray]], output: str,
               target_min: float, target_mean: float, workdir: Path, max_excluded: int | None = None,
               log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Dynamic int8 with per-channel weights, SmoothQuant scaling calibrated on ``calibration_feeds``
    (alpha chosen from a small grid), then, while the calibration accuracy is below target, MatMuls are
    kept in fp32: those fed by a GELU first, worst local signal-to-noise ratio first."""
    import onnx

    base = onnx.load(str(src))
    matmuls = _weighted_matmuls(base)
    if max_excluded is None:
        max_excluded = len(matmuls) // 2
    act_names = sorted({n.input[0] for n in matmuls})
    ref_sess = _session(_with_outputs(base, act_names))
    ref_runs = _run_all(ref_sess, calibration_feeds, [output] + act_names)
    reference = np.concatenate([r[0] for r in ref_runs])
    amax = {}
    for j, name in enumerate(act_names, start=1):
        amax[name] = np.max(np.stack([np.abs(r[j].reshape(-1, r[j].shape[-1])).max(0) for r in ref_runs]), 0)

    def score(model) -> tuple[float, float]:
        got = np.concatenate([r[0] for r in _run_all(_session(model), calibration_feeds, [output])])
        cos = cosines(reference, got)
        return float(cos.min()), float(cos.mean())

    best = None
    for alpha in (0.5, 0.7, 0.85):
        smoothed = _smooth(base, amax, alpha)
        q = _quantize(smoothed, [], workdir)
        s = score(q)
        log(f"  int8 calibration: smoothing alpha {alpha}: min cosine {s[0]:.4f}, mean {s[1]:.5f}")
        if best is None or s > best[0]:
            best = (s, alpha, smoothed, q)
    (cal_min, cal_mean), alpha, smoothed, quantized = best
    # MatMuls fed by a GELU (the second FFN projection) see heavy-tailed activations that smoothing cannot
    # tame; they are kept in fp32 first, the rest after them, worst local signal-to-noise ratio first.
    # The number kept per step doubles (1, 2, 4, ...), so a model that needs many stays affordable.
    producers = {o: n for n in base.graph.node for o in n.output}
    post_gelu = {n.name for n in matmuls if producers.get(n.input[0]) is not None
                 and producers[n.input[0]].op_type in _GELU_OPS}
    excluded: list[str] = []
    step = 1
    while (cal_min < target_min or cal_mean < target_mean) and len(excluded) < max_excluded:
        left = [n for n in _weighted_matmuls(smoothed) if n.name not in excluded]
        pool = [n for n in left if n.name in post_gelu] or left
        ranked = _rank_by_noise(quantized, smoothed, calibration_feeds, pool)
        if not ranked:
            break
        chosen = ranked[:min(step, max_excluded - len(excluded))]
        excluded += chosen
        quantized = _quantize(smoothed, excluded, workdir)
        cal_min, cal_mean = score(quantized)
        log(f"  int8 calibration: keeping {len(excluded)} MatMul(s) in fp32 (+{', '.join(chosen)}): "
            f"min cosine {cal_min:.4f}, mean {cal_mean:.5f}")
        step *= 2
    onnx.save(quantized, str(dst))
    return {"method": "dynamic int8, per-channel weights, SmoothQuant", "smooth_alpha": alpha,
            "fp32_matmuls": excluded, "int8_matmuls": len(matmuls) - len(excluded),
            "calibration": {"texts": len(calibration_feeds), "min_cosine_vs_fp32": cal_min,
                            "mean_cosine_vs_fp32": cal_mean}}


_GELU_OPS = ("Gelu", "BiasGelu", "FastGelu", "QuickGelu")


def _rank_by_noise(quantized, smoothed, feeds, candidates) -> list[str]:
    """Candidate MatMuls, worst first: how much each quantized output differs from its fp32 product on
    the same input."""
    from onnx import numpy_helper

    if not candidates:
        return []
    weights = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    names = []
    for n in candidates:
        names += [n.input[0], n.output[0]]
    sess = _session(_with_outputs(quantized, names))
    noise = {n.name: 0.0 for n in candidates}
    signal = {n.name: 0.0 for n in candidates}
    for f in feeds[: min(len(feeds), 12)]:
        vals = dict(zip(names, sess.run(names, f)))
        for n in candidates:
            exact = vals[n.input[0]] @ weights[n.input[1]]
            noise[n.name] += float(((vals[n.output[0]] - exact) ** 2).sum())
            signal[n.name] += float((exact ** 2).sum())
    return sorted((n.name for n in candidates), key=lambda k: -noise[k] / max(signal[k], 1e-30))


# ----------------------------------------------------------------------------- fp16
FP16_KEEP_FP32 = ["ReduceSum", "ReduceMean", "ReduceL2", "ReduceMax", "Div", "Sqrt", "Clip", "Max", "Min"]


def build_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and activations, fp32 inputs/outputs; pooling sums, the mask division and the L2 norm
    stay in fp32 (onnxruntime's LayerNorm kernels accumulate statistics in fp32)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    model.save_model_to_file(str(dst))
    return {"method": "onnxruntime.transformers float16", "kept_fp32_ops": FP16_KEEP_FP32}
