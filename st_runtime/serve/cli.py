"""st-serve: serve exported models over HTTP (OpenAI's and text-embeddings-inference's APIs).

    st-serve exported_models/all-MiniLM-L6-v2 [MORE_FOLDERS_OR_NAMES ...] [--host 127.0.0.1] [--port 8080] ...
    st-serve sentence-transformers/all-MiniLM-L6-v2     (a name: resolved through the export cache first)

SIGTERM or Ctrl-C: stop accepting, answer every request already accepted, exit 0 (within 30 s).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from ..cli_args import missing_extra, positive_float, positive_int
from .limits import Limits, ensure_file_descriptors, steady_memory, uvicorn_settings

SERVE_EXTRA = "pip install 'st-runtime[serve]'"
GRACE_S = 25  # uvicorn's wait for requests in flight after SIGTERM; the batchers then drain within the rest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="st-serve",
        description="Serve models exported by st-export over HTTP: OpenAI's /v1/embeddings and "
        "text-embeddings-inference's /embed, /tokenize, /info, /health, plus /metrics. Concurrent requests "
        "are batched together.",
    )
    p.add_argument(
        "folders",
        nargs="+",
        help="model folders written by st-export, or model names (hub id, hf://ORG/NAME or a short name such as "
        "all-MiniLM-L6-v2), resolved through the export cache before the server starts",
    )
    p.add_argument("--revision", default=None, help="hub commit, branch or tag of the named models (default: main)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--variant", default=None, help="graph variant (default: the fastest exact one; see st-export)")
    p.add_argument("--providers", choices=["cpu", "cuda"], default=None, help="execution provider (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime threads (default: physical cores)")
    p.add_argument(
        "--max-batch-tokens", type=positive_int, default=16384, help="tokens merged into one batch (default 16384)"
    )
    p.add_argument(
        "--max-concurrent-requests", type=positive_int, default=512, help="requests in flight before 429 (default 512)"
    )
    p.add_argument(
        "--max-client-batch-size", type=positive_int, default=256, help="inputs per request before 413 (default 256)"
    )
    p.add_argument(
        "--payload-limit", type=positive_int, default=2_000_000, help="request body bytes before 413 (default 2000000)"
    )
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (all routes but /health)")
    p.add_argument(
        "--long-inputs",
        choices=["truncate", "chunk", "error"],
        default="truncate",
        help="texts over the model's limit: truncate (default), chunk (windows, pooled) or error (413); "
        "a request's 'long_inputs' (or 'truncate') overrides it",
    )
    _add_limits(p)
    p.add_argument(
        "--served-model-name",
        action="append",
        default=None,
        help="name clients use in 'model' (default: the exported model's name); once per folder",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log each request")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_observability(p)
    return p


def _add_observability(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("observability and browsers")
    g.add_argument("--json-logs", action="store_true", help="log JSON lines (one object per line) instead of text")
    g.add_argument(
        "--prometheus-port", type=positive_int, default=None, help="also serve /metrics on this port (on --host)"
    )
    g.add_argument(
        "--cors-allow-origin",
        action="append",
        default=None,
        help="an origin browsers may call from (repeat for several; '*' for any)",
    )
    g.add_argument(
        "--otlp-endpoint",
        default=None,
        help="export a span per request to this OpenTelemetry collector (OTLP/HTTP base URL, e.g. "
        "http://127.0.0.1:4318); needs pip install 'st-runtime[tracing]'",
    )
    g.add_argument("--otlp-service-name", default="st-serve", help="the service.name of the spans (default st-serve)")


# the limits on clients: flag, type, Limits field, help ({} is the default)
_LIMIT_FLAGS = (
    (
        "--body-timeout",
        positive_float,
        "body_timeout",
        "seconds to receive a request body, before 408 (default {:g}); the request takes its "
        "--max-concurrent-requests slot only once the body has arrived",
    ),
    (
        "--header-timeout",
        positive_float,
        "header_timeout",
        "seconds to receive a request head, from the connection's opening or the head's first byte (default {:g})",
    ),
    (
        "--keep-alive-timeout",
        positive_float,
        "keep_alive_timeout",
        "idle seconds before a keep-alive connection is closed (default {:g})",
    ),
    (
        "--write-timeout",
        positive_float,
        "write_timeout",
        "seconds a client may read none of its response before it is dropped (default {:g})",
    ),
    ("--max-header-bytes", positive_int, "max_header_bytes", "request line and headers, before 431 (default {})"),
    (
        "--max-connections",
        positive_int,
        "max_connections",
        "open connections; past it the longest idle one is closed (default {})",
    ),
    ("--max-input-chars", positive_int, "max_input_chars", "characters per input text, before 413 (default {})"),
)


def _add_limits(p: argparse.ArgumentParser) -> None:
    """What a misbehaving client can hold (st_runtime/serve/limits.py and guards.py)."""
    defaults = Limits()
    g = p.add_argument_group("limits on clients")
    for flag, kind, field, text in _LIMIT_FLAGS:
        default = getattr(defaults, field)
        g.add_argument(flag, type=kind, default=default, help=text.format(default))


def _limits(args: argparse.Namespace) -> Limits:
    connections = ensure_file_descriptors(args.max_connections)
    if connections < args.max_connections:
        logging.getLogger("st_runtime.serve").warning(
            "--max-connections %d lowered to %d: the open-files limit (ulimit -n) allows no more",
            args.max_connections,
            connections,
        )
    return Limits(
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_header_bytes=args.max_header_bytes,
        max_connections=connections,
        write_timeout=args.write_timeout,
        max_input_chars=args.max_input_chars,
    )


class _Refused(Exception):
    """A command-line mistake found before the server starts (exit 2)."""


def _names(args: argparse.Namespace) -> list[str]:
    """The served name of each folder; the cheap checks first, so a typo fails before the server starts."""
    from ..errors import StRuntimeError
    from ..hub.resolve import resolve_model
    from ..manifest import load_manifest

    try:  # names become folders of the export cache (downloaded or exported once, here, before any worker starts)
        args.folders = [resolve_model(f, args.revision, args.variant) for f in args.folders]
    except (StRuntimeError, ValueError) as exc:
        raise _Refused(str(exc)) from None
    if args.served_model_name and len(args.served_model_name) != len(args.folders):
        raise _Refused(
            f"{len(args.served_model_name)} --served-model-name for {len(args.folders)} folders; "
            "give one name per folder, in the same order"
        )
    names = []
    for i, folder in enumerate(args.folders):
        try:
            manifest = load_manifest(folder)
        except StRuntimeError as exc:
            raise _Refused(str(exc)) from None
        names.append(args.served_model_name[i] if args.served_model_name else manifest.get("name") or folder.name)
    if len(set(names)) != len(names):
        raise _Refused(f"two folders have the same name {names}; set --served-model-name per folder")
    return names


def _serve(args: argparse.Namespace, config, uvicorn, create_app) -> int:
    """Run the server until SIGTERM or Ctrl-C: 0 after a clean shutdown, 1 if the models failed to load."""
    failure: list[str] = []
    server = None

    def on_load_failure(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_load_failure=on_load_failure)
    asgi = app
    if args.cors_allow_origin:
        from starlette.middleware.cors import CORSMiddleware

        asgi = CORSMiddleware(app, allow_origins=args.cors_allow_origin, allow_methods=["*"], allow_headers=["*"])
    if args.prometheus_port:
        from prometheus_client import start_http_server

        start_http_server(args.prometheus_port, addr=args.host, registry=app.state.metrics.registry)
    extra = {"log_config": None} if args.json_logs else {}
    server = uvicorn.Server(
        uvicorn.Config(
            asgi,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            **extra,
            access_log=not args.no_access_log,
            timeout_graceful_shutdown=GRACE_S,
            lifespan="on",
            **uvicorn_settings(config.limits, app.state.metrics.connection_event),
        )
    )
    app.state.metrics.track_connections(lambda: len(server.server_state.connections))
    # uvicorn re-raises the signal that stopped it once it has shut down; after a clean shutdown that is
    # not an error, so the re-raised SIGTERM/SIGINT lands on a handler that does nothing and we exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if failure:
        print(f"st-serve: {failure[0]}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from .app import ServeConfig, create_app
    except ImportError as exc:
        return missing_extra("st-serve", exc, SERVE_EXTRA)
    if args.otlp_endpoint:
        try:
            import opentelemetry.exporter.otlp.proto.http
            import opentelemetry.sdk  # noqa: F401
        except ImportError as exc:
            return missing_extra("st-serve --otlp-endpoint", exc, "pip install 'st-runtime[tracing]'")
    if args.json_logs:  # before the names are resolved: an export by name logs how long it took
        from .logs import json_logging

        json_logging(args.log_level)
    else:
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        names = _names(args)
    except _Refused as exc:
        print(f"st-serve: {exc}", file=sys.stderr)
        return 2
    steady_memory()  # large bodies go back to the system when freed (limits.py)
    config = ServeConfig(
        folders=list(args.folders),
        names=names,
        providers=args.providers,
        threads=args.threads,
        variant=args.variant,
        max_batch_tokens=args.max_batch_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_client_batch_size=args.max_client_batch_size,
        payload_limit=args.payload_limit,
        api_key=args.api_key,
        otlp_endpoint=args.otlp_endpoint,
        otlp_service_name=args.otlp_service_name,
        long_inputs=args.long_inputs,
        limits=_limits(args),
    )
    return _serve(args, config, uvicorn, create_app)


if __name__ == "__main__":
    sys.exit(main())
