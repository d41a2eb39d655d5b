"""The registry store (PostgreSQL) black-holed, not just stopped: the API never freezes.

Defect (issue 18): registry calls ran synchronously in ``async`` handlers over one
connection behind one lock, with a 5 s connect timeout per user and no statement timeout,
so a database that neither answered nor refused froze the whole API (``/healthz``
included), and the API could not even start while its database was down.

Here PostgreSQL sits behind a TCP relay on 127.0.0.1 (``tests/netproxy.py``) that can
forward nothing while keeping every connection open. The API process starts while the path
is black-holed (``/healthz`` answers, ``/readyz`` says unready), becomes ready when it comes
back, then serves clients and a ``/healthz`` prober through a second black-hole: every
recommendation is answered (by the base model, flagged, within the store deadline),
``/healthz`` stays fast, and the API personalizes again once the path is back.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.cloud.load import RecommendLoad
from tests.netproxy import TcpProxy
from tests.pg import PgServer
from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.registry import AdapterRegistry
from userlayer.cloud.service import UNAVAILABLE
from userlayer.sdk.crypto import LocalKeyFile
from userlayer.tools.bench.adapters import random_adapter, register_users
from userlayer.tools.bench.api import request_bodies
from userlayer.tools.procs import ApiProcess

USERS = 30
CLIENTS = 4
PHASE_S = 4.0
HOLE_S = 8.0


def _p(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@pytest.mark.slow
def test_a_blackholed_store_never_freezes_the_api(
    postgres: PgServer, tmp_path: Path, tiny_model_dir: Path
) -> None:
    e = Engine(tiny_model_dir, EngineConfig(backend="torch", slots=1))
    kek = tmp_path / "kek.json"
    dsn = postgres.dsn.replace("/registry", "/blackhole")
    import psycopg

    with psycopg.connect(postgres.dsn.replace("/registry", "/postgres"), autocommit=True) as con:
        con.execute("CREATE DATABASE blackhole")
    reg = AdapterRegistry(dsn, e.fingerprint, e.shapes, keys=LocalKeyFile(kek, create=True))
    register_users(reg, USERS, random_adapter(e.shapes, 0), e.fingerprint, e.acfg)
    reg.close()
    proxy = TcpProxy(postgres.port)
    proxied = dsn.replace(f":{postgres.port}/", f":{proxy.port}/")
    bodies = request_bodies(e.table, 200, USERS, 0.0, 3)
    env = {
        "USERLAYER_BACKEND": "torch",
        "USERLAYER_KEK_FILE": str(kek),
        "USERLAYER_SLOTS": "64",
        "USERLAYER_STORE_DEADLINE_MS": "300",
        "USERLAYER_STORE_CALL_TIMEOUT_MS": "2000",
        "USERLAYER_STORE_CONNECT_TIMEOUT_S": "2",
        "USERLAYER_RATE_LIMIT": "0",  # one key sends everything
    }
    proxy.blackhole()  # the database is unreachable before the API even starts
    probes: list[tuple[float, float]] = []
    stop = threading.Event()

    def prober(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                t = time.monotonic()
                assert http.get("/healthz").status_code == 200
                probes.append((t, time.monotonic() - t))
                time.sleep(0.05)

    try:
        with ApiProcess(tiny_model_dir, proxied, tmp_path / "api.log", env) as api:
            t0 = time.monotonic()
            api.wait_ready(timeout=120, path="/healthz")
            started = time.monotonic() - t0
            assert httpx.get(f"{api.url}/readyz", timeout=10).status_code == 503
            proxy.restore()
            api.wait_ready(timeout=60)
            probe = threading.Thread(target=prober, args=(api.url,))
            probe.start()
            try:
                with RecommendLoad(api.url, api.key, bodies, CLIENTS) as load:
                    time.sleep(PHASE_S)
                    hole = time.monotonic()
                    proxy.blackhole()
                    time.sleep(HOLE_S)
                    back = time.monotonic()
                    proxy.restore()
                    api.wait_ready(timeout=60)
                    up = time.monotonic()
                    time.sleep(PHASE_S)
            finally:
                stop.set()
                probe.join(60)
    finally:
        proxy.close()
    errors = load.errors
    answers = [(a.sent, a.seconds, a.status, a.body) for a in load.answers]
    assert not errors, errors[:5]
    during = [a for a in answers if hole < a[0] and a[0] + a[1] < back]
    after = [a for a in answers if a[0] > up + 1.0]
    in_hole = [d for t, d in probes if hole < t < back]
    lat = [a[1] for a in during]
    print(  # the figures docs/reliability.md records
        f"\nblack-holed store: API started in {started:.1f} s with the store unreachable; "
        f"{len(answers)} recommends, {len(during)} during the {HOLE_S:.0f} s hole "
        f"(statuses {sorted({a[2] for a in during})}, fallback "
        f"{sum(a[3].get('reason') == UNAVAILABLE for a in during)}), latency p50 "
        f"{statistics.median(lat) * 1000:.0f} ms p99 {_p(lat, 0.99) * 1000:.0f} ms max "
        f"{max(lat) * 1000:.0f} ms; /healthz during the hole: {len(in_hole)} probes, p50 "
        f"{statistics.median(in_hole) * 1000:.1f} ms max {max(in_hole) * 1000:.1f} ms; "
        f"ready {up - back:.1f} s after the path came back; after: {len(after)} "
        f"({sum(bool(a[3].get('personalized')) for a in after)} personalized)"
    )
    assert started < 60
    assert len(during) > 10 and {a[2] for a in during} <= {200, 503}
    assert all(a[3].get("personalized") is False for a in during if a[2] == 200)
    assert max(lat) < 5.0  # bounded by the deadlines, never the TCP timeouts
    assert len(in_hole) > 20 and max(in_hole) < 1.0  # the event loop never waits on the store
    assert after and all(a[2] == 200 and a[3].get("personalized") for a in after)
