"""Runners: how one batch of feeds goes through an onnxruntime session. SessionRunner (host arrays),
BoundRunner (IO binding with device buffers reused per batch shape, optional CUDA graphs), and the
process-wide CaptureGate that lets a CUDA-graph capture run alone."""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from .errors import GraphLoadError

_OOM_MESSAGES = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation", "bfcarena")


def is_out_of_memory(exc: Exception) -> bool:
    """Whether an onnxruntime error (untyped) reports device memory exhaustion."""
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


class SessionRunner:
    """Runs a graph on host arrays; returns the output as float32 numpy."""

    def __init__(self, session: ort.InferenceSession, output: str):
        self.session = session
        self.output = output

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feeds)[0]


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class Slot:
    """Device buffers of one batch shape, bound once: each batch is copied into them in place."""

    def __init__(
        self,
        session: ort.InferenceSession,
        inputs: dict[str, np.ndarray],
        output: str,
        out_shape,
        out_dtype,
        device: str,
        device_id: int,
        graph_id: int | None,
    ):
        self.binding = session.io_binding()
        self.inputs = {}
        for name, array in inputs.items():
            value = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, device, device_id)
            self.binding.bind_ortvalue_input(name, value)
            self.inputs[name] = value
        if out_shape is not None:  # CUDA graphs replay into fixed addresses: the output is preallocated too
            self.output = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, out_dtype, device, device_id)
            self.binding.bind_ortvalue_output(output, self.output)
        else:
            self.binding.bind_output(output, device, device_id)
        self.graph_id = graph_id
        self.captured = graph_id is None or graph_id < 0  # nothing to capture: counts as done
        self.run_options = ort.RunOptions()
        if graph_id is not None:
            # onnxruntime's annotation of a captured CUDA graph: one per shape; -1 runs without capture
            self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def uncapture(self) -> None:
        self.graph_id = -1
        self.captured = True
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", "-1")


class CaptureGate:
    """Process-wide gate for st_runtime's GPU runs. onnxruntime captures CUDA graphs in the global capture
    mode, where a CUDA call from another thread during the capture fails; so a capture waits for the GPU
    runs in flight and runs alone, while ordinary runs of any number of encoders go on together."""

    def __init__(self):
        self._cond = threading.Condition()
        self._running = 0
        self._capturing = False
        self._waiting = 0  # captures waiting: new runs hold back for them, so they cannot starve

    def _enter(self, capture: bool) -> None:
        with self._cond:
            if capture:
                self._waiting += 1
                while self._capturing or self._running:
                    self._cond.wait()
                self._waiting -= 1
                self._capturing = True
            else:
                while self._capturing or self._waiting:
                    self._cond.wait()
                self._running += 1

    def _leave(self, capture: bool) -> None:
        with self._cond:
            if capture:
                self._capturing = False
            else:
                self._running -= 1
            self._cond.notify_all()

    def run(self, fn, capture: bool = False):
        self._enter(capture)
        try:
            return fn()
        finally:
            self._leave(capture)


GPU_GATE = CaptureGate()


