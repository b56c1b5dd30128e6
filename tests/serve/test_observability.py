"""st-serve's --otlp-endpoint (spans received by an in-process OTLP/HTTP collector), --prometheus-port,
--cors-allow-origin and --json-logs, on a real server subprocess."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import free_port

pytest.importorskip("opentelemetry.sdk", reason="needs the tracing extra: pip install 'st-runtime[tracing]'")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
ORIGIN = "http://app.example"


class Collector:
    """An OTLP/HTTP trace collector on 127.0.0.1: every span it receives, as (span, {attribute: value})."""

    def __init__(self):
        self.spans: list = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            attrs = {a.key: _value(a.value) for a in span.attributes}
                            collector.spans.append((span, attrs))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, route: str, count: int, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s[1].get("http.route") == route]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no span for {route} within {timeout} s; got {[s[1] for s in self.spans]}")


def _value(v):
    return getattr(v, v.WhichOneof("value"))


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.server.shutdown()


def test_spans_metrics_port_cors_and_json_logs(start_server, fixtures_dir, collector, monkeypatch):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 0.1 s instead of 5 s
    prom = free_port()
    server = start_server(
        fixtures_dir / "bert" / "export",
        "--otlp-endpoint", collector.url,
        "--prometheus-port", prom,
        "--cors-allow-origin", ORIGIN,
        "--json-logs",
    )  # fmt: skip
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    r = httpx.post(server.url + "/embed", json={"inputs": ["a", "How big is London"]}, headers=headers, timeout=30)
    assert r.status_code == 200
    assert httpx.post(server.url + "/embed", json={"inputs": 3}, timeout=30).status_code == 422

    spans = collector.wait_for("/embed", 2)
    ok = [(s, a) for s, a in spans if a["http.response.status_code"] == 200]
    assert ok and [(s, a) for s, a in spans if a["http.response.status_code"] == 422]
    span, attrs = ok[0]
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID  # the client's trace goes on
    assert span.name == "POST /embed"
    for phase in ("queue", "tokenization", "inference"):
        assert attrs[f"st_serve.{phase}_ms"] >= 0
    assert attrs["st_serve.inference_ms"] > 0

    metrics = httpx.get(f"http://127.0.0.1:{prom}/metrics", timeout=10).text
    assert 'st_request_count_total{route="/embed",status="200"} 1.0' in metrics

    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    pre = httpx.options(server.url + "/embed", headers=preflight, timeout=10)
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(server.url + "/embed", headers={**preflight, "Origin": "http://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers
    actual = httpx.post(server.url + "/embed", json={"inputs": "a"}, headers={"Origin": ORIGIN}, timeout=30)
    assert actual.status_code == 200 and actual.headers["access-control-allow-origin"] == ORIGIN

    assert server.stop() == 0
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in lines]
    assert any("ready: serving" in m for m in messages) and any("/embed" in m for m in messages)  # access log
    assert all(set(entry) >= {"timestamp", "level", "logger", "message"} for entry in lines)
    stray = [line for line in server.output().splitlines() if line.strip() and not line.startswith("{")]
    assert not stray, stray
