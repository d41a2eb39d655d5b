"""The inference API (FastAPI): recommendations, adapter uploads, signers, forgetting, ops.

``create_app(settings)`` builds the registry and reaches the engine: the
engine core process at ``settings.engine_socket`` (what ``userlayer serve``
runs: one core, ``workers`` uvicorn workers), else an engine and batcher in
this process. Every route but ``/healthz`` and
``/readyz`` needs an API key (``Authorization: Bearer ul_<id>_<secret>`` or
``X-API-Key``) whose tenant is the request's service (or admin) and whose
scopes include the route's. User routes act on the key's service; an admin
key names it with ``?service=``. ``/metrics`` and ``/openapi.json`` need an
admin key (unless ``metrics_public`` / ``docs_public``), and ``/readyz``
tells anyone only whether it is ready (its checks are for admin keys).
Errors are JSON ``{"detail": ...}`` with a 4xx status; 503 (queue full,
store or engine down) carries ``Retry-After``.

Request bodies are counted as they arrive by a pure ASGI middleware, before
authentication: a body past ``max_body_bytes`` (declared or chunked) gets 413
and is not read further. Registry calls run in worker threads, never on the
event loop, so a slow or unreachable database cannot stall ``/healthz``; the
registry connects lazily, so the API starts while its database is down.
"""

from __future__ import annotations

from userlayer.cloud.api.app import create_app

__all__ = ["create_app"]
