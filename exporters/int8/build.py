"""The int8 variant's build: rewrites calibrated on sample inputs, dynamic int8 quantization (onnxruntime's graph
and per-channel values, written one weight at a time by ``quantize.py``), and MatMuls kept in fp32 only where
calibration still misses its target.

The graphs are rewritten as structure only: the fp32 graph is loaded without its external data, weights are read
from disk when a rewrite needs one, and each rewrite writes what it makes to a scratch data file next to the graph
(``int8-*``). The build so holds one weight at a time, besides the onnxruntime sessions that calibrate and score
(docs/exporting.md gives the memory per step)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from st_runtime.providers import cpu_int8_dot_product

from ..memory import release_memory
from ..validate import cosines
from .graph import as_onnx_model, float_outputs, fold_constant_identities, name_nodes
from .quantize import quantize_matmuls
from .rewrites import OutlierChannels, SiblingMatMulMerge, SmoothQuant, weighted_matmuls
from .weights import Weights, save_self_contained

if TYPE_CHECKING:
    from onnx import ModelProto

CPU = "CPUExecutionProvider"
Feeds = list[dict[str, np.ndarray]]
# (fp32's outputs, the int8 graph's) -> per-row agreement, 1 where identical
Agreement = Callable[[np.ndarray, np.ndarray], np.ndarray]


def session(model_or_path):
    """A quiet CPU onnxruntime session of a ModelProto (weights inline) or a graph file (external data next to it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, so, providers=[CPU])


def as_rows(output: np.ndarray) -> np.ndarray:
    """A graph output as rows to score: a per-token output [batch, tokens, width] (multi-vector models) gives a row
    per token, so feeds of different widths concatenate."""
    return output.reshape(-1, output.shape[-1]) if output.ndim > 2 else output


def run_all(sess, feeds: Feeds, names: list[str] | None = None) -> list[list[np.ndarray]]:
    return [sess.run(names, f) for f in feeds]


def _structure_copy(model: ModelProto) -> ModelProto:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _session_of(model: ModelProto, folder: Path, name: str):
    """A session of a structure-only graph: saved as ``folder/name`` beside the data files it refers to."""
    import onnx

    path = folder / name
    onnx.save_model(model, str(path))  # the structure; its weights stay in the data files next to it
    try:
        return session(path)
    finally:
        path.unlink(missing_ok=True)


