"""Optimized graph variants built from the fp32 graph: fused ("opt"), int8 (CPU) and fp16 (CUDA).

Every variant is validated end to end against sentence-transformers by export.py before it can be
chosen; this module only builds them and reports what it did.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from st_runtime.providers import cpu_int8_dot_product

from .memory import release_memory
from .validate import cosines

logger = logging.getLogger(__name__)

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
    hf_config: Any
    spec: Any
    log: Callable[[str], None]

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
        del pre  # one copy of the weights in memory at a time
        src = dst
    # opt_level=0: only the portable python fusions; onnxruntime applies its own at session load.
    model = optimize_model(
        str(src), model_type=optimizer_type or "bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
    )
    model.save_model_to_file(str(dst))
    info["optimizer"] = f"onnxruntime.transformers.optimizer(model_type={optimizer_type or 'bert'!r})"
    info["fused_operators"] = fused_operator_counts(model.model)
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


OUTLIER_SUFFIX = "/outlier_matmul"


def _weighted_matmuls(model) -> list:
    """MatMuls with a constant 2-D weight, except the fp32 side products of outlier channels."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "MatMul"
        and len(n.input) == 2
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
        and not n.name.endswith(OUTLIER_SUFFIX)
    ]


def _name_nodes(graph) -> None:
    """Give unnamed nodes unique names: the rewrites below name what they add after the node they rewrite."""
    taken = {n.name for n in graph.node}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_st_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _fold_constant_identities(graph) -> None:
    """Point every input that reads an Identity of an initializer (how the exporter shares a tensor, e.g.
    ALBERT's one set of layer weights) at the initializer itself, so shared weights are seen as such."""
    source: dict[str, str] = {}
    inits = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and (node.input[0] in inits or node.input[0] in source):
            source[node.output[0]] = source.get(node.input[0], node.input[0])
    if not source:
        return
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in source:
                node.input[i] = source[name]
    kept = [
        n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in source and n.output[0] not in outputs)
    ]
    del graph.node[:]
    graph.node.extend(kept)


def _consumers(model) -> dict[str, list]:
    """tensor name -> the nodes of the main graph that read it (onnxruntime's OnnxModel helper)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    return OnnxModel(model).input_name_to_nodes(exclude_subgraphs=True)


def _constants(model) -> dict[str, np.ndarray]:
    """Initializers, Constant nodes, and Identity nodes of either (the exporter shares equal tensors that way)."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def _bias_add(node, consumers, consts, graph_outputs):
    """The Add that adds a constant 1-D bias to ``node``'s output, when that is its only consumer, and the
    bias's name."""
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in graph_outputs:
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
    if other not in consts or consts[other].ndim != 1:
        return None
    return add, other


def merge_sibling_matmuls(model) -> int:
    """MatMuls with constant weights that read the same activation, each followed only by a constant bias Add
    (attention's query, key and value projections), become one MatMul + Add + Split: one larger GEMM and, in
    int8, one quantization of the shared activation. Exact up to fp32 summation order. Returns how many groups
    were merged."""
    from onnx import helper, numpy_helper

    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return 0  # Split takes its sizes as an input from opset 13
    graph = model.graph
    _name_nodes(graph)
    _fold_constant_identities(graph)
    consts = _constants(model)
    consumers = _consumers(model)
    outputs = {o.name for o in graph.output}
    groups: dict[str, list] = {}
    for node in _weighted_matmuls(model):
        found = _bias_add(node, consumers, consts, outputs)
        if found is not None:
            groups.setdefault(node.input[0], []).append((node, *found))
    replace: dict[str, list] = {}
    drop: set[str] = set()
    made: dict[tuple, str] = {}  # shared weights (ALBERT) are concatenated once
    for x, members in groups.items():
        if len(members) < 2:
            continue
        weights = [consts[m.input[1]] for m, _, _ in members]
        biases = [consts[b] for _, _, b in members]
        if len({w.shape[0] for w in weights}) != 1 or any(b.shape[0] != w.shape[1] for w, b in zip(weights, biases)):
            continue
        base = f"{members[0][0].name}/merged"
        key = tuple(m.input[1] for m, _, _ in members) + tuple(b for _, _, b in members)
        if key not in made:
            made[key] = base
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.concatenate(weights, 1), f"{base}/weight"),
                    numpy_helper.from_array(np.concatenate(biases, 0), f"{base}/bias"),
                    numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{base}/sizes"),
                ]
            )
        tensors = made[key]
        replace[members[0][0].name] = [
            helper.make_node("MatMul", [x, f"{tensors}/weight"], [f"{base}/product"], name=f"{base}/MatMul"),
            helper.make_node("Add", [f"{base}/product", f"{tensors}/bias"], [f"{base}/biased"], name=f"{base}/Add"),
            helper.make_node(
                "Split",
                [f"{base}/biased", f"{tensors}/sizes"],
                [add.output[0] for _, add, _ in members],
                axis=-1,
                name=f"{base}/Split",
            ),
        ]
        drop.update(n.name for m in members for n in m[:2])
    if not replace:
        return 0
    nodes = []
    for node in graph.node:
        nodes.extend(replace.get(node.name, []))
        if node.name not in drop:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    return len(replace)


