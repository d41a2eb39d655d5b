"""A lean HTTP/1.1 load generator: one keep-alive connection per client, asyncio streams.

httpx costs the load generator about 4 ms of CPU per request at 32 clients
and 20 ms at 256 (``experiments/api_load_limits.py``: 2,000 requests to
``/healthz`` took 7.9 s of client CPU against 1.1 s of server CPU), so on a
shared 2-core machine it measured itself, not the server. This client
writes each request with precomputed headers and reads the answer by its
``Content-Length`` (what uvicorn sends for these routes), as wrk does; no
retries, no redirects, TLS or chunked bodies (a chunked answer is an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from userlayer.tools.exceptions import ToolsError

__all__ = ["Answer", "post_json_load"]


@dataclass
class Answer:
    """One request's outcome: status (0: a transport error), seconds, headers, body."""

    status: int
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for ln in lines[1:]:
            if ln:
                k, _, v = ln.partition(":")
                headers[k.strip().lower()] = v.strip()
        if "content-length" not in headers:
            raise ToolsError(f"an answer without Content-Length: {lines[0]}")
        data = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data


async def post_json_load(
    url: str, path: str, key: str, bodies: list[dict[str, Any]], clients: int, timeout: float = 60
) -> tuple[list[Answer], float]:
    """POST each of ``bodies`` as JSON from ``clients`` keep-alive connections.

    Returns the answers (in completion order) and the wall seconds.
    """
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(json.dumps(b, separators=(",", ":")).encode())
    answers: list[Answer] = []

    async def client() -> None:
        conn = _Conn(host, port)
        try:
            while True:
                try:
                    payload = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                try:
                    status, headers, data = await asyncio.wait_for(
                        conn.request(head, payload), timeout
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                    conn.close()
                    answers.append(Answer(0, time.perf_counter() - t0, error=type(e).__name__))
                    continue
                answers.append(Answer(status, time.perf_counter() - t0, headers, data))
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return answers, time.perf_counter() - t0