def activation_ranges(
    model: ModelProto, folder: Path, names: list[str], output: str, feeds: Feeds
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``output`` on every feed, concatenated, and the per-channel maxima of |tensor| for each of ``names``
    over all feeds, from ``model`` (structure, weights in ``folder``) with ``names`` among its outputs."""
    ref = _structure_copy(model)
    ref.graph.output.extend(float_outputs(ref, names))
    sess = _session_of(ref, folder, "int8-ref.onnx")
    # running maxima, one feed at a time (holding every MatMul input of every calibration feed took gigabytes
    # for a base-size model)
    outputs, amax = [], {}
    for feed in feeds:
        got = sess.run([output, *names], feed)
        outputs.append(as_rows(got[0]))
        for name, value in zip(names, got[1:]):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(0)
            amax[name] = channel_max if name not in amax else np.maximum(amax[name], channel_max)
        del got
    del sess
    return np.concatenate(outputs), amax


def rank_by_noise(quantized: ModelProto, smoothed: Weights, folder: Path, feeds: Feeds, candidates: list) -> list[str]:
    """Candidate MatMuls, worst first: how much each quantized output differs from its fp32 product on
    the same input (``smoothed``: the fp32 weights the candidates multiply by)."""
    if not candidates:
        return []
    names = []
    for n in candidates:
        names += [n.input[0], n.output[0]]
    probe = _structure_copy(quantized)
    probe.graph.output.extend(float_outputs(probe, names))
    sess = _session_of(probe, folder, "int8-rank.onnx")
    noise = {n.name: 0.0 for n in candidates}
    signal = {n.name: 0.0 for n in candidates}
    for f in feeds[: min(len(feeds), 12)]:
        vals = dict(zip(names, sess.run(names, f)))
        for n in candidates:
            exact = vals[n.input[0]] @ smoothed.read(n.input[1])
            noise[n.name] += float(((vals[n.output[0]] - exact) ** 2).sum())
            signal[n.name] += float((exact**2).sum())
    return sorted((n.name for n in candidates), key=lambda k: -noise[k] / max(signal[k], 1e-30))


# how activations (and weights) are quantized, by build_int8's ``scheme``
SCHEMES = {
    "per_row": "activations per row (token), a row-wise scale and QuantizeLinear before MatMulIntegerToFloat, "
    "weights per channel",
    "per_tensor": "activations per tensor (DynamicQuantizeLinear, as onnxruntime's quantize_dynamic), weights per "
    "channel",
}

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
    agreement: Agreement | None = None,
    scheme: str = "per_row",
) -> dict[str, Any]:
    """Dynamic int8 with per-channel weights from the plain fp32 graph (onnxruntime's own CPU fusions apply at
    load; its fused Attention would keep the query/key/value projections in fp32). Sibling projections are
    merged first. SmoothQuant scaling and outlier-channel decomposition are calibrated on
    ``calibration_feeds`` (the most accurate of a small grid of smoothing strengths and outlier thresholds).
    Only if the calibration accuracy is still below target are MatMuls kept in fp32,
    worst local signal-to-noise ratio first. ``agreement(reference, got)`` scores each calibration row against
    fp32 (1 is identical; default: cosine similarity), and the targets apply to its minimum and mean. ``scheme``: how
    activations are quantized (SCHEMES): "per_row" gives each row (token) a scale of its own, so each text's result
    depends on that text alone; "per_tensor", as onnxruntime's quantize_dynamic does, takes one scale for the whole
    batch (its other texts and padding then move each text's result).

    Every scratch file is ``int8-*`` in the fp32 graph's folder (``workdir``); the caller removes them. ``dst`` is
    written on its own, with its weights in ``<dst>.data`` when the fp32 graph keeps its weights as external data
    (returned as ``external_data``)."""
    folder = Path(src).parent
    if Path(workdir).resolve() != folder.resolve():
        raise ValueError(f"the int8 build works next to its fp32 graph: workdir {workdir} is not {folder}")
    base, external = _structure(Path(src))
    merged = SiblingMatMulMerge().apply(base, Weights(base, folder, "int8-merged.onnx.data"))
    n_matmuls = len(weighted_matmuls(base))
    if max_excluded is None:
        max_excluded = n_matmuls // 2
    if scheme not in SCHEMES:
        raise ValueError(f"int8 scheme {scheme!r} is not one of {sorted(SCHEMES)}")
    calibration = Calibration.measure(base, folder, output, calibration_feeds, agreement, log, scheme)
    scores, alpha, gain, decomposed = calibration.best_smoothing()
    smooth, smooth_weights, _ = calibration.smoothed(alpha, gain)
    result, excluded, (cal_min, cal_mean) = calibration.keep_in_fp32(
        smooth, smooth_weights, scores, (target_min, target_mean), max_excluded
    )
    save_self_contained(result, folder, Path(dst), external)
    return {
        "method": f"dynamic int8: {SCHEMES[scheme]}; SmoothQuant, outlier channels in fp32",
        "scheme": scheme,
        "external_data": external,
        "source": "fp32",
        "merged_sibling_matmuls": merged,
        "smooth_alpha": alpha,
        "cpu_int8_dot_product": cpu_int8_dot_product(),
        "outlier_gain": gain,
        "outlier_decomposed_matmuls": decomposed,
        "fp32_matmuls": excluded,
        "int8_matmuls": n_matmuls - len(excluded),
        "calibration": _calibration_record(
            len(calibration_feeds), agreement, (cal_min, cal_mean), (target_min, target_mean)
        ),
    }


def _structure(src: Path) -> tuple[ModelProto, bool]:
    """The fp32 graph's structure (its weights stay on disk), every node named and constant Identity nodes
    folded, and whether it keeps its weights as external data."""
    import onnx
    from onnx import TensorProto

    from ..memory import graph_tensors

    base = onnx.load(str(src), load_external_data=False)
    external = any(t.data_location == TensorProto.EXTERNAL for t in graph_tensors(base.graph))
    name_nodes(as_onnx_model(base))
    fold_constant_identities(as_onnx_model(base))
    return base, external


def _calibration_record(
    n_feeds: int, agreement: Agreement | None, reached: tuple[float, float], targets: tuple[float, float]
) -> dict:
    """The manifest's account of the calibration: its inputs, its measure, its (min, mean) targets and what the
    int8 graph reached."""
    measure = "cosine" if agreement is None else "agreement"
    return {
        "texts": n_feeds,
        "agreement": "cosine" if agreement is None else getattr(agreement, "__doc__", None) or "custom",
        f"min_{measure}_vs_fp32": reached[0],
        f"mean_{measure}_vs_fp32": reached[1],
        f"target_min_{measure}": targets[0],
        f"target_mean_{measure}": targets[1],
    }


@dataclass
class Calibration:
    """The int8 calibration of one graph: ``base`` (its structure, weights in ``folder``), fp32's ``reference``
    ``output`` on ``feeds``, and the per-channel maxima of each MatMul input (``amax``) that SmoothQuant scales
    by. Each candidate graph is scored by ``agreement`` with the reference (default: cosine similarity)."""

    base: ModelProto
    folder: Path
    output: str
    feeds: Feeds
    reference: np.ndarray
    amax: dict[str, np.ndarray]
    agreement: Agreement | None
    log: Callable[[str], None]
    scheme: str = "per_row"

    @classmethod
    def measure(cls, base, folder: Path, output: str, feeds: Feeds, agreement, log, scheme="per_row") -> Calibration:
        act_names = sorted({n.input[0] for n in weighted_matmuls(base)})
        reference, amax = activation_ranges(base, folder, act_names, output, feeds)
        release_memory()
        return cls(base, folder, output, feeds, reference, amax, agreement, log, scheme)

    def smoothed(self, alpha: float, gain: float | None) -> tuple[ModelProto, Weights, int]:
        """The smoothed graph (structure), its scaled weights written to int8-smoothed.onnx.data."""
        model = _structure_copy(self.base)
        weights = Weights(model, self.folder, "int8-smoothed.onnx.data")
        decomposed = SmoothQuant(self.amax, alpha, OutlierChannels(gain)).apply(model, weights)
        return model, weights, decomposed

    def quantized(self, model: ModelProto, exclude: list[str]) -> ModelProto:
        """``model`` with its MatMuls (but ``exclude``) in int8, the int8 weights in int8-quantized.onnx.data."""
        q = _structure_copy(model)
        weights = Weights(q, self.folder, "int8-quantized.onnx.data")
        quantize_matmuls(q, weights, set(exclude), per_row=self.scheme == "per_row")
        return q

    def score(self, model: ModelProto) -> tuple[float, float]:
        """The minimum and mean agreement of ``model``'s output with the reference."""
        sess = _session_of(model, self.folder, "int8-try.onnx")
        got = np.concatenate([as_rows(r[0]) for r in run_all(sess, self.feeds, [self.output])])
        del sess
        cos = (self.agreement or cosines)(self.reference, got)
        return float(cos.min()), float(cos.mean())

    def attempt(self, alpha: float, gain: float | None):
        model, _weights, decomposed = self.smoothed(alpha, gain)
        s = self.score(self.quantized(model, []))
        release_memory()
        self.log(
            f"  int8 calibration: smoothing alpha {alpha}, outlier channels taken out of {decomposed} MatMul(s): "
            f"min agreement {s[0]:.4f}, mean {s[1]:.5f}"
        )
        return s, alpha, gain, decomposed

    def best_smoothing(self) -> tuple[tuple[float, float], float, float | None, int]:
        """The most accurate of a small grid: smoothing strength first, then how many channels are taken out:
        its (min, mean) agreement, strength, outlier gain and decomposed MatMuls. Only scores are kept; the
        caller rebuilds the best."""
        best = None
        for alpha, gain in CALIBRATION_GRID:
            candidate = self.attempt(best[1] if alpha is None else alpha, gain)
            if best is None or candidate[0] > best[0]:
                best = candidate
        return best

    def keep_in_fp32(
        self,
        smooth: ModelProto,
        smooth_weights: Weights,
        scores: tuple[float, float],
        targets: tuple[float, float],
        max_excluded: int,
    ) -> tuple[ModelProto, list[str], tuple[float, float]]:
        """``smooth`` quantized, keeping MatMuls in fp32 (worst local signal-to-noise ratio first, one more each
        round than the round before: 1, 3, 6, 10, ..., so a target just missed costs a few MatMuls, not twice as
        many) while its (min, mean) agreement ``scores`` are below ``targets`` and at most ``max_excluded`` are kept:
        the quantized graph, the MatMuls kept and its scores."""
        (cal_min, cal_mean), (target_min, target_mean) = scores, targets
        result = self.quantized(smooth, [])
        excluded: list[str] = []
        step = 1
        while (cal_min < target_min or cal_mean < target_mean) and len(excluded) < max_excluded:
            left = [n for n in weighted_matmuls(smooth) if n.name not in excluded]
            if not left:
                break
            ranked = rank_by_noise(result, smooth_weights, self.folder, self.feeds, left)
            chosen = ranked[: min(step, max_excluded - len(excluded))]
            excluded += chosen
            result = self.quantized(smooth, excluded)
            cal_min, cal_mean = self.score(result)
            self.log(
                f"  int8 calibration: keeping {len(excluded)} MatMul(s) in fp32 (+{', '.join(chosen)}): "
                f"min agreement {cal_min:.4f}, mean {cal_mean:.5f}"
            )
            step += 1
        return result, excluded, (cal_min, cal_mean)
