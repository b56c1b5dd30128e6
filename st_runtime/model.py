"""The base of every public model class: loading an exported folder, and the in-process driver of the kind
protocol (``run``). SentenceEncoder, CrossEncoder, SparseEncoder (and any registered kind's class) subclass
:class:`Model` and add only their own API; they all take the same load arguments."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from . import kinds
from .batching import token_counts
from .config import SessionConfig
from .errors import GraphLoadError, InputTooLongError, ModelKindError, OutputNotExportedError, UnsupportedInputError
from .hub.resolve import resolve_model
from .inputs import LongTextCutter, TokenItem, classify, prepare
from .manifest import graph_files, load_manifest, read_spec, verify_files
from .progress import progress
from .providers import device_name, device_providers
from .spec import ModelSpec, TowerSpec
from .text import TextTower
from .variants import choose_variant, describe_value, length_routing, warn_if_int8_kernels_differ

logger = logging.getLogger("st_runtime")


def check_batch_size(batch_size: Any) -> int | None:
    """The one check of a caller's batch_size: a positive integer, or None (st_runtime sizes batches)."""
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive integer or None (automatic), got {batch_size!r}.")
    return batch_size


class QueryDocumentMixin:
    """sentence-transformers 5's ``encode_query`` / ``encode_document`` on a class with ``encode`` and ``prompts``."""

    prompts: dict[str, str]

    def encode_query(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with the model's "query" prompt, when it has one (sentence-transformers 5+ semantics)."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)  # type: ignore[attr-defined]

    def encode_document(self, sentences, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """encode() with the model's "document", "passage" or "corpus" prompt, the first it has."""
        if prompt_name is None and prompt is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)  # type: ignore[attr-defined]


class Model:
    """An exported model of one kind, loaded: manifest, variant, checked files, towers.

    Args:
        model_path: a folder written by ``st-export``, or a model name: a hub id (``org/name``, ``hf://org/name``)
            or a short name from the sentence-transformers model table (``all-MiniLM-L6-v2``), resolved through
            the export cache (st_runtime.hub: downloaded when the repository holds an st-export, else exported
            here once; needs the ``[hub]`` extra, and the ``[export]`` extra to export).
        providers: ``None`` (CPU), ``"cpu"``, ``"cuda"``, ``"tensorrt"``, an onnxruntime provider name, or an
            explicit list; a list of several providers is an opt-in to fall back (with a warning).
        threads: onnxruntime intra-op threads; default: the physical cores of this machine.
        variant: which exported graph to run: "fp32", "opt", "int8", "fp16", or "fastest" (the fastest
            that passed its own gate for the provider, int8 on CPU). Default: the fastest variant that
            reproduces sentence-transformers' fp32 results (cosine >= 0.99999) for the provider.
        verify_checksums: check the sha256 of every file at load (sizes are always checked).
        session_options: an ``onnxruntime.SessionOptions`` to use as is (threads is then ignored).
        io_binding: feed the graph through onnxruntime IO binding (default: on for CUDA/TensorRT).
        cuda_graphs: capture each batch shape as a CUDA graph and replay it (CUDA provider only; rows are
            padded up to a power of two so shapes recur; at most 64 graphs). Saves kernel-launch time on
            small batches; costs a capture per new shape and device memory per graph.
        device: sentence-transformers' form of ``providers``: "cpu", "cuda" or "cuda:N" (then give no providers).
        revision: for a model name, the hub commit, branch or tag (default: main).
        feed_threads: threads that tokenize a large call's texts, each a chunk (default: the cores this process
            may use, at most 8); st_runtime.feeding.
    """

    kind: ClassVar[kinds.Kind]

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
        revision: str | None = None,
        feed_threads: int | None = None,
    ):
        self.path = resolve_model(model_path, revision, variant)
        self.manifest: dict[str, Any] = load_manifest(self.path)
        self.spec: ModelSpec = read_spec(self.manifest)
        self._check_kind()
        self.config = SessionConfig.build(
            providers, device, threads, session_options, io_binding, cuda_graphs, feed_threads
        )
        self.threads = self.config.threads
        self.providers = self.config.providers
        self._verify_checksums = verify_checksums
        self._load_text_tower(variant)
        # Other towers (CLIP's image tower) load on first use, so text-only users never load their graphs.
        self._lazy_towers: dict[str, tuple[TowerSpec, dict[str, Any]]] = {
            name: (tower, self._choose_variant(tower, variant)[1])
            for name, tower in self.spec.towers.items()
            if name != "text"
        }
        self._loaded_towers: dict[str, Any] = {}
        self._tower_lock = threading.Lock()
        self.prompts: dict[str, str] = dict(self.spec.prompts)
        self.default_prompt_name: str | None = self.spec.default_prompt_name
        self._loaded()

    def _loaded(self) -> None:
        """What a class adds once loaded (subclasses override it, so every class keeps Model's load signature)."""

    # ------------------------------------------------------------------ loading
    def _check_kind(self) -> None:
        """Refuse a folder holding another kind of model than this class runs, naming the right class."""
        if self.spec.task != self.kind.task:
            other = kinds.get(self.spec.task)

            def article(word: str) -> str:
                return "an" if word[0] in "aeiou" else "a"

            raise ModelKindError(
                f"{self.path} holds {article(self.spec.task)} {self.spec.task} model, not "
                f"{article(self.kind.task)} {self.kind.task} model: load it with "
                f"st_runtime.{other.public_class.partition(':')[2]} (or st_runtime.load, which picks the class)."
            )

    def _choose_variant(self, tower: TowerSpec, requested: str | None) -> tuple[str, dict[str, Any]]:
        return choose_variant(self.path, self.spec.rejected_variants, tower.raw, requested, self.providers)

    def _load_text_tower(self, variant: str | None) -> None:
        text = self.spec.towers.get("text")
        if text is None or text.tokenizer is None:
            raise GraphLoadError(
                f"{self.path} has towers {sorted(self.spec.towers)} but no text tower; this st-runtime "
                "cannot run it. Upgrade st-runtime, or re-export the model with `st-export`."
            )
        self.variant, vspec = self._choose_variant(text, variant)
        # the default on the CPU may run long texts on another exact graph that st-export measured faster there
        routing = length_routing(text.raw, variant, self.providers)
        self.long_text_variant: str | None = None
        long_spec, long_from = None, None
        if routing is not None:
            self.variant, vspec, self.long_text_variant, long_spec, long_from = routing
        warn_if_int8_kernels_differ(vspec, self.path)
        files = [*graph_files(self.path, self.manifest, vspec), text.tokenizer.file]
        if long_spec is not None:
            files += graph_files(self.path, self.manifest, long_spec)
        verify_files(self.path, self.manifest, files, checksums=self._verify_checksums)
        self.text_tower = TextTower(
            self.path, text, vspec, self.config, self.kind.width(self), long_variant=long_spec, long_from=long_from
        )
        self._max_seq_length: int | None = self.text_tower.max_seq_length
        self._cutter = LongTextCutter(self.text_tower.tokenizer, self.text_tower.add_special_tokens)

    def _tower(self, name: str):
        """A non-text tower (CLIP's "image"), loaded on first use (once, also under concurrent calls)."""
        with self._tower_lock:
            if name not in self._loaded_towers:
                self._loaded_towers[name] = self._load_image_tower(*self._lazy_towers[name])
            return self._loaded_towers[name]

    def _load_image_tower(self, tower: TowerSpec, vspec: dict[str, Any]):
        if tower.modality != "image":
            raise GraphLoadError(
                f"tower {tower.name!r} has modality {tower.modality!r}, which this st-runtime cannot run. "
                "Upgrade st-runtime."
            )
        verify_files(
            self.path, self.manifest, graph_files(self.path, self.manifest, vspec), checksums=self._verify_checksums
        )
        session = self.config.session(self.path / vspec["file"])
        declared = [i.name for i in session.get_inputs()]
        if declared != list(tower.inputs):
            raise GraphLoadError(
                f"{vspec['file']} takes inputs {declared} but the manifest says {list(tower.inputs)}. "
                "Re-export the model with `st-export`."
            )
        from .image import ImageTower

        return ImageTower(tower.raw, session)

    # ------------------------------------------------------------------ properties
    @property
    def modalities(self) -> list[str]:
        """The input modalities this model takes ("text", and "image" for CLIP)."""
        return sorted({t.modality for t in self.spec.towers.values()})

    @property
    def takes_images(self) -> bool:
        return bool(self._lazy_towers)

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

    def call_max_length(self, max_seq_length: int | None) -> int | None:
        """A call's truncation length: its own ``max_seq_length`` (checked), else the model's."""
        return self._max_seq_length if max_seq_length is None else self._check_max_seq_length(max_seq_length)

    @property
    def tokenizer(self):
        """The tokenizer at the exported max_seq_length (a ``tokenizers.Tokenizer``)."""
        return self.text_tower.tokenizer

    @property
    def device(self) -> str:
        """Where the graphs run, as sentence-transformers names it: "cpu" or "cuda:N"."""
        return device_name(self.providers[0])

    def check_device(self, device: str | None) -> None:
        """encode(device=...) may only name the device this model already runs on."""
        if device is not None and device_name(device_providers(device)) != self.device:
            raise ValueError(
                f"this model runs on {self.device}; encode(device={device!r}) would need another session. Load "
                f"another {type(self).__name__}(..., device={device!r}) for that device."
            )

    def __repr__(self) -> str:
        routed = (
            f"long_text_variant={self.long_text_variant!r} (from {self.text_tower.policy.long_from} tokens), "
            if self.long_text_variant
            else ""
        )
        return (
            f"{type(self).__name__}({str(self.path)!r}, variant={self.variant!r}, {routed}"
            f"providers={[p[0] if isinstance(p, tuple) else p for p in self.providers]}, "
            f"dim={self.kind.width(self)})"
        )

    # ------------------------------------------------------------------ inputs
    def resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """The prompt text of a call: ``prompt``, else the named one, else the model's default prompt."""
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

    def prepare_texts(
        self,
        items: list,
        prompt: str | None = None,
        kinds_: list[str] | None = None,
        strict: bool = False,
        direction: str | None = None,
    ) -> list:
        """Text items with the prompt prepended (to the first text of a pair) and surrogates repaired; very long
        texts are cut exactly for truncation on ``direction`` (None: the model's side). ``strict`` (the call
        refuses over-long texts instead of truncating): texts are kept whole, and one proved over the limit from
        a prefix raises InputTooLongError before the rest is tokenized. Items whose ``kinds_`` entry is not
        "text" (images) are left alone."""
        if prompt:
            items = [
                it
                if kinds_ is not None and kinds_[i] != "text"
                else prompt + it
                if isinstance(it, str)
                else it
                if isinstance(it, TokenItem)  # already tokenized by the caller: taken as sent
                else (prompt + it[0], it[1])
                for i, it in enumerate(items)
            ]
        if not strict:
            return prepare(items, self._cutter, kinds_, direction=direction)
        items = list(prepare(items, None, kinds_))
        limit = self._cutter.max_length
        for i, item in enumerate(items):
            if isinstance(item, str) and (kinds_ is None or kinds_[i] == "text"):
                items[i], over = self._cutter.exceeds(item)
                if over is not None:
                    raise InputTooLongError(
                        f"input {i} has more than {limit} tokens (its first {over} characters alone have more), over "
                        f"the limit of {limit} tokens (the model's max_seq_length); shorten it, or send "
                        f"truncate=true to keep the first {limit}."
                    )
        return items

    def tokenize(self, texts) -> dict[str, np.ndarray]:
        """The text tower's inputs for ``texts`` (strings or [text, text_pair] pairs), as
        ``SentenceTransformer.tokenize`` gives them but in numpy: int64 arrays padded to the longest, truncated
        at max_seq_length, one per graph input (input_ids, attention_mask, and token_type_ids where the model
        takes them)."""
        items, _kinds, _ = classify(texts)
        encodings = self.text_tower.tokenize(prepare(items, self._cutter))
        lengths = token_counts(encodings)
        width = int(lengths.max()) if len(lengths) else 0
        return self.text_tower.feeds(encodings, lengths, np.arange(len(encodings)), width)

    def row_output(self, unnormalized: bool) -> str | None:
        """The text graph output a call's rows come from: None (the tower's main output), or for ``unnormalized``
        the output before the model's final Normalize, where the model has one."""
        if not unnormalized or not self.spec.output.get("normalized"):
            return None
        name = self.spec.towers["text"].unnormalized_output
        if name is None:
            raise OutputNotExportedError(
                f"{self.path} ends in Normalize, and its export has no output before it (st-export added one "
                "later); embeddings before normalization need it. Export the model again with this st-export."
            )
        return name

    # ------------------------------------------------------------------ the protocol, in process
    def run(
        self, prepared: kinds.Prepared, batch_size: int | None = None, show_progress_bar: bool | None = None
    ) -> Any:
        """Run a prepared call through the towers: the kind's rows for every input, in input order."""
        check_batch_size(batch_size)
        kind = self.kind
        rows = kind.new_rows(self, len(prepared.texts))
        with progress(show_progress_bar, prepared.size) as update:
            if prepared.texts:  # the caller checked a max_length it set (call_max_length); None: the model's own
                if prepared.strict:  # refused naming its tokens (st-serve's batcher counts them as it tokenizes)
                    kind.long_call(self, prepared.texts, prepared.max_length, "error", 0)
                max_length = self._max_seq_length if prepared.max_length is None else prepared.max_length
                output = self.row_output(prepared.unnormalized)
                self.text_tower.embed(prepared.texts, batch_size, rows, max_length, update, output)
            if not prepared.images:  # long texts' windows pool into one row per text (long_inputs="chunk")
                return kind.pool(self, prepared, kind.split(rows, 0, len(prepared.texts)))[0]
            if not self.takes_images:
                raise UnsupportedInputError(
                    f"{self.path} takes text only; input {prepared.image_index[0]} is an image."
                )
            image_rows = kind.new_rows(self, len(prepared.images))
            self._tower("image").embed(prepared.images, batch_size, image_rows)
            if update is not None:
                update(len(prepared.images))
        return kind.split(kind.merge(self, prepared, rows, image_rows), 0, prepared.size)
