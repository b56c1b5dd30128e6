"""The embedding server users write by hand: a peer for benchmarks/serve.py.

FastAPI + sentence-transformers, as in the tutorials: the model is loaded once, and every request
calls `model.encode(texts)` once, in a sync (`def`) endpoint, which FastAPI runs in its thread pool,
so concurrent requests encode concurrently on the same model, without any batching across requests.

    .venv-serve-peers/bin/python -m benchmarks.serve_peers.plain_fastapi --model NAME_OR_DIR --port P --threads N

(from the repository root, in the venv made by scripts/setup-serve-peers.sh). It binds 127.0.0.1 with one
uvicorn worker. Endpoints:
    POST /v1/embeddings  OpenAI's request {"input": str | [str, ...], "model": ...} and response shape
    GET  /health         200 {"status": "ok"} once the model is loaded (uvicorn starts only after it is)
This file imports nothing from st_runtime.
"""

from __future__ import annotations

import argparse

import orjson
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None


def create_app(model: SentenceTransformer, served_name: str) -> FastAPI:
    app = FastAPI(title="plain FastAPI + sentence-transformers")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(request: EmbeddingRequest) -> Response:
        texts = [request.input] if isinstance(request.input, str) else request.input
        vectors = model.encode(texts)  # float32 array (n, dim); one call per request
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": request.model or served_name,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level; access log is off")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device=args.device)
    app = create_app(model, args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
