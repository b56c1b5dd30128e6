"""SentenceEncoder: runs an st-export folder with onnxruntime and tokenizers only."""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import util
from .errors import GraphLoadError, ManifestError, UnsupportedInputError, VariantError
from .graph_meta import graph_load_error
from .inputs import LongTextCutter, prepare
from .manifest import graph_files, load_manifest, verify_files
from .providers import check_session_providers, cpu_int8_dot_product, physical_cores, resolve_providers

logger = logging.getLogger(__name__)

_INT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# GPU batches (batch_size=None): up to 1024 texts and 131,072 padded tokens. Measured on an H200 with
# all-MiniLM-L6-v2 fp16 (benchmarks/results/gpu-h200-*.json): short queries ran fastest at 1024 per batch
# (104k/s end to end against 58k/s at the earlier default of 128 and 83-86k/s at 2048-4096), and passages of
# about 160 tokens were flat from 128 to 1024 per batch (15.5-16.1k/s) and slower at 2048 (12.1k/s).
GPU_BATCH_SIZE = 1024
GPU_BATCH_TOKENS = 131072


def _describe(obj: Any) -> str:
    return type(obj).__name__


def _load_tokenizer(folder: Path, info: dict[str, Any]):
    """The text tower's tokenizer: a tokenizers.Tokenizer (kind "hf", the default) or the word-embedding
    models' WhitespaceTokenizer (kind "whitespace"), which offers the same encode_batch interface."""
    kind = info.get("kind", "hf")
    if kind == "hf":
        return Tokenizer.from_file(str(folder / info["file"]))
    if kind == "whitespace":
        from .glove import WhitespaceTokenizer

        return WhitespaceTokenizer.from_manifest(folder, info)
    raise ManifestError(f"tokenizer kind {kind!r} in {folder} is unknown to this st-runtime (it knows 'hf' and "
                        "'whitespace'). Upgrade st-runtime or re-export the model.")


