"""OpenTelemetry tracing of st-serve (``--otlp-endpoint``; the ``tracing`` extra): one span per request, with
its route, status and the seconds it spent queued, tokenizing and in inference, exported over OTLP/HTTP in
batches. The span continues the trace of a W3C ``traceparent`` header when the client sends one.

opentelemetry is imported only here, and this module only when the flag is given.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from .context import TIMINGS

TRACING_EXTRA = "pip install 'st-runtime[tracing]'"


class Tracing:
    """A tracer provider of its own (the process's global one is left alone) exporting to ``endpoint`` (the
    collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318; spans go to its /v1/traces), or to
    ``exporter`` (any SpanExporter, e.g. the SDK's InMemorySpanExporter in tests)."""

    def __init__(self, endpoint: str | None = None, exporter: Any = None, service_name: str = "st-serve"):
        from opentelemetry.propagate import extract
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._extract, self._kind, self._status, self._error = extract, SpanKind.SERVER, Status, StatusCode.ERROR
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces" if endpoint else None)
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("st_runtime.serve")

    def start(self, request: Request, route: str) -> Any:
        client = request.scope.get("client")
        return self.tracer.start_span(
            f"{request.method} {route}",
            context=self._extract(dict(request.headers)),
            kind=self._kind,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.url.path,
                "client.address": client[0] if client else "",
            },
        )

    def end(self, span: Any, request: Request, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        for phase, seconds in (request.scope.get(TIMINGS) or {}).items():
            span.set_attribute(f"st_serve.{phase}_ms", round(seconds * 1000.0, 3))
        if status >= 500:
            span.set_status(self._status(self._error))
        span.end()

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self.provider.shutdown()