def _used_names(graph) -> set[str]:
    """Every tensor name read in ``graph``, including inside If/Loop/Scan bodies."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used |= _used_names(sub)
    return used


def _drop_unused_initializers(graph) -> None:
    used = _used_names(graph)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _value_infos(model, names: list[str]) -> list:
    """Graph outputs for the tensors ``names`` that are not outputs already (float, shape left open)."""
    import onnx
    from onnx import helper

    have = {o.name for o in model.graph.output}
    return [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in have]


def _with_outputs(model, names: list[str]):
    """A copy of the model that also outputs the tensors ``names``."""
    m = copy.deepcopy(model)
    m.graph.output.extend(_value_infos(m, names))
    return m


def _outlier_channels(smoothed_amax: np.ndarray, gain: float | None) -> list[int]:
    """The fewest top channels (1, 2, 4 or 8) whose removal shrinks the int8 range at least ``gain``-fold."""
    if gain is None:
        return []
    order = np.argsort(-smoothed_amax, kind="stable")
    top = smoothed_amax[order]
    for k in (1, 2, 4, 8):
        if k < len(top) and top[0] >= gain * max(float(top[k]), 1e-12):
            return [int(c) for c in order[:k]]
    return []


def _smooth(
    model, amax: dict[str, np.ndarray], alpha: float, outlier_gain: float | None = None, in_place: bool = False
):
    """SmoothQuant: move activation outliers of each MatMul input into its weights
    (X W = (X / s)(s W)), so per-tensor int8 activations lose less. Exact in fp32.

    Where a few input channels still dominate the range after smoothing (in BERT-style models the [CLS]
    token carries, in one or two channels, values several times larger than anything else), those channels
    are taken out of the int8 product and multiplied in fp32 on the side,
    X W = X[:, ~O] W[~O] + X[:, O] W[O], so the int8 range only has to fit the rest. Also exact in fp32.
    Returns the model (``model`` itself, rewritten, with ``in_place``) and how many MatMuls had channels taken
    out."""
    from onnx import helper, numpy_helper

    m = model if in_place else copy.deepcopy(model)
    _name_nodes(m.graph)
    _fold_constant_identities(m.graph)
    consts = _constants(m)
    consumers = _consumers(m)
    outputs = {o.name for o in m.graph.output}
    uses: dict[str, list] = {}
    for n in _weighted_matmuls(m):
        if n.input[0] in amax:
            uses.setdefault(n.input[1], []).append(n.input[0])
    # One scaling per weight: a weight shared by several MatMuls (ALBERT) is scaled once, for the widest
    # range any of its inputs reaches; each input is divided by the same s, so every product stays exact.
    plans: dict[str, tuple[str, str, list[int]]] = {}
    for wname, xs in uses.items():
        w = consts[wname]
        a = np.max(np.stack([np.nan_to_num(amax[x], nan=0.0, posinf=0.0) for x in xs]), 0)
        # Channels calibration saw nearly silent (a GELU output that stayed negative) are scaled as if
        # typical: scaling them up by their calibrated range would blow up the int8 range on the first
        # text that does activate them.
        s = np.maximum(a, np.median(a)) ** alpha / np.maximum(np.abs(w).max(1), 1e-8) ** (1 - alpha)
        s = np.clip(np.nan_to_num(s, nan=1.0, posinf=1.0), 1e-4, 1e4).astype(np.float32)
        s[a == 0] = 1.0
        inv = (1.0 / s).astype(np.float32)
        scaled = (w * s[:, None]).astype(np.float32)
        out = _outlier_channels(a / s, outlier_gain)
        if out:
            inv[out] = 0.0
            scaled[out, :] = 0.0
            m.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array(out, np.int64), f"{wname}/outlier_channels"),
                    numpy_helper.from_array(w[out, :].astype(np.float32), f"{wname}/outlier_weight"),
                ]
            )
        m.graph.initializer.extend(
            [
                numpy_helper.from_array(scaled, f"{wname}/smoothed"),
                numpy_helper.from_array(inv, f"{wname}/smooth_scale"),
            ]
        )
        plans[wname] = (f"{wname}/smoothed", f"{wname}/smooth_scale", out)
    after: dict[str, object] = {}
    nodes = []
    decomposed = 0
    targets = {n.name for n in _weighted_matmuls(m) if n.input[0] in amax}
    for node in m.graph.node:
        if node.name in targets:
            x, wname = node.input[0], node.input[1]
            weight, scale, out = plans[wname]
            if out:
                decomposed += 1
                picked, side = f"{node.name}/outlier_input", f"{node.name}/outlier_product"
                nodes.append(
                    helper.make_node(
                        "Gather",
                        [x, f"{wname}/outlier_channels"],
                        [picked],
                        axis=-1,
                        name=f"{node.name}/outlier_gather",
                    )
                )
                nodes.append(
                    helper.make_node(
                        "MatMul", [picked, f"{wname}/outlier_weight"], [side], name=node.name + OUTLIER_SUFFIX
                    )
                )
                found = _bias_add(node, consumers, consts, outputs)
                tail = found[0] if found is not None else node
                final = tail.output[0]
                tail.output[0] = f"{final}/without_outliers"
                after[tail.name] = helper.make_node(
                    "Add", [tail.output[0], side], [final], name=f"{node.name}/outlier_add"
                )
            smoothed = f"{x}/smoothed_for/{node.name}"
            nodes.append(helper.make_node("Mul", [x, scale], [smoothed], name=f"{node.name}/smooth"))
            node.input[0] = smoothed
            node.input[1] = weight
        nodes.append(node)
        if node.name in after:
            nodes.append(after[node.name])
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    _drop_unused_initializers(m.graph)
    return m, decomposed


def _quantize(model, exclude: list[str], workdir: Path, score=None, drop: bool = False):
    """The model with its MatMuls (but ``exclude``) in dynamic int8. With ``score``, return score(path of the
    quantized graph) instead, without loading it (a calibration attempt needs only its accuracy). ``drop``:
    the caller hands ``model`` over, and its weights are freed (cleared) once saved."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = workdir / "int8-src.onnx"
    dst = workdir / "int8-try.onnx"
    side = [n.name for n in model.graph.node if n.name.endswith(OUTLIER_SUFFIX)]
    root = logging.getLogger()
    root.addFilter(_quiet_preprocessing_advice)
    try:
        onnx.save(model, str(src))
        if drop:
            del model.graph.initializer[:]
            release_memory()
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=list(exclude) + side,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        src.unlink()
        release_memory()
        return score(dst) if score is not None else onnx.load(str(dst))
    finally:  # never leave a scratch graph in the export folder, also when quantization fails
        root.removeFilter(_quiet_preprocessing_advice)
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def _quiet_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime's quantizer advises shape-inference pre-processing on every call (through the root logger):
    our graphs come straight from the exporter with shapes, and the calibration search calls it many times."""
    return "pre-processing before quantization" not in record.getMessage()


def build_int8(
    src: Path,
    dst: Path,
    calibration_feeds: list[dict[str, np.ndarray]],
    output: str,
    target_min: float,
    target_mean: float,
    workdir: Path,
    max_excluded: int | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Dynamic int8 with per-channel weights from the plain fp32 graph (onnxruntime's own CPU fusions apply at
    load; its fused Attention would keep the query/key/value projections in fp32). Sibling projections are
    merged first. SmoothQuant scaling and outlier-channel decomposition are calibrated on
    ``calibration_feeds`` (the most accurate of a small grid of smoothing strengths and outlier thresholds).
    Only if the calibration accuracy is still below target are MatMuls kept in fp32,
    worst local signal-to-noise ratio first."""
    import onnx

    base = onnx.load(str(src))
    _name_nodes(base.graph)
    _fold_constant_identities(base.graph)
    merged = merge_sibling_matmuls(base)
    matmuls = _weighted_matmuls(base)
    if max_excluded is None:
        max_excluded = len(matmuls) // 2
    act_names = sorted({n.input[0] for n in matmuls})
    # per-channel activation maxima, kept as running maxima one feed at a time (holding every MatMul input of
    # every calibration feed took gigabytes for a base-size model)
    ref_path = workdir / "int8-ref.onnx"  # a session from a file: no serialized copy of the model in memory
    try:
        outputs_before = len(base.graph.output)
        base.graph.output.extend(_value_infos(base, act_names))  # on the graph itself: no copy of the weights
        onnx.save(base, str(ref_path))
        del base.graph.output[outputs_before:]
        release_memory()
        ref_sess = _session(ref_path)
    finally:
        ref_path.unlink(missing_ok=True)
    outputs, amax = [], {}
    for feed in calibration_feeds:
        got = ref_sess.run([output] + act_names, feed)
        outputs.append(got[0])
        for name, value in zip(act_names, got[1:]):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(0)
            amax[name] = channel_max if name not in amax else np.maximum(amax[name], channel_max)
        del got
    del ref_sess
    reference = np.concatenate(outputs)
    # The prepared plain graph waits on disk: each attempt loads and rewrites its own copy, so that only one
    # copy of the weights is in memory while the quantizer (which makes its own) runs.
    n_matmuls = len(matmuls)
    base_path = workdir / "int8-base.onnx"
    onnx.save(base, str(base_path))
    base = matmuls = None
    release_memory()

    def smoothed_model(alpha: float, gain: float | None):
        return _smooth(onnx.load(str(base_path)), amax, alpha, gain, in_place=True)

    def score(model) -> tuple[float, float]:
        got = np.concatenate([r[0] for r in _run_all(_session(model), calibration_feeds, [output])])
        cos = cosines(reference, got)
        return float(cos.min()), float(cos.mean())

    def attempt(alpha: float, gain: float | None):
        smoothed, decomposed = smoothed_model(alpha, gain)
        s = _quantize(smoothed, [], workdir, score=score, drop=True)
        release_memory()
        log(
            f"  int8 calibration: smoothing alpha {alpha}, outlier channels taken out of {decomposed} MatMul(s): "
            f"min cosine {s[0]:.4f}, mean {s[1]:.5f}"
        )
        return s, alpha, gain, decomposed

    # The most accurate of a small grid: smoothing strength first, then how many channels are taken out. Only
    # scores are kept (each candidate is a smoothed and a quantized copy of the model); the best is rebuilt.
    best = None
    for alpha, gain in [(0.5, 1.5), (0.7, 1.5), (0.85, 1.5), (None, 2.0), (None, 1.2)]:
        candidate = attempt(best[1] if alpha is None else alpha, gain)
        if best is None or candidate[0] > best[0]:
            best = candidate
    (cal_min, cal_mean), alpha, gain, decomposed = best
    try:
        smoothed, _ = smoothed_model(alpha, gain)
    finally:
        base_path.unlink(missing_ok=True)
    quantized = _quantize(smoothed, [], workdir)
    excluded: list[str] = []
    step = 1
    while (cal_min < target_min or cal_mean < target_mean) and len(excluded) < max_excluded:
        left = [n for n in _weighted_matmuls(smoothed) if n.name not in excluded]
        ranked = _rank_by_noise(quantized, smoothed, calibration_feeds, left)
        if not ranked:
            break
        chosen = ranked[: min(step, max_excluded - len(excluded))]
        excluded += chosen
        quantized = _quantize(smoothed, excluded, workdir)
        cal_min, cal_mean = score(quantized)
        log(
            f"  int8 calibration: keeping {len(excluded)} MatMul(s) in fp32 (+{', '.join(chosen)}): "
            f"min cosine {cal_min:.4f}, mean {cal_mean:.5f}"
        )
        step *= 2
    onnx.save(quantized, str(dst))
    return {
        "method": "dynamic int8, per-channel weights, SmoothQuant, outlier channels in fp32",
        "source": "fp32",
        "merged_sibling_matmuls": merged,
        "smooth_alpha": alpha,
        "cpu_int8_dot_product": cpu_int8_dot_product(),
        "outlier_gain": gain,
        "outlier_decomposed_matmuls": decomposed,
        "fp32_matmuls": excluded,
        "int8_matmuls": n_matmuls - len(excluded),
        "calibration": {
            "texts": len(calibration_feeds),
            "min_cosine_vs_fp32": cal_min,
            "mean_cosine_vs_fp32": cal_mean,
        },
    }


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
            signal[n.name] += float((exact**2).sum())
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
def calibration_feeds(folder: Path, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """int8 calibration inputs exactly as the runtime builds them: every text alone, and the whole set
    through the runtime's own length-sorted batching (int8 activation ranges are per batch, so batch
    company matters as much as the text)."""
    from st_runtime import SentenceEncoder

    from .battery import CALIBRATION

    text = SentenceEncoder(folder, variant="fp32").text_tower
    encodings = text.tokenizer.encode_batch(CALIBRATION)
    lengths = np.array([len(e) for e in encodings], dtype=np.int64)
    feeds = [text.feeds(encodings, lengths, np.array([i]), int(n)) for i, n in enumerate(lengths)]
    order = np.argsort(-lengths, kind="stable")
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
    if not fused["Attention"] + fused["MultiHeadAttention"]:
        import onnxruntime as ort

        ctx.log(
            f"warning: onnxruntime {ort.__version__}'s optimizer fused no attention in the {ctx.tower_name} "
            f"tower's opt graph ({fused}); the graph is exact but its attention runs unfused. A newer "
            "onnxruntime may fuse it (1.30 fused none in BERT exports of transformers 5.17, 1.31 does): "
            "`pip install -U onnxruntime`, export again."
        )
    return info


def _build_int8_variant(ctx: BuildContext, dst: Path) -> dict[str, Any]:
    plan = PLANS["int8"]
    try:
        return build_int8(
            ctx.fp32_path,
            dst,
            calibration_feeds(ctx.folder, ctx.tower["inputs"]),
            "sentence_embedding",
            target_min=plan.min_cosine + 0.003,
            target_mean=plan.mean_cosine + 0.002,
            workdir=ctx.folder,
            log=ctx.log,
        )
    finally:  # the calibration's scratch graphs never stay in the export, also when it fails
        for scratch in ctx.folder.glob("int8-*.onnx"):
            scratch.unlink()


def _build_fp16_variant(ctx: BuildContext, dst: Path) -> dict[str, Any]:
    """From the fused graph when it was built (fp16 Attention kernels), else from the fp32 graph."""
    return build_fp16(ctx.variant_path("opt") or ctx.fp32_path, dst)


PLANS = {
    "fp32": VariantPlan("fp32", "fp32", (CPU, CUDA, TRT), rank=100, min_cosine=0.99999),
    "opt": VariantPlan("opt", "fp32", (CPU, CUDA, TRT), rank=50, min_cosine=0.99999, builder=_build_opt_variant),
    "int8": VariantPlan(
        "int8", "int8", (CPU,), rank=10, min_cosine=0.99, mean_cosine=0.995, exact=False, builder=_build_int8_variant
    ),
    "fp16": VariantPlan(
        "fp16",
        "fp16",
        (CUDA, TRT),
        rank=10,
        min_cosine=0.999,
        exact=False,
        builder=_build_fp16_variant,
        validate_on="cuda",
    ),
}
