"""`ftkit serve`: finished runs behind an HTTP API (FastAPI on uvicorn, the optional ``serve`` extra).

- ``pool``: what each RUN names, loading (adapter runs on one base share it), running a batch on a model;
- ``batcher``: dynamic batching with a bounded queue;
- ``generate``: batched generation with per-request sampling, stop strings and streams;
- ``api``: the routes, request checks, errors in OpenAI's shape, the API key and the access log;
- ``server``: binding, loading in the background, graceful shutdown on SIGTERM.
"""
