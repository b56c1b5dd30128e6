"""Prometheus metrics of st-serve (names after text-embeddings-inference's ``te_*``, prefixed ``st_``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_TOKENS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class Metrics:
    """One registry per server (so that several apps in one process, as in tests, never collide)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "st_request_count", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.in_flight = Gauge("st_requests_in_flight", "requests being handled now", registry=r)
        self.queue_size = Gauge("st_queue_size", "texts and images waiting for a batch", ["model"], registry=r)
        self.batch_size = Histogram(
            "st_batch_size", "items per batch the worker ran", ["model"], buckets=_COUNTS, registry=r
        )
        self.batch_tokens = Histogram(
            "st_batch_tokens", "real tokens per batch the worker ran", ["model"], buckets=_TOKENS, registry=r
        )
        self.batch_seconds = Histogram(
            "st_batch_duration_seconds", "time to run one batch", ["model"], buckets=_SECONDS, registry=r
        )
        self.request_seconds = Histogram(
            "st_request_duration_seconds",
            "request time by phase: queue (waiting), tokenization, inference (its batch), total (in the server)",
            ["model", "phase"],
            buckets=_SECONDS,
            registry=r,
        )
        self.request_items = Histogram("st_request_items", "inputs per request", ["model"], buckets=_COUNTS, registry=r)
        self.connections_closed = Counter(
            "st_connections_closed",
            "connections closed or refused by a limit (serve/limits.py), by reason",
            ["reason"],
            registry=r,
        )
        # labelled children, looked up once (prometheus_client's labels() takes a lock and builds a key per call)
        self._request_children: dict[tuple[str, int], Any] = {}
        self._job_children: dict[str, tuple] = {}

    def count_request(self, route: str, status: int) -> None:
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[(route, status)] = self.requests.labels(route=route, status=str(status))
        child.inc()

    def connection_event(self, reason: str) -> None:
        self.connections_closed.labels(reason=reason).inc()

    def track_connections(self, count_fn) -> None:
        Gauge("st_open_connections", "open HTTP connections", registry=self.registry).set_function(count_fn)

    def track_queue(self, model: str, size_fn) -> None:
        self.queue_size.labels(model=model).set_function(size_fn)

    def batch_observer(self, model: str):
        size, tokens, seconds = (
            self.batch_size.labels(model=model),
            self.batch_tokens.labels(model=model),
            self.batch_seconds.labels(model=model),
        )

        def observe(rows: int, n_tokens: int, elapsed: float) -> None:
            size.observe(rows)
            if n_tokens:
                tokens.observe(n_tokens)
            seconds.observe(elapsed)

        return observe

    def observe_job(self, model: str, job, total: float) -> None:
        children = self._job_children.get(model)
        if children is None:
            h = self.request_seconds
            phases = [h.labels(model=model, phase=p) for p in ("queue", "tokenization", "inference", "total")]
            children = self._job_children[model] = (*phases, self.request_items.labels(model=model))
        queue, tokenization, inference, whole, items = children
        queue.observe(job.queue_s)
        tokenization.observe(job.tokenize_s)
        inference.observe(job.inference_s)
        whole.observe(total)
        items.observe(job.size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
