"""Recommendation clients in threads, recording every answer: the load of the outage tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["Answer", "RecommendLoad"]


@dataclass(frozen=True)
class Answer:
    """One request's fate."""

    sent: float  # time.monotonic() when sent
    seconds: float
    status: int
    body: dict[str, Any]
    retry_after: bool

    @property
    def personalized(self) -> bool | None:
        """The answer's ``personalized`` (None for a non-200)."""
        return self.body.get("personalized")

    @property
    def reason(self) -> str | None:
        """Why not personalized."""
        return self.body.get("reason")


@dataclass
class RecommendLoad:
    """``clients`` threads posting ``bodies`` in turn until the context exits."""

    url: str
    key: str
    bodies: list[dict[str, Any]]
    clients: int
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,)) for c in range(self.clients)]

    def _run(self, c: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            i = c
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    r = http.post("/v1/recommend", json=self.bodies[i % len(self.bodies)])
                except httpx.TransportError as ex:
                    with self._lock:
                        self.errors.append(f"{type(ex).__name__}: {ex}")
                    continue
                body = r.json() if r.status_code == 200 else {}
                a = Answer(t, time.monotonic() - t, r.status_code, body, "retry-after" in r.headers)
                with self._lock:
                    self.answers.append(a)
                i += self.clients

    def __enter__(self) -> RecommendLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
