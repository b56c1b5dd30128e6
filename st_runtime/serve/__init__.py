"""st-serve, the HTTP server (the ``[serve]`` extra: Starlette, uvicorn, prometheus_client, orjson).

``import st_runtime`` never imports this package; ``st-serve --help`` and :func:`st_runtime.serve.app.create_app`
do. :mod:`.batcher` (cross-request batching) needs no web framework."""
