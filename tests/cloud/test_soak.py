"""A bounded soak on 127.0.0.1: many users, 64 concurrent clients, nothing fails, memory stays flat.

The API runs as its own process over a registry of users with adapters; the
load generator (``userlayer.tools.bench.api.run_load``, no retries) sends a
fixed number of requests from 64 clients and stops by itself. Every answer
is a 200, or a designed 503 with ``Retry-After``; the RSS of the server's
processes (launcher, API worker, engine core) after the run is within a
bound of their RSS after the warm-up. ``USERLAYER_SOAK_REQUESTS``
sets the count (2,000 in ``make test``; ``make soak`` sends 20,000).
"""

from __future__ import annotations

import os
from pathlib import Path

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


def _rss(server: psutil.Process) -> int:
    """RSS of the server and its children (the engine core, API workers)."""
    procs = [server, *server.children(recursive=True)]
    assert any("userlayer.cloud.core" in " ".join(p.cmdline()) for p in procs)  # split
    return sum(p.memory_info().rss for p in procs)


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
        rss0 = _rss(server)
        res = run_load(api.url, api.key, request_bodies(e.table, REQUESTS, USERS, 0.2, 2), CLIENTS)
        rss1 = _rss(server)
    print(  # the summary `make soak` shows
        f"\nsoak: {res['sent']} requests, {CLIENTS} clients, {USERS} users with adapters: "
        f"statuses {res['status']}, {res['requests_per_s']:.0f} req/s, p50 {res['p50_ms']:.0f} ms, "
        f"p99 {res['p99_ms']:.0f} ms, personalized {res['personalized_share']:.0%}; "
        f"server RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB"
    )
    # no failures but designed 503s (0 would be a transport error: a lost request)
    assert set(res["status"]) <= {200, 503}, (res["status"], res["transport_errors"])
    assert res["missing_retry_after"] == 0
    assert res["ok"] >= 0.9 * REQUESTS  # 64 clients fit in the default queue
    assert 0.6 < res["personalized_share"] < 0.95  # users with and without adapters
    # the RAM tier (64) and slots (128) are smaller than the 300 users: they turn over
    assert rss1 - rss0 < 64 * 2**20, (rss0, rss1)
