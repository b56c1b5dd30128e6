"""The text tower: tokenizer loading, per-call truncation, length-sorted batching, and the runner that feeds
the graph. One tower is shared by every thread that calls its encoder."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .batching import (
    BatchPolicy,
    build_all_feeds,
    build_feeds,
    graph_width,
    longest_first,
    plan_batches,
    token_counts,
)
from .errors import GraphLoadError
from .feeding import Tokenizers, load_tokenizer
from .inputs import TokenItem
from .packed import Packed
from .runners import BoundRunner, SessionRunner, is_out_of_memory
from .session import make_session

if TYPE_CHECKING:
    from .config import SessionConfig
    from .spec import TowerSpec

INT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class TextTower:
    """Tokenizer + graph of one text tower. Safe to share across threads: truncation is chosen per call
    (each maximum length has its own configured tokenizer, made once), and the prefetch pool, the
    runner's buffers and the policy are fixed after loading."""

    def __init__(
        self,
        folder: Path,
        tower: TowerSpec,
        variant: dict[str, Any],
        config: SessionConfig,
        dim: int | None = None,
        long_variant: dict[str, Any] | None = None,
        long_from: int | None = None,
    ):
        self.spec = tower
        tok = tower.tokenizer
        if tok is None:
            raise GraphLoadError(f"text tower {tower.name!r} has no tokenizer; re-export the model with `st-export`.")
        self.padding_side: str = tok.padding_side
        self.max_seq_length: int | None = tok.max_seq_length
        self.add_special_tokens: bool = tok.add_special_tokens
        self.tokenizers = Tokenizers(
            load_tokenizer(folder, tok.raw), self.max_seq_length, tok.truncation_side, tok.add_special_tokens,
            config.feed_threads,
        )  # fmt: skip
        self.pad_id = tok.pad_token_id
        self.inputs = list(tower.inputs)
        self.output = tower.output
        self.unnormalized_output = tower.unnormalized_output
        unknown = [i for i in self.inputs if i not in INT_INPUTS]
        if unknown:
            raise GraphLoadError(
                f"text tower declares inputs {unknown} that this st-runtime cannot feed "
                f"(it knows {list(INT_INPUTS)}). Upgrade st-runtime."
            )
        self.session = make_session(
            folder / variant["file"],
            config.providers,
            config.fallback_allowed,
            config.threads,
            config.session_options,
            cuda_graphs=config.cuda_graphs,
        )
        self.on_gpu = self.session.get_providers()[0] in _GPU_PROVIDERS
        self.policy = BatchPolicy.for_device(self.on_gpu, variant.get("cpu_batching"))
        self._load_long_variant(folder, config, variant, long_variant, long_from)
        self._oom_warned = False
        # Single texts get all-zero token type ids from the usual templates ("[CLS]:0 $A:0 [SEP]:0"); then a
        # batch without pairs skips reading them back per text (a third of the host work of a BERT batch).
        self.single_types_zero = "token_type_ids" in self.inputs and not any(self.tokenizer.encode("a").type_ids)
        self.cuda_graphs = config.cuda_graphs
        self._make_runners(config.io_binding, dim)
        declared = {i.name for i in self.session.get_inputs()}
        if declared != set(self.inputs):
            raise GraphLoadError(
                f"{variant['file']} takes inputs {sorted(declared)} but the manifest says {sorted(self.inputs)}: "
                "the graph and the manifest do not belong together. Re-export the model with `st-export`."
            )
        # builds the next batch's arrays (and on a GPU tokenizes the next chunk) while a batch runs; one pool
        # for the tower's lifetime, shared by concurrent calls (their jobs never wait on each other)
        self._prefetch = ThreadPoolExecutor(max_workers=2, thread_name_prefix="st-prefetch")

    def _make_runners(self, io_binding: bool | None, dim: int | None) -> None:
        use_binding = self.on_gpu or self.cuda_graphs if io_binding is None else io_binding  # False: refused earlier
        device = "cuda" if self.on_gpu else "cpu"
        self.runner = (
            BoundRunner(self.session, self.output, device, graphs=self.cuda_graphs, dim=dim)
            if use_binding
            else SessionRunner(self.session, self.output)
        )
        self.long_runner = SessionRunner(self.long_session, self.output) if self.long_session else None
        # runners of the graph's other row outputs (the pre-Normalize embedding), made at first use
        self._other_runners: dict[str, tuple[SessionRunner, SessionRunner | None]] = {}

    def _runners(self, output: str | None) -> tuple[Any, Any]:
        """(runner, long runner) giving the graph output ``output`` (None: the tower's main output)."""
        if output is None or output == self.output:
            return self.runner, self.long_runner
        pair = self._other_runners.get(output)
        if pair is None:
            long = SessionRunner(self.long_session, output) if self.long_session else None
            pair = self._other_runners[output] = (SessionRunner(self.session, output), long)
        return pair

    def _load_long_variant(self, folder, config, variant, long_variant, long_from) -> None:
        """Length routing (CPU): batches from policy.long_from tokens wide run on another exact graph, measured
        faster there at export, under that graph's own budget for long batches."""
        self.long_session = None
        if long_variant is None or self.on_gpu:
            return
        self.long_session = make_session(
            folder / long_variant["file"], config.providers, config.fallback_allowed, config.threads,
            config.session_options,
        )  # fmt: skip
        long_budget = (long_variant.get("cpu_batching") or {}).get("long_tokens")
        measured = {**(variant.get("cpu_batching") or {}), "long_tokens": long_budget}
        if long_from is not None:
            measured["long_from"] = long_from
        self.policy = BatchPolicy.for_device(False, measured)

    @property
    def tokenizer(self):
        """The tokenizer at the exported max_seq_length (the one the model was validated with)."""
        return self.tokenizers.tokenizer

    def tokenizer_for(self, max_len: int | None, direction: str | None = None):
        """A tokenizer truncating at ``max_len`` (None: not at all; ``embed`` passes the exported limit for
        None) on the side ``direction`` ("right" or "left"; None: the model's), made once per length and side."""
        return self.tokenizers.entry(max_len, direction)[0]

    def _encode_fn(self, max_length: int | None, direction: str | None = None):
        return self.tokenizers.encode_fn(max_length, direction)

    def tokenize(
        self, items: list, max_length: int | None = None, direction: str | None = None, truncate: bool = True
    ) -> list:
        """Tokenize texts (or (text, text_pair) tuples) as ``embed`` does, truncating at ``max_length`` tokens
        (None: the exported max_seq_length) on the side ``direction`` (None: the model's); ``truncate=False``
        keeps every token (to count them). The encodings go to ``embed_encoded``: a server tokenizes once,
        counts the tokens, and batches many requests' encodings."""
        if not truncate:
            return self._encode_fn(None, direction)(items)
        return self._encode_fn(self.max_seq_length if max_length is None else max_length, direction)(items)

    def embed_encoded(
        self,
        encodings: list,
        out: np.ndarray,
        batch_size: int | None = None,
        max_length: int | None = None,
        pairs: bool = True,
        output: str | None = None,
    ) -> None:
        """Embed encodings from ``tokenize`` into ``out`` (same order) in length-sorted batches; encodings made
        with different truncation may be mixed. ``max_length``: the widest any of them is; ``pairs=False``
        promises that none is a text pair (their token type ids are then not read back); ``output``: the graph
        output to write (None: the tower's main output)."""
        if encodings:
            zero_types = self.single_types_zero and not pairs
            batch_size = batch_size or self.policy.auto_batch_size
            self._embed_encoded(encodings, batch_size, out, max_length, zero_types, output=output)

    def embed(
        self,
        items: list,
        batch_size: int | None,
        out: np.ndarray,
        max_length: int | None = None,
        progress: Callable[[int], None] | None = None,
        output: str | None = None,
    ) -> None:
        """Embed ``items`` (texts, (text, text_pair) tuples or TokenItems) into ``out`` in input order, truncating
        at ``max_length`` tokens (None: the exported max_seq_length); ``progress(n)`` is called after each batch
        with the items it held. ``output``: the graph output to write (None: the tower's main output)."""
        if not items:
            return
        policy = self.policy
        batch_size = batch_size or policy.auto_batch_size
        max_length = self.max_seq_length if max_length is None else max_length
        encode = self._encode_fn(max_length)
        zero_types = self.single_types_zero and not _any_typed(items)
        chunk = policy.pipeline_items(batch_size)
        if chunk is None or len(items) <= chunk:
            self._embed_encoded(encode(items), batch_size, out, max_length, zero_types, progress, output)
            return
        # GPU: tokenize the next chunk of texts (Rust, on all cores, without the GIL) while the GPU runs this
        # one's batches, so tokenization overlaps the device work instead of preceding it.
        nxt = self._prefetch.submit(encode, items[:chunk])
        for start in range(0, len(items), chunk):
            encodings = nxt.result()
            if start + chunk < len(items):
                nxt = self._prefetch.submit(encode, items[start + chunk : start + 2 * chunk])
            part = out[start : start + len(encodings)]
            self._embed_encoded(encodings, batch_size, part, max_length, zero_types, progress, output)

    def embed_tokens(
        self, items: list, batch_size: int | None, max_length: int | None = None, direction: str | None = None
    ) -> list[dict]:
        """Per item, its token embeddings without padding ([tokens, hidden]), its sentence embedding and its graph
        inputs (input_ids, attention_mask, ...), in input order: what sentence-transformers' encode gives with
        output_value="token_embeddings" or None. Needs a graph with the per-token output (``token_output``)."""
        token_output = self.spec.token_output
        if token_output is None:
            raise GraphLoadError(
                "this export's graph returns sentence embeddings only; export the model again with this "
                "st-export to get token embeddings (output_value='token_embeddings' or None)."
            )
        max_length = self.max_seq_length if max_length is None else max_length
        encodings = self._encode_fn(max_length, direction)(items)
        lengths = token_counts(encodings)
        order = longest_first(lengths)
        results: list[dict] = [{} for _ in items]
        for start, end, width in self.plan(lengths[order], batch_size or self.policy.auto_batch_size, max_length):
            idx = order[start:end]
            feeds = self.feeds(encodings, lengths, idx, width)
            sentence, tokens = self._routed(width, self.session, self.long_session).run(
                [self.output, token_output], feeds
            )
            for j, i in enumerate(idx):
                n = int(lengths[i])
                # the text's own rows: sentence-transformers keeps a left-padded text's pads (up to its last token),
                # which depend on its batch company; here a text gives the same rows in any batch
                keep = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
                item = {name: feeds[name][j, keep].copy() for name in feeds}
                item["token_embeddings"] = np.asarray(tokens[j, keep], dtype=np.float32)
                item["sentence_embedding"] = np.asarray(sentence[j], dtype=np.float32)
                results[i] = item
        return results

    def _routed(self, width: int, short, long):
        """``long`` for a batch this wide under length routing (see __init__), else ``short``."""
        return long if long is not None and width >= self.policy.long_from else short

    def feeds(
        self, encodings, lengths: np.ndarray, idx: np.ndarray, width: int, zero_types: bool = False
    ) -> dict[str, np.ndarray]:
        """The graph's padded input arrays for the tokenized items ``idx`` (see batching.build_feeds)."""
        return build_feeds(encodings, lengths, idx, width, self.inputs, self.pad_id, zero_types, self.padding_side)

    def plan(self, lengths: np.ndarray, batch_size: int, max_length: int | None) -> list[tuple[int, int, int]]:
        """(start, end, padded width) batches over items sorted by decreasing ``lengths``."""
        policy = self.policy
        batches = plan_batches(lengths, batch_size, policy.pad_multiple, max_width=max_length, budget=policy.budget)
        if self.cuda_graphs:  # fewer distinct shapes, so fewer graphs to capture
            batches = [(s, e, graph_width(w, max_length)) for s, e, w in batches]
        return batches

    def _embed_encoded(
        self,
        encodings: list,
        batch_size: int,
        out: np.ndarray,
        max_length: int | None,
        zero_types: bool = False,
        progress: Callable[[int], None] | None = None,
        output: str | None = None,
    ) -> None:
        """Embed tokenized items into ``out`` (same order), in length-sorted batches."""
        lengths = token_counts(encodings)
        order = longest_first(lengths)
        batches = self.plan(lengths[order], batch_size, max_length)
        if len(batches) == 1 or not self.on_gpu:
            # CPU: the arrays are built here, between runs: building them (C, microseconds per batch) costs less
            # than handing them over from another thread, which waits on the interpreter lock each time
            for start, end, width in batches:
                feeds = self.feeds(encodings, lengths, order[start:end], width, zero_types)
                out[order[start:end]] = self._run(feeds, output)
                if progress is not None:
                    progress(end - start)
            return
        if isinstance(encodings, Packed):
            # GPU, flat ids: every batch's arrays at once, written by C on the feed threads (microseconds a batch;
            # the call is a tokenization chunk or a server batch, so their memory is bounded), then run in turn
            feeds_list = build_all_feeds(
                encodings, lengths, order, batches, self.inputs, self.pad_id, zero_types, self.padding_side,
                self.tokenizers.threads,
            )  # fmt: skip
            for (start, end, _width), feeds in zip(batches, feeds_list, strict=True):
                out[order[start:end]] = self._run(feeds, output)
                if progress is not None:
                    progress(end - start)
            return
        # GPU, encodings: build the next batch's arrays while onnxruntime (which releases the GIL) runs this one.
        s0, e0, w0 = batches[0]
        nxt = self._prefetch.submit(self.feeds, encodings, lengths, order[s0:e0], w0, zero_types)
        for k, (start, end, _width) in enumerate(batches):
            feeds = nxt.result()
            if k + 1 < len(batches):
                s2, e2, w2 = batches[k + 1]
                nxt = self._prefetch.submit(self.feeds, encodings, lengths, order[s2:e2], w2, zero_types)
            out[order[start:end]] = self._run(feeds, output)
            if progress is not None:
                progress(end - start)

    def _run(self, feeds: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
        """Run one batch (``output``: the graph output to give, None: the main one); on device out-of-memory, run
        it in halves (and say so once)."""
        runner = self._routed(next(iter(feeds.values())).shape[1], *self._runners(output))
        try:
            return runner(feeds)
        except Exception as exc:  # onnxruntime raises untyped errors; only OOM is handled here
            rows = next(iter(feeds.values())).shape[0]
            if not self.on_gpu or rows < 2 or not is_out_of_memory(exc):
                raise
        if not self._oom_warned:
            self._oom_warned = True
            warnings.warn(
                f"{self.session.get_providers()[0]} ran out of memory on a batch of {rows} x "
                f"{next(iter(feeds.values())).shape[1]} tokens; running such batches in halves. Pass a "
                "smaller batch_size to avoid the retries.",
                RuntimeWarning,
                stacklevel=4,
            )
        half = rows // 2
        return np.concatenate(
            [
                self._run({k: v[:half] for k, v in feeds.items()}, output),
                self._run({k: v[half:] for k, v in feeds.items()}, output),
            ]
        )


def _any_typed(items: list) -> bool:
    """Whether some item's token type ids must be read back: a (text, text_pair) tuple, or a TokenItem with some
    (plain texts are told apart by their types alone, with no loop over them)."""
    types = set(map(type, items))
    if types <= {str}:
        return False
    return tuple in types or any(isinstance(it, TokenItem) and it.has_types for it in items)
