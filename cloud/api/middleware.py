"""ASGI middleware of the API: the body limit and the request metrics."""

from __future__ import annotations

import contextlib
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from userlayer.cloud.metrics import Metrics

__all__ = ["BodyLimit", "RequestMetrics"]


class BodyLimit:
    """Pure ASGI middleware: 413 for a body past ``max_bytes``, counted as it arrives.

    It reads the declared ``Content-Length`` first and then counts the bytes of
    every ``http.request`` message, so a chunked body of any size is cut off
    after ``max_bytes`` (before authentication or any handler buffers it).
    """

    class _TooLargeError(Exception):
        pass

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send: Send) -> None:
        body = f'{{"detail":"body larger than {self.max_bytes} bytes"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection's request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        over = started = False

        async def counted() -> Message:
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyLimit._TooLargeError
            return msg

        async def watched(msg: Message) -> None:
            nonlocal started
            if over and not started:  # the app's answer to a cut-off body (FastAPI: 400)
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        with contextlib.suppress(BodyLimit._TooLargeError):
            await self.app(scope, counted, watched)
        if over and not started:
            await self._refuse(send)


class RequestMetrics:
    """Pure ASGI middleware: requests and latency per route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection's request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def watched(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
            await send(msg)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
