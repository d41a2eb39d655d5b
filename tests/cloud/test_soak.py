"""A bounded soak on 127.0.0.1: many users, 64 concurrent clients, nothing fails, memory stays flat.

The API runs as its own process over a registry of users with adapters; the
load generator (``userlayer.tools.bench.api.run_load``, no retries) sends a
fixed number of requests from 64 clients and stops by itself. Every answer
is a 200, or a designed 503 with ``Retry-After``. Memory: the RSS of the
engine core and of the API process after the last quarter of the run is
within a bound of their peak over the first half (the allocator settles
during the first quarters: the core's RSS moves by about 50 MiB either way
between 5,000-request runs, without a trend over 40,000). ``USERLAYER_SOAK_REQUESTS``
sets the count (2,000 in ``make test``; ``make soak`` sends 20,000).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.registry import AdapterRegistry
from userlayer.tools.bench.adapters import random_adapter, register_users
from userlayer.tools.bench.api import request_bodies, run_load
from userlayer.tools.procs import ApiProcess

REQUESTS = int(os.environ.get("USERLAYER_SOAK_REQUESTS", "2000"))
CLIENTS = 64
USERS = 300


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of the quarters' results (latency percentiles: the worst quarter's)."""
    status: Counter[int] = Counter()
    for p in parts:
        status.update(p["status"])
    ok = sum(p["ok"] for p in parts)
    return {
        "sent": sum(p["sent"] for p in parts),
        "ok": ok,
        "status": dict(status),
        "transport_errors": [p["transport_errors"] for p in parts if p["transport_errors"]],
        "missing_retry_after": sum(p["missing_retry_after"] for p in parts),
        "requests_per_s": statistics.median(p["requests_per_s"] for p in parts),
        "p50_ms": statistics.median(p["p50_ms"] for p in parts),
        "p99_ms": max(p["p99_ms"] for p in parts),
        "personalized_share": sum(p["personalized_share"] * p["ok"] for p in parts) / max(1, ok),
    }


def _rss(server: psutil.Process) -> dict[str, int]:
    """RSS of the server (launcher and API worker) and of its engine core child."""
    procs = [server, *server.children(recursive=True)]
    core = [p for p in procs if "userlayer.cloud.core" in " ".join(p.cmdline())]
    assert len(core) == 1  # the engine core apart
    return {
        "core": core[0].memory_info().rss,
        "api": sum(p.memory_info().rss for p in procs if p not in core),
    }


@pytest.mark.slow
def test_soak(tmp_path: Path, tiny_model_dir: Path) -> None:
    e = Engine(tiny_model_dir, EngineConfig(backend="torch", slots=1))
    reg = AdapterRegistry(tmp_path / "registry.db", e.fingerprint, e.shapes)
    register_users(reg, USERS, random_adapter(e.shapes, 0), e.fingerprint, e.acfg)
    reg.close()
    env = {
        "USERLAYER_BACKEND": "torch",
        "USERLAYER_SLOTS": "128",
        "USERLAYER_CACHE_SIZE": "64",
        "USERLAYER_RATE_LIMIT": "0",  # one key sends everything
    }
    with ApiProcess(tiny_model_dir, tmp_path / "registry.db", tmp_path / "api.log", env) as api:
        api.wait_ready()
        server = psutil.Process(api.proc.pid)
        run_load(api.url, api.key, request_bodies(e.table, 400, USERS, 0.2, 1), CLIENTS)  # warm-up
        bodies = request_bodies(e.table, REQUESTS, USERS, 0.2, 2)
        rss, parts = [], []
        for q in range(4):  # RSS after each quarter: the allocator's plateau, then no trend
            parts.append(run_load(api.url, api.key, bodies[q::4], CLIENTS))
            rss.append(_rss(server))
    res = _merge(parts)
    rss0 = {k: max(r[k] for r in rss[:2]) for k in rss[0]}
    rss1 = rss[-1]
    print(  # the summary `make soak` shows
        f"\nsoak: {res['sent']} requests, {CLIENTS} clients, {USERS} users with adapters: "
        f"statuses {res['status']}, {res['requests_per_s']:.0f} req/s, p50 {res['p50_ms']:.0f} ms, "
        f"p99 {res['p99_ms']:.0f} ms, personalized {res['personalized_share']:.0%}; "
        "RSS after each quarter "
        + "; ".join(f"{k} " + " ".join(f"{r[k] / 2**20:.0f}" for r in rss) + " MiB" for k in rss0)
    )
    # no failures but designed 503s (0 would be a transport error: a lost request)
    assert set(res["status"]) <= {200, 503}, (res["status"], res["transport_errors"])
    assert res["missing_retry_after"] == 0
    assert res["ok"] >= 0.9 * REQUESTS  # 64 clients fit in the default queue
    assert 0.6 < res["personalized_share"] < 0.95  # users with and without adapters
    # the RAM tier (64) and slots (128) are smaller than the 300 users: they turn over;
    # the last quarter holds no more than the first half's peak (+ allocator noise). The
    # core's RSS ratchets up under a busy machine's batches (CI, 2026-12-03: 400, 426, 465,
    # 492 MiB over 2,000 requests; alone: 460 flat, 376-415, 391-424), so the bound allows
    # 96 MiB (a leak of 48 KiB per request at 2,000; `make soak` sends 20,000: 4.8 KiB)
    noise = {"core": 96 * 2**20, "api": 48 * 2**20}
    assert all(rss1[k] - rss0[k] < noise[k] for k in rss0), rss
