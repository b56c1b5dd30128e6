"""The int8 variant's build: rewrites calibrated on sample inputs, dynamic int8 quantization by onnxruntime, and
MatMuls kept in fp32 only where calibration still misses its target."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st_runtime.providers import cpu_int8_dot_product

from ..memory import release_memory, run_in_child
from ..validate import cosines
from .graph import as_onnx_model, float_outputs, fold_constant_identities, name_nodes, with_outputs
from .rewrites import OUTLIER_SUFFIX, OutlierChannels, SiblingMatMulMerge, SmoothQuant, weighted_matmuls

if TYPE_CHECKING:
    from onnx import ModelProto

CPU = "CPUExecutionProvider"
Feeds = list[dict[str, np.ndarray]]


def session(model_or_path):
    """A quiet CPU onnxruntime session of a ModelProto or a graph file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, so, providers=[CPU])


def run_all(sess, feeds: Feeds, names: list[str] | None = None) -> list[list[np.ndarray]]:
    return [sess.run(names, f) for f in feeds]


# Scratch graphs at or above this size keep their weights in ``<file>.data`` (protobuf's limit is 2 GiB).
LARGE_GRAPH_BYTES = 1_800_000_000


def save_graph(model: ModelProto, path: Path) -> None:
    """Save a scratch graph; one of a model over 2 GB (Qwen3-Embedding-0.6B in fp32) with its weights in
    ``<file>.data``. The weights then leave ``model`` for that file (a later save of it, in the same folder, refers
    to them there)."""
    import onnx
    from google.protobuf.message import EncodeError

    try:
        small = model.ByteSize() < LARGE_GRAPH_BYTES
    except EncodeError:  # protobuf cannot even size a message over 2 GB
        small = False
    if small:
        onnx.save(model, str(path))
        return
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
    )


def save_for_quantizer(model: ModelProto, workdir: Path) -> tuple[Path, list[str]]:
    """Write ``model`` where :func:`quantize` reads it (the caller may then drop the model): the file, and the
    names of the outlier side products, which stay in fp32."""

    src = workdir / "int8-src.onnx"
    save_graph(model, src)
    return src, [n.name for n in model.graph.node if n.name.endswith(OUTLIER_SUFFIX)]


def quantize(source: tuple[Path, list[str]], exclude: list[str], workdir: Path, score=None):
    """The graph saved by :func:`save_for_quantizer` with its MatMuls (but ``exclude`` and the outlier
    side products) in dynamic int8. With ``score``, return score(path of the quantized graph) instead,
    without loading it (a calibration attempt needs only its accuracy). onnxruntime's quantizer holds
    several copies of the weights at once: it runs in a child process, while this one holds none."""
    import onnx

    src, side = source
    dst = workdir / "int8-try.onnx"
    try:
        run_in_child(
            "exporters.int8.build:_quantize_here",
            {"src": str(src.resolve()), "dst": str(dst.resolve()), "exclude": list(exclude) + side},
            workdir,
        )
        return score(dst) if score is not None else onnx.load(str(dst))
    finally:  # never leave a scratch graph in the export folder, also when quantization fails
        dst.unlink(missing_ok=True)


def _quantize_here(src: str, dst: str, exclude: list[str]) -> None:
    """quantize's work, in its child process."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().addFilter(_quiet_preprocessing_advice)
    quantize_dynamic(
        src,
        dst,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _quiet_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime's quantizer advises shape-inference pre-processing on every call (through the root logger):
    our graphs come straight from the exporter with shapes, and the calibration search calls it many times."""
    return "pre-processing before quantization" not in record.getMessage()


