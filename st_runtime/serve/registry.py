"""The models a server serves: each loaded through ``st_runtime.load`` (whatever its kind), warmed up, with its
batcher and the handlers of the routes its kind declares."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..kinds import Kind, Route, all_kinds
from .batcher import Batcher
from .errors import RequestError
from .limits import Limits
from .metrics import Metrics

logger = logging.getLogger("st_runtime.serve")

OPENAI, TEI, COHERE = "openai", "tei", "cohere"


@dataclass
class ServeConfig:
    """What the command line sets (see ``st-serve --help``)."""

    folders: list[Path]
    names: list[str] | None = None
    providers: str | None = None
    threads: int | None = None
    variant: str | None = None
    max_batch_tokens: int = 16384
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 256
    payload_limit: int = 2_000_000
    api_key: str | None = None
    otlp_endpoint: str | None = None  # OpenTelemetry: where spans go (serve/tracing.py)
    otlp_service_name: str = "st-serve"
    long_inputs: str = "truncate"  # a request's long_inputs when it sends neither that nor truncate
    limits: Limits = field(default_factory=Limits)  # timeouts, connection and text limits (serve/limits.py)


@dataclass
class ServedModel:
    name: str
    model: Any  # the public class of its kind (SentenceEncoder, CrossEncoder, SparseEncoder, ...)
    batcher: Batcher
    handlers: dict[str, Callable[[Any], Awaitable[Any]]]

    @property
    def kind(self) -> Kind:
        return self.model.kind

    @property
    def dim(self) -> int:
        return self.batcher.dim

    @property
    def max_seq_length(self) -> int | None:
        return self.model.text_tower.max_seq_length

    @property
    def vocab_size(self) -> int:
        """Ids of the model's vocabulary (added tokens included): what token-id inputs are checked against."""
        tokenizer = self.model.text_tower.tokenizer_for(None)
        if not hasattr(tokenizer, "get_vocab_size"):
            raise RequestError(422, f"model {self.name!r} has a word tokenizer, which has no token ids", "Tokenizer")
        return int(tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.model.prompts)

    def handler(self, path: str) -> Callable[[Any], Awaitable[Any]]:
        """The handler of ``path`` for this model's kind (422 when its kind answers other routes)."""
        found = self.handlers.get(path)
        if found is None:
            raise RequestError(
                422,
                f"model {self.name!r} is a {self.kind.task} model: {path} does not serve it; its routes are "
                f"{', '.join(sorted(self.handlers)) or 'none'}",
                param="model",
            )
        return found


def kind_routes() -> dict[str, Route]:
    """Every route some registered kind answers (the first kind's declaration of a path sets its dialect)."""
    routes: dict[str, Route] = {}
    for kind in all_kinds().values():
        for route in kind.routes:
            routes.setdefault(route.path, route)
    return routes


@dataclass
class ServerState:
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    load_error: str | None = None
    in_flight: int = 0
    on_load_failure: Callable[[str], None] | None = None
    tracing: Any = None  # a serve.tracing.Tracing when --otlp-endpoint is given

    def require_ready(self) -> None:
        if not self.ready:
            raise RequestError(503, self.load_error or "the model is loading; retry shortly", "Unhealthy")

    def model(self, name: Any, dialect: str) -> ServedModel:
        self.require_ready()
        if name is None:
            if dialect == OPENAI and len(self.models) > 1:
                raise RequestError(422, f"'model' is required: this server serves {list(self.models)}", param="model")
            return next(iter(self.models.values()))
        if not isinstance(name, str):
            raise RequestError(422, f"'model' must be a string, got {type(name).__name__}", param="model")
        found = self.models.get(name)
        if found is None:
            raise RequestError(
                404, f"model {name!r} is not served here; served models: {list(self.models)}", "NotFound", "model"
            )
        return found


def _load_one(state: ServerState, i: int, folder: Path) -> None:
    from ..kinds import load
    from ..providers import physical_cores
    from ..session import SERVER_SPIN_US, session_options_for

    cfg = state.config
    t0 = time.perf_counter()
    threads = cfg.threads or physical_cores()
    # onnxruntime's threads spin briefly between operators and not after a run: the event loop and the tokenizer
    # need the cores then (session_options_for has the measurements)
    model = load(
        folder,
        providers=cfg.providers,
        threads=threads,
        variant=cfg.variant,
        session_options=session_options_for(threads, SERVER_SPIN_US),
    )
    name = cfg.names[i] if cfg.names else model.spec.name or Path(folder).name
    model.kind.warm_up(model)
    batcher = Batcher(model, name, cfg.max_batch_tokens, on_batch=state.metrics.batch_observer(name))
    state.metrics.track_queue(name, lambda b=batcher: b.queue_size)
    handlers = {route.path: route.resolve() for route in model.kind.routes}
    state.models[name] = ServedModel(name, model, batcher, handlers)
    logger.info(
        "loaded %s (%s) from %s (variant %s, %s) in %.1f s",
        name,
        model.kind.task,
        folder,
        model.variant,
        model.providers[0],
        time.perf_counter() - t0,
    )


def load_models(state: ServerState) -> None:
    """Load every model, warm it up, start its batcher; then mark the server ready (``/health`` 200)."""
    try:
        for i, folder in enumerate(state.config.folders):
            _load_one(state, i, folder)
    except Exception as exc:
        state.load_error = f"loading the models failed: {type(exc).__name__}: {exc}"
        logger.error("%s", state.load_error)
        if state.on_load_failure is not None:
            state.on_load_failure(state.load_error)
        return
    state.ready = True
    logger.info("ready: serving %s", list(state.models))
