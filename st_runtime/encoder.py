"""SentenceEncoder: runs an st-export folder with onnxruntime and tokenizers only (the public embedding model;
towers, batching, runners and sessions live in their own modules)."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import util
from .errors import GraphLoadError, UnsupportedInputError
from .inputs import LongTextCutter, classify, prepare
from .manifest import check_task, graph_files, load_manifest, verify_files
from .providers import device_name, device_providers, resolve_providers, resolve_threads
from .session import make_session, with_cuda_graphs
from .text import TextTower
from .variants import choose_variant, describe_value, length_routing, warn_if_int8_kernels_differ

logger = logging.getLogger(__name__)


def progress_bar(show: bool | None, total: int):
    """A tqdm bar over ``total`` texts, or None. ``show=None``: when the st_runtime logger is at INFO or DEBUG
    (sentence-transformers' rule for its own logger)."""
    if show is None:
        show = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    if not show or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(
            "show_progress_bar=True needs tqdm, which is not installed (pip install tqdm); encoding without a bar",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return tqdm(total=total, desc="Encoding", unit="texts")


# encode's precisions, as sentence-transformers' quantize_embeddings gives them
QUANTIZED = ("float32", "int8", "uint8", "binary", "ubinary")


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
        device: sentence-transformers' form of ``providers``: "cpu", "cuda" or "cuda:N" (then give no providers).
        cuda_graphs: capture each batch shape as a CUDA graph and replay it (CUDA provider only; rows are
            padded up to a power of two so shapes recur; at most 64 graphs). Saves kernel-launch time on
            small batches; costs a capture per new shape and device memory per graph.
    """

    _TASK = "embedding"  # the manifest task this class runs
    _OUTPUT = "embedding"  # the manifest key describing its output

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers=None,
        threads: int | None = None,
        variant: str | None = None,
        verify_checksums: bool = True,
        session_options: ort.SessionOptions | None = None,
        io_binding: bool | None = None,
        cuda_graphs: bool = False,
        device: str | None = None,
    ):
        if device is not None:
            if providers is not None:
                raise ValueError("pass either device (sentence-transformers' 'cpu', 'cuda:1') or providers, not both")
            providers = device_providers(device)
        self.path = Path(model_path)
        self.manifest = load_manifest(self.path)
        check_task(self.path, self.manifest, self._TASK)
        self.threads = resolve_threads(threads)
        self.providers, fallback_allowed = resolve_providers(providers)
        if not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        if cuda_graphs:
            with_cuda_graphs(self.providers)  # the provider check, before any loading
            if io_binding is False:
                raise ValueError(
                    "cuda_graphs=True needs IO binding (CUDA graphs replay fixed device buffers); "
                    "leave io_binding at its default."
                )
        towers = self.manifest["towers"]
        if "text" not in towers:
            raise GraphLoadError(
                f"{self.path} has towers {sorted(towers)} but no text tower; this st-runtime "
                "cannot embed with it. Upgrade st-runtime."
            )
        text = towers["text"]
        self.variant, vspec = self._choose_variant(text, variant)
        # the default on the CPU may run long texts on another exact graph that st-export measured faster there
        routing = length_routing(text, variant, self.providers)
        self.long_text_variant: str | None = None
        long_spec, long_from = None, None
        if routing is not None:
            self.variant, vspec, self.long_text_variant, long_spec, long_from = routing
        warn_if_int8_kernels_differ(vspec, self.path)
        files = [*graph_files(self.path, self.manifest, vspec), text["tokenizer"]["file"]]
        if long_spec is not None:
            files += graph_files(self.path, self.manifest, long_spec)
        verify_files(self.path, self.manifest, files, checksums=verify_checksums)
        self.text_tower = TextTower(
            self.path,
            text,
            vspec,
            self.providers,
            fallback_allowed,
            self.threads,
            session_options,
            io_binding,
            cuda_graphs,
            int(self.manifest[self._OUTPUT]["dimension"]),
            long_variant=long_spec,
            long_from=long_from,
        )
        self._max_seq_length: int | None = self.text_tower.max_seq_length
        self._cutter = LongTextCutter(self.text_tower.tokenizer, self.text_tower.add_special_tokens)
        # Other towers (CLIP's image tower) load on first use, so text-only users never load their graphs.
        self._lazy_towers: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {}
        for tname, tower in towers.items():
            if tname != "text":
                self._lazy_towers[tname] = (tower, *self._choose_variant(tower, variant))
        self._loaded_towers: dict[str, Any] = {}
        self._tower_lock = threading.Lock()
        self._session_args = (fallback_allowed, session_options, verify_checksums)
        emb = self.manifest[self._OUTPUT]
        self._dim = int(emb["dimension"])
        self.prompts: dict[str, str] = dict(self.manifest.get("prompts") or {})
        self.default_prompt_name: str | None = self.manifest.get("default_prompt_name")
        self.similarity_fn_name: str = emb.get("similarity_fn_name") or "cosine"
        self.truncate_dim: int | None = None

    # ------------------------------------------------------------------ variants
    def _choose_variant(self, tower: dict[str, Any], requested: str | None) -> tuple[str, dict[str, Any]]:
        return choose_variant(self.path, self.manifest, tower, requested, self.providers)

    def _tower(self, name: str):
        """A non-text tower (CLIP's "image"), loaded on first use (once, also under concurrent calls)."""
        with self._tower_lock:
            if name not in self._loaded_towers:
                tower, _vname, vspec = self._lazy_towers[name]
                if tower["modality"] != "image":
                    raise GraphLoadError(
                        f"tower {name!r} has modality {tower['modality']!r}, which this "
                        "st-runtime cannot run. Upgrade st-runtime."
                    )
                fallback_allowed, session_options, verify_checksums = self._session_args
                verify_files(
                    self.path, self.manifest, graph_files(self.path, self.manifest, vspec), checksums=verify_checksums
                )
                session = make_session(
                    self.path / vspec["file"], self.providers, fallback_allowed, self.threads, session_options
                )
                declared = [i.name for i in session.get_inputs()]
                if declared != list(tower["inputs"]):
                    raise GraphLoadError(
                        f"{vspec['file']} takes inputs {declared} but the manifest says "
                        f"{tower['inputs']}. Re-export the model with `st-export`."
                    )
                from .image import ImageTower

                self._loaded_towers[name] = ImageTower(tower, session)
            return self._loaded_towers[name]

    @property
    def modalities(self) -> list[str]:
        """The input modalities this model embeds ("text", and "image" for CLIP)."""
        return sorted({t["modality"] for t in self.manifest["towers"].values()})

    def _embed_mixed(
        self,
        items: list,
        kinds: list[str],
        batch_size: int | None,
        out: np.ndarray,
        max_length: int | None,
        progress=None,
    ) -> None:
        """Text items through the text tower, images through the image tower, results in input order."""
        for kind in ("text", "image"):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if not idx:
                continue
            if kind == "image" and "image" not in self._lazy_towers:
                raise UnsupportedInputError(f"{self.path} embeds text only; input {idx[0]} is an image.")
            part = np.empty((len(idx), out.shape[1]), dtype=np.float32)
            if kind == "text":
                self.text_tower.embed([items[i] for i in idx], batch_size, part, max_length, progress)
            else:
                self._tower("image").embed([items[i] for i in idx], batch_size, part)
                if progress is not None:
                    progress(len(idx))
            out[idx] = part

    # ------------------------------------------------------------------ properties
    @property
    def max_seq_length(self) -> int | None:
        """Tokens kept per text. It can be lowered (not raised past the exported limit); calls already
        running keep the value they started with, and ``encode(max_seq_length=...)`` sets it per call."""
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self._max_seq_length = self._check_max_seq_length(value)

    def _check_max_seq_length(self, value: int | None) -> int | None:
        exported = self.text_tower.max_seq_length
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"max_seq_length must be a positive integer, got {value!r}")
        if exported is not None and (value is None or value > exported):
            raise ValueError(
                f"max_seq_length can only be lowered: the model was exported (and validated) "
                f"with {exported}, got {value!r}."
            )
        return value

    @property
    def tokenizer(self) -> Tokenizer:
        return self.text_tower.tokenizer

    @property
    def device(self) -> str:
        """Where the graphs run, as sentence-transformers names it: "cpu" or "cuda:N"."""
        return device_name(self.providers[0])

    def tokenize(self, texts) -> dict[str, np.ndarray]:
        """The text tower's inputs for ``texts`` (strings or [text, text_pair] pairs), as
        ``SentenceTransformer.tokenize`` gives them but in numpy: int64 arrays padded to the longest, truncated
        at max_seq_length, one per graph input (input_ids, attention_mask, and token_type_ids where the model
        takes them)."""
        items, _kinds, _ = classify(texts)
        items = prepare(items, self._cutter)
        encodings = self.text_tower.tokenize(items)
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
        width = int(lengths.max()) if len(lengths) else 0
        return self.text_tower.feeds(encodings, lengths, np.arange(len(encodings)), width)

    def get_sentence_embedding_dimension(self) -> int:
        return self.truncate_dim or self._dim

    get_embedding_dimension = get_sentence_embedding_dimension

    def __repr__(self) -> str:
        routed = (
            f"long_text_variant={self.long_text_variant!r} (from {self.text_tower.policy.long_from} tokens), "
            if self.long_text_variant
            else ""
        )
        return (
            f"SentenceEncoder({str(self.path)!r}, variant={self.variant!r}, {routed}"
            f"providers={[p[0] if isinstance(p, tuple) else p for p in self.providers]}, dim={self._dim})"
        )

    # ------------------------------------------------------------------ encoding
    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {describe_value(prompt)}")
            if prompt_name is not None:
                logger.warning(
                    "Provide either a `prompt`, a `prompt_name`, or neither, but not both. "
                    "Ignoring the `prompt_name` in favor of `prompt`."
                )
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"Prompt name {prompt_name!r} not found in the configured prompts; valid "
                    f"choices: {sorted(self.prompts)}."
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    def _check_device(self, device: str | None) -> None:
        """encode(device=...) may only name the device this model already runs on."""
        if device is not None and device_name(device_providers(device)) != self.device:
            raise ValueError(
                f"this model runs on {self.device}; encode(device={device!r}) would need another session. Load "
                f"another {type(self).__name__}(..., device={device!r}) for that device."
            )

    def encode(
        self,
        sentences,
        batch_size: int | None = None,
        normalize_embeddings: bool = False,
        show_progress_bar: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        precision: str = "float32",
        ranges: np.ndarray | None = None,
        calibration_embeddings: np.ndarray | None = None,
        truncate_dim: int | None = None,
        output_value: str = "sentence_embedding",
        max_seq_length: int | None = None,
        device: str | None = None,
        **kwargs,
    ):
        """Embed sentences, as ``SentenceTransformer.encode`` does.

        A single string gives a 1-D float32 array; a list gives an array [len, dim] in input order
        (``convert_to_numpy=False``: a list of 1-D arrays). ``convert_to_tensor`` returns the same
        numpy array (there is no torch here). ``show_progress_bar`` draws a tqdm bar over the texts (by default
        when the "st_runtime" logger is at INFO or DEBUG, as sentence-transformers decides with its logger;
        tqdm must be installed, else a warning says so). ``batch_size`` caps the texts per batch; left at None,
        st_runtime sizes batches itself (on the CPU by a budget of tokens per batch, which suits short queries
        and long passages alike). Exact variants give the same results for any batch size up to float rounding; int8
        quantizes activations per batch, so its output moves slightly (within its gate) with batch company.
        ``precision`` "int8", "uint8", "binary" or "ubinary" quantizes as sentence-transformers'
        ``quantize_embeddings`` does: int8/uint8 map each dimension's range onto 256 steps, the ranges taken from
        this call's embeddings unless ``ranges`` ([2, dim]: minima, maxima) or ``calibration_embeddings`` are
        given (both st_runtime extensions; pass them to quantize consistently across calls).
        ``output_value="token_embeddings"`` gives each text's token embeddings [tokens, hidden] (the transformer's
        output that Pooling reads), without padding as sentence-transformers trims it; ``output_value=None`` gives
        per text a dict of its inputs, token embeddings and sentence embedding (unpadded, where sentence-transformers
        leaves them padded to its batch's longest text). Both need an export made by this st-export.
        ``max_seq_length`` (an st_runtime extension) truncates this call's texts at fewer tokens than the
        encoder's ``max_seq_length``, without changing it for other calls or threads.
        """
        if kwargs:
            raise TypeError(f"encode() got unexpected keyword arguments {sorted(kwargs)}")
        self._check_device(device)
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0
        ):
            raise ValueError(f"batch_size must be a positive integer or None (automatic), got {batch_size!r}.")
        if output_value not in ("sentence_embedding", "token_embeddings", None):
            raise ValueError(
                f"output_value {output_value!r} is not supported; choose 'sentence_embedding', 'token_embeddings' "
                "or None."
            )
        if precision not in QUANTIZED:
            raise ValueError(f"precision {precision!r} is not supported; valid choices: {list(QUANTIZED)}.")
        max_length = self._max_seq_length if max_seq_length is None else self._check_max_seq_length(max_seq_length)
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or not 0 < truncate_dim <= self._dim):
            raise ValueError(f"truncate_dim must be an integer in 1..{self._dim}, got {truncate_dim!r}.")
        # a model with an image tower takes images too; kinds None: every item is text
        items, kinds, singular = classify(sentences, images=bool(self._lazy_towers))
        if not self._lazy_towers:
            kinds = None
        if not self.manifest["towers"]["text"]["tokenizer"].get("pairs", True):
            pair = next((i for i, it in enumerate(items) if isinstance(it, tuple)), None)
            if pair is not None:
                family = self.manifest.get("architecture", {}).get("family", "?")
                raise UnsupportedInputError(
                    f"input {pair} is a [text, text_pair] pair, but this model ({family}) embeds single texts: "
                    "sentence-transformers does not accept pairs for it either, so pairs were not validated at "
                    "export. Pass single strings."
                )
        prompt_text = self._resolve_prompt(prompt, prompt_name)
        if prompt_text:  # prompts apply to text only, as in sentence-transformers
            items = [
                it
                if kinds is not None and kinds[i] != "text"
                else prompt_text + it
                if isinstance(it, str)
                else (prompt_text + it[0], it[1])
                for i, it in enumerate(items)
            ]
        items = prepare(items, self._cutter, kinds)
        if output_value != "sentence_embedding":
            outputs = self._token_outputs(items, kinds, batch_size, max_length, output_value, precision, truncate_dim)
            return outputs[0] if singular else outputs
        out = np.empty((len(items), self._dim), dtype=np.float32)
        bar = progress_bar(show_progress_bar, len(items))
        try:
            progress = bar.update if bar is not None else None
            if items and kinds is not None:
                self._embed_mixed(items, kinds, batch_size, out, max_length, progress)
            elif items:
                self.text_tower.embed(items, batch_size, out, max_length, progress)
        finally:
            if bar is not None:
                bar.close()
        if truncate_dim is not None:
            out = np.ascontiguousarray(out[:, :truncate_dim])
        if normalize_embeddings:
            out = util.normalize_embeddings(out).astype(np.float32, copy=False)
        if precision != "float32":  # as sentence-transformers' quantize_embeddings, ranges from this call's rows
            if ranges is None and precision in ("int8", "uint8"):
                ranges = util.calibration_ranges(out if calibration_embeddings is None else calibration_embeddings)
            out = util.quantize_embeddings(out, precision, ranges)
        if singular:
            return out[0]
        if not convert_to_numpy and not convert_to_tensor:
            return list(out)
        return out

    def _token_outputs(self, items, kinds, batch_size, max_length, output_value, precision, truncate_dim) -> list:
        """encode(output_value="token_embeddings"): each text's token embeddings [tokens, hidden] without padding;
        output_value=None: per text a dict of its inputs, token embeddings and sentence embedding (without padding,
        where sentence-transformers pads to the longest text of its batch)."""
        if kinds is not None and any(k != "text" for k in kinds):
            raise UnsupportedInputError(f"output_value={output_value!r} takes text only; images have no tokens")
        if precision != "float32":
            raise ValueError(
                f"precision={precision!r} applies to sentence embeddings, not to output_value={output_value!r}"
            )
        outputs = self.text_tower.embed_tokens(items, batch_size, max_length) if items else []
        if output_value == "token_embeddings":
            outputs = [o["token_embeddings"] for o in outputs]
        elif truncate_dim is not None:  # as sentence-transformers: the sentence embedding is cut, not normalized
            for o in outputs:
                o["sentence_embedding"] = o["sentence_embedding"][:truncate_dim]
        return outputs

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