def activation_ranges(
    ref_path: Path, names: list[str], output: str, feeds: Feeds
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``output`` on every feed, concatenated, and the per-channel maxima of |tensor| for each of ``names``
    over all feeds, from the graph saved in ``ref_path`` with ``names`` among its outputs (see
    graph.float_outputs). A session from a file: the caller need hold no copy of the model meanwhile."""
    sess = session(ref_path)
    # running maxima, one feed at a time (holding every MatMul input of every calibration feed took gigabytes
    # for a base-size model)
    outputs, amax = [], {}
    for feed in feeds:
        got = sess.run([output] + names, feed)
        outputs.append(got[0])
        for name, value in zip(names, got[1:]):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(0)
            amax[name] = channel_max if name not in amax else np.maximum(amax[name], channel_max)
        del got
    del sess
    return np.concatenate(outputs), amax


def rank_by_noise(quantized: ModelProto, smoothed: ModelProto, feeds: Feeds, candidates: list) -> list[str]:
    """Candidate MatMuls, worst first: how much each quantized output differs from its fp32 product on
    the same input."""
    from onnx import numpy_helper

    if not candidates:
        return []
    weights = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    names = []
    for n in candidates:
        names += [n.input[0], n.output[0]]
    sess = session(with_outputs(quantized, names))
    noise = {n.name: 0.0 for n in candidates}
    signal = {n.name: 0.0 for n in candidates}
    for f in feeds[: min(len(feeds), 12)]:
        vals = dict(zip(names, sess.run(names, f)))
        for n in candidates:
            exact = vals[n.input[0]] @ weights[n.input[1]]
            noise[n.name] += float(((vals[n.output[0]] - exact) ** 2).sum())
            signal[n.name] += float((exact**2).sum())
    return sorted((n.name for n in candidates), key=lambda k: -noise[k] / max(signal[k], 1e-30))


# (smoothing strength, outlier gain) tried in turn; None: the best strength so far
CALIBRATION_GRID = ((0.5, 1.5), (0.7, 1.5), (0.85, 1.5), (None, 2.0), (None, 1.2))


def build_int8(
    src: Path,
    dst: Path,
    calibration_feeds: Feeds,
    output: str,
    target_min: float,
    target_mean: float,
    workdir: Path,
    max_excluded: int | None = None,
    log: Callable[[str], None] = lambda _m: None,
    agreement: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Dynamic int8 with per-channel weights from the plain fp32 graph (onnxruntime's own CPU fusions apply at
    load; its fused Attention would keep the query/key/value projections in fp32). Sibling projections are
    merged first. SmoothQuant scaling and outlier-channel decomposition are calibrated on
    ``calibration_feeds`` (the most accurate of a small grid of smoothing strengths and outlier thresholds).
    Only if the calibration accuracy is still below target are MatMuls kept in fp32,
    worst local signal-to-noise ratio first. ``agreement(reference, got)`` scores each calibration row against
    fp32 (1 is identical; default: cosine similarity), and the targets apply to its minimum and mean."""
    import onnx

    base = onnx.load(str(src))
    name_nodes(as_onnx_model(base))
    fold_constant_identities(as_onnx_model(base))
    merged = SiblingMatMulMerge().apply(base)
    matmuls = weighted_matmuls(base)
    if max_excluded is None:
        max_excluded = len(matmuls) // 2
    act_names = sorted({n.input[0] for n in matmuls})
    # The prepared plain graph waits on disk: each attempt loads and rewrites its own copy, so that only one
    # copy of the weights is in memory while the quantizer (which makes its own) runs. The activation ranges
    # come from a copy with the MatMul inputs as outputs, run while no ModelProto is held here.
    n_matmuls = len(matmuls)
    base_path = workdir / "int8-base.onnx"
    ref_path = workdir / "int8-ref.onnx"
    save_graph(base, base_path)
    base.graph.output.extend(float_outputs(base, act_names))  # on the graph itself: no copy of the weights
    save_graph(base, ref_path)
    base = matmuls = None
    release_memory()
    try:
        reference, amax = activation_ranges(ref_path, act_names, output, calibration_feeds)
    finally:
        ref_path.unlink(missing_ok=True)

    def smoothed_source(alpha: float, gain: float | None) -> tuple[tuple[Path, list[str]], int]:
        """The smoothed graph saved for the quantizer; no copy of it stays in memory here."""
        model = onnx.load(str(base_path))
        decomposed = SmoothQuant(amax, alpha, OutlierChannels(gain)).apply(model)
        source = save_for_quantizer(model, workdir)
        del model
        release_memory()
        return source, decomposed

    def score(model) -> tuple[float, float]:
        got = np.concatenate([r[0] for r in run_all(session(model), calibration_feeds, [output])])
        cos = (agreement or cosines)(reference, got)
        return float(cos.min()), float(cos.mean())

    def attempt(alpha: float, gain: float | None):
        source, decomposed = smoothed_source(alpha, gain)
        s = quantize(source, [], workdir, score=score)
        release_memory()
        log(
            f"  int8 calibration: smoothing alpha {alpha}, outlier channels taken out of {decomposed} MatMul(s): "
            f"min agreement {s[0]:.4f}, mean {s[1]:.5f}"
        )
        return s, alpha, gain, decomposed

    try:
        # The most accurate of a small grid: smoothing strength first, then how many channels are taken out.
        # Only scores are kept (each candidate is a smoothed and a quantized copy of the model); the best is
        # rebuilt.
        best = None
        for alpha, gain in CALIBRATION_GRID:
            candidate = attempt(best[1] if alpha is None else alpha, gain)
            if best is None or candidate[0] > best[0]:
                best = candidate
        (cal_min, cal_mean), alpha, gain, decomposed = best
        source, _ = smoothed_source(alpha, gain)
        base_path.unlink()
        quantized = quantize(source, [], workdir)
        excluded: list[str] = []
        step = 1
        while (cal_min < target_min or cal_mean < target_mean) and len(excluded) < max_excluded:
            smoothed = onnx.load(str(source[0]))
            left = [n for n in weighted_matmuls(smoothed) if n.name not in excluded]
            if not left:
                break
            ranked = rank_by_noise(quantized, smoothed, calibration_feeds, left)
            smoothed = quantized = left = None  # not held while the quantizer runs
            release_memory()
            chosen = ranked[: min(step, max_excluded - len(excluded))]
            excluded += chosen
            quantized = quantize(source, excluded, workdir)
            cal_min, cal_mean = score(quantized)
            log(
                f"  int8 calibration: keeping {len(excluded)} MatMul(s) in fp32 (+{', '.join(chosen)}): "
                f"min agreement {cal_min:.4f}, mean {cal_mean:.5f}"
            )
            step *= 2
    finally:  # the scratch graphs (and their weights) never stay in the export folder, also when calibration fails
        for scratch in (base_path, workdir / "int8-src.onnx"):
            scratch.unlink(missing_ok=True)
            scratch.with_name(scratch.name + ".data").unlink(missing_ok=True)
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
            "agreement": "cosine" if agreement is None else getattr(agreement, "__doc__", None) or "custom",
            "min_cosine_vs_fp32" if agreement is None else "min_agreement_vs_fp32": cal_min,
            "mean_cosine_vs_fp32" if agreement is None else "mean_agreement_vs_fp32": cal_mean,
        },
    }
