"""st-serve's OpenAPI document: generated from the typed requests, served at /openapi.json (and /docs), and
fuzzed with schemathesis against a running server holding one model of each kind: no 5xx, every response
(errors included) matching the document. Bounded: a few examples per operation."""

from __future__ import annotations

import itertools

import httpx
import pytest
from conftest import Server
from helpers import needs_export

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = needs_export
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, fixtures_dir):
    from tiny_models import build_tiny_cross_encoder, build_tiny_sparse_encoder

    from exporters import export_model

    root = tmp_path_factory.mktemp("openapi")
    ce = export_model(
        str(build_tiny_cross_encoder(root / "ce-src", "bert")), output=root / "ce", variants=[], log=lambda _m: None
    )
    sp = export_model(
        str(build_tiny_sparse_encoder(root / "sp-src", "bert", max_active_dims=20)),
        output=root / "sp",
        variants=[],
        log=lambda _m: None,
    )
    folders = [fixtures_dir / "bert" / "export", fixtures_dir / "clip" / "export", ce, sp]
    names = [a for n in ("bert", "clip", "reranker", "splade") for a in ("--served-model-name", n)]
    server = Server([*map(str, folders), *names, "--max-client-batch-size", "16"], root / "serve.log").wait_ready()
    yield server
    assert server.stop() == 0, server.output()


def test_the_document_lists_every_dialect(api_server):
    doc = httpx.get(api_server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    paths = "/ /embed /v1/embeddings /v1/rerank /v2/rerank /v2/embed /rerank /predict /embed_sparse /embed_all"
    for path in (*paths.split(), "/similarity", "/decode", "/tokenize", "/invocations", "/vertex", "/ping"):
        assert path in doc["paths"], path
    embed = doc["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"} <= set(
        embed["properties"]
    )
    assert embed["properties"]["model"]["enum"] == ["bert", "clip"]  # the models whose kind answers /embed
    rerank = doc["paths"]["/v2/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert rerank["required"] == ["query", "documents"] and rerank["properties"]["model"]["enum"] == ["reranker"]
    from jsonschema import Draft202012Validator  # OpenAPI 3.1's schemas are JSON Schema 2020-12

    schemas = [
        media["schema"]
        for item in doc["paths"].values()
        for op in item.values()
        for part in (op.get("requestBody", {}), *op["responses"].values())
        for media in part.get("content", {}).values()
    ]
    assert len(schemas) > 40
    for sch in schemas:
        Draft202012Validator.check_schema(sch)
    page = httpx.get(api_server.url + "/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text and "openapi.json" in page.text


def test_schemathesis_finds_nothing(api_server):
    """Every operation, a few generated requests each, valid and invalid: no 5xx, every status, content type and
    body as the document says; the server still healthy after."""
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json")
    failures = []
    calls = dict.fromkeys(GenerationMode, 0)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20

    # valid requests, and requests that break the schema (wrong types, missing fields): never a 5xx, and the
    # refusals too in the shape the document declares
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=6,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        def run(case):
            calls[case.meta.generation.mode] += 1
            case.call_and_validate(base_url=api_server.url, checks=CHECKS, timeout=30)

        try:
            run()
        except Unsatisfiable:  # nothing to break: an operation without a body or parameters
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    assert min(calls.values()) > 50, calls
    assert httpx.get(api_server.url + "/health").status_code == 200