class BoundRunner(SessionRunner):
    """IO binding through onnxruntime's own OrtValue API (no torch). Each batch shape gets device buffers
    once, and later batches of that shape are copied into them (length-sorted batching repeats shapes:
    full batches of each padded width); only the pooled output comes back to the host, the
    [batch, seq, hidden] states never leave the device. The MAX_SLOTS most recent shapes are kept.

    With ``graphs`` (CUDA graphs, onnxruntime's ``enable_cuda_graph``), rows are padded up to a power of two
    (and the tower rounds widths coarsely) so that few shapes recur, and each shape is captured once as its
    own graph (``gpu_graph_id``) and replayed after; up to MAX_GRAPHS shapes, beyond which batches run
    uncaptured. onnxruntime keeps CUDA graphs per calling thread, so graph-mode runs all go through one
    worker thread of the runner; a capture runs alone among st_runtime's GPU runs (CaptureGate). A shape
    whose capture fails (a kernel that cannot be captured) warns once and runs uncaptured from then on.
    Buffers are shared, so runs of one runner are serialized (a GPU runs one batch at a time anyway).
    """

    MAX_SLOTS = 16  # uncaptured shapes whose buffers are kept (least recently used dropped)
    MAX_GRAPHS = 64  # captured graphs, each pinned with its buffers for the session's lifetime

    def __init__(
        self,
        session: ort.InferenceSession,
        output: str,
        device: str,
        device_id: int = 0,
        graphs: bool = False,
        dim: int | None = None,
    ):
        super().__init__(session, output)
        self.device = device
        self.device_id = device_id
        self.graphs = graphs
        out = next((o for o in session.get_outputs() if o.name == output), None)
        if out is None:
            raise GraphLoadError(
                f"the graph has no output {output!r} (it has "
                f"{[o.name for o in session.get_outputs()]}): the graph and the manifest do not "
                "belong together. Re-export the model with `st-export`."
            )
        self.out_dtype = _ORT_TYPES.get(out.type, np.float32)
        self.dim = dim if dim is not None else out.shape[-1]
        if graphs and not isinstance(self.dim, int):
            raise GraphLoadError(
                f"CUDA graphs need the output width of {output!r}, which the graph leaves "
                f"symbolic ({out.shape}) and the manifest does not give."
            )
        self.slots: OrderedDict[tuple, Slot] = OrderedDict()  # captured ones are never dropped
        self.graphs_taken = 0
        self.uncaptured = 0  # graph-mode slots made uncaptured: past MAX_GRAPHS, or their capture failed
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="st-cuda-graphs") if graphs else None
        self._warned = False
        # the CPU provider captures nothing and needs no gate
        self._gate = GPU_GATE.run if device != "cpu" else (lambda fn, capture=False: fn())

    @staticmethod
    def bucket(rows: int) -> int:
        return 1 << (rows - 1).bit_length()

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._worker is not None:
            return self._worker.submit(self._call, feeds).result()
        return self._call(feeds)

    def _call(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        rows = next(iter(feeds.values())).shape[0]
        if self.graphs:
            padded = self.bucket(rows)
            if padded != rows:  # extra rows repeat the first one (a valid row: no all-masked NaN risk)
                feeds = {k: np.concatenate([v, np.repeat(v[:1], padded - rows, axis=0)]) for k, v in feeds.items()}
        key = tuple((k, v.shape, v.dtype.str) for k, v in feeds.items())
        with self._lock:
            slot = self.slots.get(key)
            if slot is None:
                slot = self._new_slot(key, feeds)
            else:
                self.slots.move_to_end(key)

            def run():
                return self._run(slot, feeds)

            if slot.captured:
                return self._gate(run)[:rows]
            try:
                result = self._gate(run, capture=True)
            except Exception as exc:  # onnxruntime's errors are untyped: out of memory goes up to be halved
                if is_out_of_memory(exc):
                    raise
                self._capture_failed(slot, exc)
                result = self._gate(run)  # a genuine error raises here again
            slot.captured = True
            return result[:rows]

    def _run(self, slot: Slot, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, array in feeds.items():
            slot.inputs[name].update_inplace(np.ascontiguousarray(array))
        slot.binding.synchronize_inputs()
        self.session.run_with_iobinding(slot.binding, slot.run_options)
        return slot.binding.copy_outputs_to_cpu()[0]

    def _capture_failed(self, slot: Slot, exc: Exception) -> None:
        self.uncaptured += 1
        slot.uncapture()
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"onnxruntime could not capture a CUDA graph for a batch of shape "
                f"{next(iter(slot.inputs.values())).shape()} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}); such batches run without CUDA graphs (same results, "
                "more launch overhead). Pass cuda_graphs=False to skip the attempts.",
                RuntimeWarning,
                stacklevel=6,
            )

    def _new_slot(self, key: tuple, feeds: dict[str, np.ndarray]) -> Slot:
        rows = next(iter(feeds.values())).shape[0]
        if self.graphs and self.graphs_taken < self.MAX_GRAPHS:
            self.graphs_taken += 1
            graph_id: int | None = self.graphs_taken
        else:  # kept among the MAX_SLOTS most recent uncaptured shapes
            uncaptured = [k for k, v in self.slots.items() if v.graph_id is None or v.graph_id < 0]
            if len(uncaptured) >= self.MAX_SLOTS:
                del self.slots[uncaptured[0]]
            graph_id = -1 if self.graphs else None  # -1: no graph id left, this shape runs uncaptured
            self.uncaptured += self.graphs
        # a graph-enabled session binds preallocated outputs only (replays write to fixed addresses)
        out_shape = (rows, self.dim) if self.graphs else None
        slot = Slot(self.session, feeds, self.output, out_shape, self.out_dtype, self.device, self.device_id, graph_id)
        self.slots[key] = slot
        return slot