class _TextTower:
    """Tokenizer + graph of one text tower; stateless per call, so safe to share across threads."""

    def __init__(self, folder: Path, tower: dict[str, Any], variant: dict[str, Any], providers, fallback_allowed,
                 threads: int, session_options: ort.SessionOptions | None, io_binding: bool | None = None,
                 cuda_graphs: bool = False, dim: int | None = None):
        self.spec = tower
        self.tokenizer = _load_tokenizer(folder, tower["tokenizer"])
        self.tokenizer.no_padding()
        self._max_seq_length: int | None = tower["tokenizer"].get("max_seq_length")
        self._truncation_side = tower["tokenizer"].get("truncation_side", "right")
        self._configure_truncation(self._max_seq_length)
        self.pad_id = int(tower["tokenizer"].get("pad_token_id") or 0)
        self.inputs = list(tower["inputs"])
        self.output = tower["output"]
        unknown = [i for i in self.inputs if i not in _INT_INPUTS]
        if unknown:
            raise GraphLoadError(f"text tower declares inputs {unknown} that this st-runtime cannot feed "
                                 f"(it knows {list(_INT_INPUTS)}). Upgrade st-runtime.")
        self.session = _make_session(folder / variant["file"], providers, fallback_allowed, threads, session_options,
                                     cuda_graphs=cuda_graphs)
        on_gpu = self.session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self.on_gpu = on_gpu
        self._oom_warned = False
        # GPUs like shapes in multiples of 8; on the CPU padding is pure waste.
        self.pad_multiple = 8 if on_gpu else 1
        # Tokens (items x padded width) per batch on the CPU, where long texts run faster in small batches
        # (measured on a 2-core EPYC: 200-token passages 39/s at 8 per batch, 31/s at 32). GPUs want big
        # batches, up to GPU_BATCH_TOKENS.
        self.max_batch_tokens: int | None = GPU_BATCH_TOKENS if on_gpu else 2048
        # batch_size=None (the default): on the CPU only the token budget limits a batch (short queries run
        # faster 100+ to a batch than 32); on a GPU, GPU_BATCH_SIZE texts (measured on an H200).
        self.auto_batch_size = GPU_BATCH_SIZE if on_gpu else 1024
        # GPU: texts per tokenization chunk overlapped with the device work (at least 4 batches). None (the
        # CPU, whose cores run the graph): everything is tokenized first.
        self.pipeline_chunk: int | None = 4096 if on_gpu else None
        # Single texts get all-zero token type ids from the usual templates ("[CLS]:0 $A:0 [SEP]:0"); then a
        # batch without pairs skips reading them back per text (a third of the host work of a BERT batch).
        self._single_types_zero = "token_type_ids" in self.inputs and not any(self.tokenizer.encode("a").type_ids)
        self.cuda_graphs = cuda_graphs
        use_binding = on_gpu or cuda_graphs if io_binding is None else io_binding  # io_binding=False: refused
        self.runner = (_BoundRunner(self.session, tower["output"], "cuda" if on_gpu else "cpu", graphs=cuda_graphs,
                                    dim=dim)
                       if use_binding else _SessionRunner(self.session, tower["output"]))
        declared = {i.name for i in self.session.get_inputs()}
        if declared != set(self.inputs):
            raise GraphLoadError(
                f"{variant['file']} takes inputs {sorted(declared)} but the manifest says {sorted(self.inputs)}: "
                "the graph and the manifest do not belong together. Re-export the model with `st-export`."
            )

    def _configure_truncation(self, max_len: int | None) -> None:
        if max_len is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_length=int(max_len), strategy="longest_first",
                                             direction=self._truncation_side)
        self._max_seq_length = max_len

    def embed(self, items: list, batch_size: int | None, out: np.ndarray) -> None:
        batch_size = batch_size or self.auto_batch_size
        zero_types = self._single_types_zero and not any(isinstance(it, tuple) for it in items)
        chunk = self.pipeline_items(batch_size)
        # encode_batch_fast (tokenizers 0.20+) skips the character offsets, which batching never reads: 15-20%
        # less tokenizer time for the same ids
        encode = getattr(self.tokenizer, "encode_batch_fast", None) or self.tokenizer.encode_batch
        if chunk is None or len(items) <= chunk:
            self._embed_encoded(encode(items), batch_size, out, zero_types)
            return
        # GPU: tokenize the next chunk of texts (Rust, on all cores, without the GIL) while the GPU runs this
        # one's batches, so tokenization overlaps the device work instead of preceding it.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="st-tokenize") as pool:
            nxt = pool.submit(encode, items[:chunk])
            for start in range(0, len(items), chunk):
                encodings = nxt.result()
                if start + chunk < len(items):
                    nxt = pool.submit(encode, items[start + chunk:start + 2 * chunk])
                self._embed_encoded(encodings, batch_size, out[start:start + len(encodings)], zero_types)

    def pipeline_items(self, batch_size: int) -> int | None:
        """Texts per tokenization chunk (None: tokenize everything first). Chunks of several batches keep
        length sorting effective within each chunk."""
        if self.pipeline_chunk is None:
            return None
        return max(self.pipeline_chunk, 4 * batch_size)

    def _embed_encoded(self, encodings: list, batch_size: int, out: np.ndarray, zero_types: bool = False) -> None:
        """Embed tokenized items into ``out`` (same order), in length-sorted batches."""
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        batches = plan_batches(lengths[order], batch_size, self.pad_multiple, max_tokens=self.max_batch_tokens,
                               max_width=self._max_seq_length)
        if self.cuda_graphs:  # fewer distinct shapes, so fewer graphs to capture
            batches = [(s, e, graph_width(w, self._max_seq_length)) for s, e, w in batches]
        if len(batches) == 1:
            start, end, width = batches[0]
            out[order[start:end]] = self._run(self._feeds(encodings, lengths, order[start:end], width, zero_types))
            return
        # Build the next batch's arrays while onnxruntime (which releases the GIL) runs this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._feeds, encodings, lengths, order[batches[0][0]:batches[0][1]], batches[0][2],
                              zero_types)
            for k, (start, end, _width) in enumerate(batches):
                feeds = nxt.result()
                if k + 1 < len(batches):
                    s2, e2, w2 = batches[k + 1]
                    nxt = pool.submit(self._feeds, encodings, lengths, order[s2:e2], w2, zero_types)
                out[order[start:end]] = self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one batch; on device out-of-memory, run it in halves (and say so once)."""
        try:
            return self.runner(feeds)
        except Exception as exc:  # onnxruntime raises untyped errors; only OOM is handled here
            rows = next(iter(feeds.values())).shape[0]
            if not self.on_gpu or rows < 2 or not _is_out_of_memory(exc):
                raise
        if not self._oom_warned:
            self._oom_warned = True
            warnings.warn(f"{self.session.get_providers()[0]} ran out of memory on a batch of {rows} x "
                          f"{next(iter(feeds.values())).shape[1]} tokens; running such batches in halves. Pass a "
                          "smaller batch_size to avoid the retries.", RuntimeWarning, stacklevel=4)
        half = rows // 2
        return np.concatenate([self._run({k: v[:half] for k, v in feeds.items()}),
                               self._run({k: v[half:] for k, v in feeds.items()})])

    def _feeds(self, encodings, lengths: np.ndarray, idx: np.ndarray, width: int,
               zero_types: bool = False) -> dict[str, np.ndarray]:
        """The padded [rows, width] int64 arrays of the items ``idx``; built with one pass over their token ids
        (each row's tokens fill a prefix of it, so a boolean mask scatters the concatenation in place).
        ``zero_types``: the token type ids are known to be all zero (single texts), so not read back."""
        lens = lengths[idx]
        mask = np.arange(width) < lens[:, None]
        total = int(lens.sum())
        ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
        ids[mask] = np.fromiter(itertools.chain.from_iterable(encodings[i].ids for i in idx), dtype=np.int64,
                                count=total)
        feeds = {"input_ids": ids, "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in self.inputs:
            types = np.zeros((len(idx), width), dtype=np.int64)
            if not zero_types:
                types[mask] = np.fromiter(itertools.chain.from_iterable(encodings[i].type_ids for i in idx),
                                          dtype=np.int64, count=total)
            feeds["token_type_ids"] = types
        return {k: feeds[k] for k in self.inputs}


_OOM_MESSAGES = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation", "bfcarena")


def _is_out_of_memory(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(m in text for m in _OOM_MESSAGES)


def plan_batches(sorted_lengths: np.ndarray, batch_size: int, pad_multiple: int = 1,
                 split_ratio: float = 0.5, max_tokens: int | None = None,
                 max_width: int | None = None) -> list[tuple[int, int, int]]:
    """Split items sorted by decreasing token length into (start, end, padded width) batches.

    A batch holds at most ``batch_size`` items, and a new batch starts when the next item is shorter
    than ``split_ratio`` of the batch's width, so no batch spends most of its compute on padding
    (and int8 graphs, whose activation ranges are per batch, never mix a 3-token query with a
    256-token passage). Widths are rounded up to ``pad_multiple``, but not past ``max_width`` (the
    tokenizer's limit: a model's position table can end there, as CLIP's 77). ``max_tokens`` also caps
    items x padded width per batch (long texts run faster in smaller batches: their activations stay
    in cache).
    """
    out: list[tuple[int, int, int]] = []
    n = len(sorted_lengths)
    start = 0
    while start < n:
        width = max(int(sorted_lengths[start]), 1)
        floor = width * split_ratio
        padded = -(-width // pad_multiple) * pad_multiple
        if max_width is not None:
            padded = min(padded, max(width, max_width))
        end = start + 1
        limit = min(n, start + batch_size)
        if max_tokens is not None:
            limit = min(limit, start + max(1, max_tokens // padded))
        while end < limit and sorted_lengths[end] >= floor:
            end += 1
        out.append((start, end, padded))
        start = end
    return out


class _SessionRunner:
    """Runs a graph on host arrays; returns the output as float32 numpy."""

    def __init__(self, session: ort.InferenceSession, output: str):
        self.session = session
        self.output = output

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feeds)[0]


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class _Slot:
    """Device buffers of one batch shape, bound once: each batch is copied into them in place."""

    def __init__(self, session: ort.InferenceSession, inputs: dict[str, np.ndarray], output: str, out_shape,
                 out_dtype, device: str, device_id: int, graph_id: int | None):
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


class _CaptureGate:
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


_GPU_GATE = _CaptureGate()


class _BoundRunner(_SessionRunner):
    """IO binding through onnxruntime's own OrtValue API (no torch). Each batch shape gets device buffers
    once, and later batches of that shape are copied into them (length-sorted batching repeats shapes:
    full batches of each padded width); only the pooled output comes back to the host, the
    [batch, seq, hidden] states never leave the device. The MAX_SLOTS most recent shapes are kept.

    With ``graphs`` (CUDA graphs, onnxruntime's ``enable_cuda_graph``), rows are padded up to a power of two
    (and the tower rounds widths coarsely) so that few shapes recur, and each shape is captured once as its
    own graph (``gpu_graph_id``) and replayed after; up to MAX_GRAPHS shapes, beyond which batches run
    uncaptured. onnxruntime keeps CUDA graphs per calling thread, so graph-mode runs all go through one
    worker thread of the runner; a capture runs alone among st_runtime's GPU runs (_CaptureGate). A shape
    whose capture fails (a kernel that cannot be captured) warns once and runs uncaptured from then on.
    Buffers are shared, so runs of one runner are serialized (a GPU runs one batch at a time anyway).
    """

    MAX_SLOTS = 16  # uncaptured shapes whose buffers are kept (least recently used dropped)
    MAX_GRAPHS = 64  # captured graphs, each pinned with its buffers for the session's lifetime

    def __init__(self, session: ort.InferenceSession, output: str, device: str, device_id: int = 0,
                 graphs: bool = False, dim: int | None = None):
        super().__init__(session, output)
        self.device = device
        self.device_id = device_id
        self.graphs = graphs
        out = next((o for o in session.get_outputs() if o.name == output), None)
        if out is None:
            raise GraphLoadError(f"the graph has no output {output!r} (it has "
                                 f"{[o.name for o in session.get_outputs()]}): the graph and the manifest do not "
                                 "belong together. Re-export the model with `st-export`.")
        self.out_dtype = _ORT_TYPES.get(out.type, np.float32)
        self.dim = dim if dim is not None else out.shape[-1]
        if graphs and not isinstance(self.dim, int):
            raise GraphLoadError(f"CUDA graphs need the output width of {output!r}, which the graph leaves "
                                 f"symbolic ({out.shape}) and the manifest does not give.")
        self.slots: OrderedDict[tuple, _Slot] = OrderedDict()  # captured ones are never dropped
        self.graphs_taken = 0
        self.uncaptured = 0  # graph-mode slots made uncaptured: past MAX_GRAPHS, or their capture failed
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="st-cuda-graphs") if graphs else None
        self._warned = False
        # the CPU provider captures nothing and needs no gate
        self._gate = _GPU_GATE.run if device != "cpu" else (lambda fn, capture=False: fn())

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
                if _is_out_of_memory(exc):
                    raise
                self._capture_failed(slot, exc)
                result = self._gate(run)  # a genuine error raises here again
            slot.captured = True
            return result[:rows]

    def _run(self, slot: _Slot, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, array in feeds.items():
            slot.inputs[name].update_inplace(np.ascontiguousarray(array))
        slot.binding.synchronize_inputs()
        self.session.run_with_iobinding(slot.binding, slot.run_options)
        return slot.binding.copy_outputs_to_cpu()[0]

    def _capture_failed(self, slot: _Slot, exc: Exception) -> None:
        self.uncaptured += 1
        slot.uncapture()
        if not self._warned:
            self._warned = True
            warnings.warn(f"onnxruntime could not capture a CUDA graph for a batch of shape "
                          f"{next(iter(slot.inputs.values())).shape()} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}); such batches run without CUDA graphs (same results, "
                          "more launch overhead). Pass cuda_graphs=False to skip the attempts.",
                          RuntimeWarning, stacklevel=6)

    def _new_slot(self, key: tuple, feeds: dict[str, np.ndarray]) -> _Slot:
        rows = next(iter(feeds.values())).shape[0]
        if self.graphs and self.graphs_taken < self.MAX_GRAPHS:
            self.graphs_taken += 1
            graph_id = self.graphs_taken
        else:  # kept among the MAX_SLOTS most recent uncaptured shapes
            uncaptured = [k for k, v in self.slots.items() if v.graph_id is None or v.graph_id < 0]
            if len(uncaptured) >= self.MAX_SLOTS:
                del self.slots[uncaptured[0]]
            graph_id = -1 if self.graphs else None  # -1: no graph id left, this shape runs uncaptured
            self.uncaptured += self.graphs
        # a graph-enabled session binds preallocated outputs only (replays write to fixed addresses)
        out_shape = (rows, self.dim) if self.graphs else None
        slot = _Slot(self.session, feeds, self.output, out_shape, self.out_dtype, self.device, self.device_id,
                     graph_id)
        self.slots[key] = slot
        return slot


def graph_width(width: int, limit: int | None) -> int:
    """Padded width of a batch under CUDA graphs: a multiple of 8 below 128 tokens (as without graphs), then
    of an eighth of the power of two below the width (padding at most an eighth of the width), so a few
    dozen widths cover any length; never past ``limit`` (the longest the tokenizer emits: position tables
    can end there, as CLIP's 77)."""
    step = max(8, 1 << max(0, width.bit_length() - 4))
    padded = -(-width // step) * step
    return padded if limit is None else min(padded, max(width, limit))


def _warn_if_int8_kernels_differ(vspec: dict[str, Any], path: Path) -> None:
    """int8 graphs are validated on the export machine. One validated where the CPU has an int8 dot product
    (VNNI/AMX) may lose accuracy where it has not: onnxruntime's AVX2 int8 kernels sum pairs of products in
    16 bits, which can saturate. Say so rather than let the manifest's accuracy stand unqualified."""
    exported_with = (vspec.get("build") or {}).get("cpu_int8_dot_product")
    if vspec.get("precision") != "int8" or not exported_with:
        return
    here = cpu_int8_dot_product()
    if here is False:
        warnings.warn(f"The int8 graph of {path} was validated on a CPU with an int8 dot-product instruction "
                      "(VNNI); this CPU has none, so onnxruntime uses kernels that can saturate and the accuracy "
                      "recorded in manifest.json may not hold here. Run `st-export` on this machine to validate "
                      "int8 here, or use the default (exact) variant.", RuntimeWarning, stacklevel=3)


def _with_cuda_graphs(providers: list) -> list:
    """The provider list with onnxruntime's CUDA-graph option set on its (first) CUDA provider."""
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if first != "CUDAExecutionProvider":
        raise ValueError(f"cuda_graphs=True needs the CUDA execution provider first (providers='cuda'), but this "
                         f"encoder runs on {first}. Pass providers='cuda', or leave cuda_graphs off.")
    options = dict(providers[0][1]) if isinstance(providers[0], tuple) else {}
    options["enable_cuda_graph"] = "1"
    return [("CUDAExecutionProvider", options), *providers[1:]]


def _make_session(path: Path, providers, fallback_allowed: bool, threads: int,
                  session_options: ort.SessionOptions | None, cuda_graphs: bool = False) -> ort.InferenceSession:
    so = session_options or ort.SessionOptions()
    if session_options is None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cuda_graphs:
        providers = _with_cuda_graphs(providers)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors; re-raise with a fix
        if cuda_graphs and re.search(r"cannot use the (graph capture|cuda graph) feature", str(exc), re.I):
            raise GraphLoadError(f"onnxruntime cannot capture {path.name} as a CUDA graph: {exc}. Run it "
                                 "without cuda_graphs=True (CUDA graphs need every node on the CUDA provider).") from exc
        raise graph_load_error(path, exc, ort.__version__) from exc
    check_session_providers(session, providers, fallback_allowed, path.name)
    return session


class SentenceEncoder:
    """Drop-in replacement for ``sentence_transformers.SentenceTransformer`` at inference time.

    Args:
        model_path: a folder written by ``st-export``.
        providers: ``None`` (CPU), ``"cpu"``, ``"cuda"``, ``"tensorrt"``, an onnxruntime provider name, or an
            explicit list; a list of several providers is an opt-in to fall back (with a warning).
        threads: onnxruntime intra-op threads; default: the physical cores of this machine.
        variant: which exported graph to run: "fp32", "opt", "int8", "fp16", or "fastest" (the fastest
            that passed its own gate for the provider, int8 on CPU). Default: the fastest variant that
            reproduces sentence-transformers' fp32 embeddings (cosine >= 0.99999) for the provider.
        verify_checksums: check the sha256 of every file at load (sizes are always checked).
        session_options: an ``onnxruntime.SessionOptions`` to use as is (threads is then ignored).
        io_binding: feed the graph through onnxruntime IO binding (default: on for CUDA/TensorRT).
        cuda_graphs: capture each batch shape as a CUDA graph and replay it (CUDA provider only; rows are
            padded up to a power of two so shapes recur; at most 64 graphs). Saves kernel-launch time on
            small batches; costs a capture per new shape and device memory per graph.
    """

    def __init__(self, model_path: str | os.PathLike, providers=None, threads: int | None = None,
                 variant: str | None = None, verify_checksums: bool = True,
                 session_options: ort.SessionOptions | None = None, io_binding: bool | None = None,
                 cuda_graphs: bool = False):
        self.path = Path(model_path)
        self.manifest = load_manifest(self.path)
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads or physical_cores()
        self.providers, fallback_allowed = resolve_providers(providers)
        if not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        if cuda_graphs:
            _with_cuda_graphs(self.providers)  # the provider check, before any loading
            if io_binding is False:
                raise ValueError("cuda_graphs=True needs IO binding (CUDA graphs replay fixed device buffers); "
                                 "leave io_binding at its default.")
        towers = self.manifest["towers"]
        if "text" not in towers:
            raise GraphLoadError(f"{self.path} has towers {sorted(towers)} but no text tower; this st-runtime "
                                 "cannot embed with it. Upgrade st-runtime.")
        text = towers["text"]
        self.variant, vspec = self._choose_variant(text, variant)
        _warn_if_int8_kernels_differ(vspec, self.path)
        files = [*graph_files(self.path, self.manifest, vspec), text["tokenizer"]["file"]]
        verify_files(self.path, self.manifest, files, checksums=verify_checksums)
        self._text = _TextTower(self.path, text, vspec, self.providers, fallback_allowed, self.threads,
                                session_options, io_binding, cuda_graphs, int(self.manifest["embedding"]["dimension"]))
        self._cutter = LongTextCutter(self._text.tokenizer)
        # Other towers (CLIP's image tower) load on first use, so text-only users never load their graphs.
        self._lazy_towers: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {}
        for tname, tower in towers.items():
            if tname != "text":
                self._lazy_towers[tname] = (tower, *self._choose_variant(tower, variant))
        self._loaded_towers: dict[str, Any] = {}
        self._tower_lock = threading.Lock()
        self._session_args = (fallback_allowed, session_options, verify_checksums)
        emb = self.manifest["embedding"]
        self._dim = int(emb["dimension"])
        self.prompts: dict[str, str] = dict(self.manifest.get("prompts") or {})
        self.default_prompt_name: str | None = self.manifest.get("default_prompt_name")
        self.similarity_fn_name: str = emb.get("similarity_fn_name") or "cosine"
        self.truncate_dim: int | None = None

    # ------------------------------------------------------------------ variants
    def _choose_variant(self, tower: dict[str, Any], requested: str | None) -> tuple[str, dict[str, Any]]:
        """Default: the fastest variant within fp32 accuracy that passed its gate for the provider.
        "fastest": the fastest that passed its gate (int8 on CPU, fp16 on CUDA). A name: that variant."""
        variants = tower["variants"]
        provider = self.providers[0][0] if isinstance(self.providers[0], tuple) else self.providers[0]
        passed = sorted(v for v, s in variants.items() if s["status"] == "passed")
        if requested is not None and requested != "fastest":
            if requested not in variants:
                rejected = (self.manifest.get("export") or {}).get("rejected_variants") or {}
                if requested in rejected:
                    entry = rejected[requested]
                    if entry.get("error"):
                        raise VariantError(f"variant {requested!r} could not be built at export ({entry['error']}), "
                                           f"so it was not written. Passing variants: {passed}.")
                    summary = (entry.get("validation") or {}).get("summary", "")
                    raise VariantError(f"variant {requested!r} was built but missed its accuracy gate at export "
                                       f"({summary}), so it was not written. Passing variants: {passed}.")
                raise VariantError(f"variant {requested!r} is not in {self.path}; it has {sorted(variants)}. "
                                   "Re-export with `st-export --variants ...` to produce it, or pick one of those.")
            spec = variants[requested]
            if spec["status"] == "failed":
                raise VariantError(f"variant {requested!r} in {self.path} failed its accuracy gate at export "
                                   f"({spec.get('validation', {}).get('summary', 'see manifest.json')}); it is "
                                   f"not safe to use. Passing variants: {passed}.")
            return requested, spec
        eligible = {name: s for name, s in variants.items()
                    if s["status"] == "passed" and provider in s["providers"]
                    and (requested == "fastest" or s.get("exact", True))}
        # On the CPU, st-export timed the variants: prefer the measured order to the static rank.
        timed = provider == "CPUExecutionProvider" and all("cpu_timing" in s for s in eligible.values())
        candidates = [((s["cpu_timing"]["median_s"] if timed else 0.0), s["rank"], name)
                      for name, s in eligible.items()]
        if not candidates:
            raise VariantError(f"{self.path} has no variant that passed its accuracy gate for {provider} "
                               f"(variants: { {n: (s['status'], s['providers']) for n, s in variants.items()} }). "
                               "Re-export the model with `st-export`, or choose another provider.")
        name = min(candidates)[-1]
        return name, variants[name]

    def _tower(self, name: str):
        """A non-text tower (CLIP's "image"), loaded on first use (once, also under concurrent calls)."""
        with self._tower_lock:
            if name not in self._loaded_towers:
                tower, _vname, vspec = self._lazy_towers[name]
                if tower["modality"] != "image":
                    raise GraphLoadError(f"tower {name!r} has modality {tower['modality']!r}, which this "
                                         "st-runtime cannot run. Upgrade st-runtime.")
                fallback_allowed, session_options, verify_checksums = self._session_args
                verify_files(self.path, self.manifest, graph_files(self.path, self.manifest, vspec),
                             checksums=verify_checksums)
                session = _make_session(self.path / vspec["file"], self.providers, fallback_allowed, self.threads,
                                        session_options)
                declared = [i.name for i in session.get_inputs()]
                if declared != list(tower["inputs"]):
                    raise GraphLoadError(f"{vspec['file']} takes inputs {declared} but the manifest says "
                                         f"{tower['inputs']}. Re-export the model with `st-export`.")
                from .image import ImageTower

                self._loaded_towers[name] = ImageTower(tower, session)
            return self._loaded_towers[name]

    @property
    def modalities(self) -> list[str]:
        """The input modalities this model embeds ("text", and "image" for CLIP)."""
        return sorted({t["modality"] for t in self.manifest["towers"].values()})

    def _embed_mixed(self, items: list, kinds: list[str], batch_size: int | None, out: np.ndarray) -> None:
        """Text items through the text tower, images through the image tower, results in input order."""
        for kind in ("text", "image"):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if not idx:
                continue
            if kind == "image" and "image" not in self._lazy_towers:
                raise UnsupportedInputError(f"{self.path} embeds text only; input {idx[0]} is an image.")
            part = np.empty((len(idx), out.shape[1]), dtype=np.float32)
            tower = self._text if kind == "text" else self._tower("image")
            tower.embed([items[i] for i in idx], batch_size, part)
            out[idx] = part

    # ------------------------------------------------------------------ properties
    @property
    def max_seq_length(self) -> int | None:
        return self._text._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        exported = self.manifest["towers"]["text"]["tokenizer"].get("max_seq_length")
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"max_seq_length must be a positive integer, got {value!r}")
        if exported is not None and (value is None or value > exported):
            raise ValueError(f"max_seq_length can only be lowered: the model was exported (and validated) "
                             f"with {exported}, got {value!r}.")
        self._text._configure_truncation(value)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._text.tokenizer

    def get_sentence_embedding_dimension(self) -> int:
        return self.truncate_dim or self._dim

    get_embedding_dimension = get_sentence_embedding_dimension

    def __repr__(self) -> str:
        return (f"SentenceEncoder({str(self.path)!r}, variant={self.variant!r}, "
                f"providers={[p[0] if isinstance(p, tuple) else p for p in self.providers]}, dim={self._dim})")

    # ------------------------------------------------------------------ encoding
    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {_describe(prompt)}")
            if prompt_name is not None:
                logger.warning("Provide either a `prompt`, a `prompt_name`, or neither, but not both. "
                               "Ignoring the `prompt_name` in favor of `prompt`.")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"Prompt name {prompt_name!r} not found in the configured prompts; valid "
                                 f"choices: {sorted(self.prompts)}.")
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    @staticmethod
    def _collect(sentences: Any) -> tuple[list, bool]:
        """Validate inputs before any work: a list of str or (str, str) pairs, and whether it was singular."""
        if isinstance(sentences, str):
            return [sentences], True
        if sentences is None or isinstance(sentences, (bytes, bytearray, dict, int, float, complex, bool)):
            raise UnsupportedInputError(
                f"encode expects a string or a list of strings, got {_describe(sentences)}.")
        if isinstance(sentences, np.ndarray):
            if sentences.ndim == 0:
                return SentenceEncoder._collect(sentences.item())
            items = sentences.tolist()
        elif isinstance(sentences, (list, tuple)):
            items = list(sentences)
        elif isinstance(sentences, Iterable):
            items = list(sentences)
        else:
            raise UnsupportedInputError(
                f"encode expects a string or a list of strings, got {_describe(sentences)}.")
        for i, item in enumerate(items):
            if isinstance(item, str):
                continue
            if (isinstance(item, (list, tuple)) and len(item) == 2
                    and all(isinstance(x, str) for x in item)):
                items[i] = (item[0], item[1])
                continue
            raise UnsupportedInputError(
                f"input {i} is a {_describe(item)} ({item!r:.60}); each input must be a string or a pair "
                "[text, text_pair] of strings.")
        return items, False

    def encode(self, sentences, batch_size: int | None = None, normalize_embeddings: bool = False,
               show_progress_bar: bool | None = None, prompt_name: str | None = None, prompt: str | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, precision: str = "float32",
               truncate_dim: int | None = None, output_value: str = "sentence_embedding", **kwargs):
        """Embed sentences, as ``SentenceTransformer.encode`` does.

        A single string gives a 1-D float32 array; a list gives an array [len, dim] in input order
        (``convert_to_numpy=False``: a list of 1-D arrays). ``convert_to_tensor`` returns the same
        numpy array (there is no torch here). ``show_progress_bar`` is accepted for compatibility and
        draws nothing. ``batch_size`` caps the texts per batch; left at None, st_runtime sizes batches
        itself (on the CPU by a budget of tokens per batch, which suits short queries and long passages
        alike). Exact variants give the same results for any batch size up to float rounding; int8
        quantizes activations per batch, so its output moves slightly (within its gate) with batch company.
        """
        if kwargs:
            raise TypeError(f"encode() got unexpected keyword arguments {sorted(kwargs)}")
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size <= 0):
            raise ValueError(f"batch_size must be a positive integer or None (automatic), got {batch_size!r}.")
        if output_value != "sentence_embedding":
            raise ValueError(f"output_value {output_value!r} is not available: the exported graph returns only "
                             "'sentence_embedding'.")
        if precision != "float32":
            raise ValueError(f"precision {precision!r} is not supported; valid choices: ['float32'].")
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or not 0 < truncate_dim <= self._dim):
            raise ValueError(f"truncate_dim must be an integer in 1..{self._dim}, got {truncate_dim!r}.")
        kinds = None
        if self._lazy_towers:  # a model with an image tower: inputs may be images (hook: st_runtime.image)
            from .image import classify

            items, kinds, singular = classify(sentences)
        else:
            items, singular = self._collect(sentences)
        if not self.manifest["towers"]["text"]["tokenizer"].get("pairs", True):
            pair = next((i for i, it in enumerate(items) if isinstance(it, tuple)), None)
            if pair is not None:
                family = self.manifest.get("architecture", {}).get("family", "?")
                raise UnsupportedInputError(
                    f"input {pair} is a [text, text_pair] pair, but this model ({family}) embeds single texts: "
                    "sentence-transformers does not accept pairs for it either, so pairs were not validated at "
                    "export. Pass single strings.")
        prompt_text = self._resolve_prompt(prompt, prompt_name)
        if prompt_text:  # prompts apply to text only, as in sentence-transformers
            items = [it if kinds is not None and kinds[i] != "text" else
                     prompt_text + it if isinstance(it, str) else (prompt_text + it[0], it[1])
                     for i, it in enumerate(items)]
        items = prepare(items, self._cutter, kinds)
        out = np.empty((len(items), self._dim), dtype=np.float32)
        if items and kinds is not None:
            self._embed_mixed(items, kinds, batch_size, out)
        elif items:
            self._text.embed(items, batch_size, out)
        if truncate_dim is not None:
            out = np.ascontiguousarray(out[:, :truncate_dim])
        if normalize_embeddings:
            out = util.normalize_embeddings(out).astype(np.float32, copy=False)
        if singular:
            return out[0]
        if not convert_to_numpy and not convert_to_tensor:
            return list(out)
        return out

    def encode_query(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with the model's "query" prompt, when it has one (sentence-transformers 5+ semantics)."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with the model's "document", "passage" or "corpus" prompt, the first it has."""
        if prompt_name is None and prompt is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def similarity(self, embeddings1, embeddings2) -> np.ndarray:
        """All-pairs similarity with the model's similarity function (cosine unless the model says otherwise)."""
        return util.SIMILARITY_FUNCTIONS[self.similarity_fn_name](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2) -> np.ndarray:
        a, b = np.atleast_2d(embeddings1), np.atleast_2d(embeddings2)
        if self.similarity_fn_name == "cosine":
            return util.pairwise_cos_sim(a, b)
        if self.similarity_fn_name == "dot":
            return util.pairwise_dot_score(a, b)
        return np.array([self.similarity(x, y)[0, 0] for x, y in zip(a, b)], dtype=np.float32)


# One-line switch from sentence-transformers: `from st_runtime import SentenceTransformer`.
SentenceTransformer = SentenceEncoder
