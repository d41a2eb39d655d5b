"""The registry store (PostgreSQL) goes down under load: the API falls back, says so, and recovers.

The API runs as its own process on a real PostgreSQL registry; clients send
recommend requests for users with adapters the whole time. The PostgreSQL
server is stopped for a few seconds and started again. Every request gets a
200 (or a designed 503 with ``Retry-After``); every request sent while the
store is down is served by the base model with the reason "adapter store
unavailable" (the API cannot know whether a newer version or a deletion is
in the store, so it does not serve a cached adapter); ``/readyz`` answers 503
meanwhile; every request sent after the store is back is personalized again,
without a restart of the API.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.cloud.load import RecommendLoad
from tests.pg import PgServer
from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.registry import AdapterRegistry
from userlayer.cloud.service import UNAVAILABLE
from userlayer.sdk.crypto import LocalKeyFile
from userlayer.tools.bench.adapters import random_adapter, register_users
from userlayer.tools.bench.api import request_bodies, run_load
from userlayer.tools.procs import ApiProcess

USERS = 40
CLIENTS = 6
PHASE_S = 4.0


def _wait_ready(api: ApiProcess, want: int, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if httpx.get(f"{api.url}/readyz", timeout=10).status_code == want:
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"/readyz did not answer {want} within {timeout:.0f} s")


@pytest.mark.slow
def test_store_outage_under_load_falls_back_and_recovers(
    postgres: PgServer, tmp_path: Path, tiny_model_dir: Path
) -> None:
    e = Engine(tiny_model_dir, EngineConfig(backend="torch", slots=1))
    kek = tmp_path / "kek.json"
    reg = AdapterRegistry(
        postgres.dsn, e.fingerprint, e.shapes, keys=LocalKeyFile(kek, create=True)
    )
    register_users(reg, USERS, random_adapter(e.shapes, 0), e.fingerprint, e.acfg)
    reg.close()
    bodies = request_bodies(e.table, 400, USERS, 0.0, 3)  # every user has an adapter
    env = {
        "USERLAYER_BACKEND": "torch",
        "USERLAYER_KEK_FILE": str(kek),
        "USERLAYER_SLOTS": "64",
        "USERLAYER_RATE_LIMIT": "0",  # one key sends everything, faster than 200/s
    }
    with ApiProcess(tiny_model_dir, postgres.dsn, tmp_path / "api.log", env) as api:
        api.wait_ready()
        # warm-up: the engine's first batches and every user's first (cold) load, so the
        # phase before the outage measures the steady state
        warm = run_load(api.url, api.key, bodies[: 2 * USERS], CLIENTS)
        assert warm["ok"] == warm["sent"], warm
        try:
            with RecommendLoad(api.url, api.key, bodies, CLIENTS) as load:
                time.sleep(PHASE_S)
                postgres.stop()
                down = time.monotonic()
                _wait_ready(api, 503)
                time.sleep(PHASE_S)
                postgres.start()
                back = time.monotonic()
                up = _wait_ready(api, 200)
                time.sleep(PHASE_S)
        finally:
            if postgres.proc is None:
                postgres.start()  # the session's other tests need it
    answers, errors = load.answers, load.errors
    assert not errors, errors[:5]  # no request lost
    assert {a.status for a in answers} <= {200, 503}
    assert all(a.retry_after for a in answers if a.status == 503)
    ok = [a for a in answers if a.status == 200]
    before = [a for a in ok if a.sent < down - 0.5]
    during = [a for a in ok if down < a.sent and a.sent + 0.5 < back]
    after = [a for a in ok if a.sent > up]
    print(  # the figures docs/reliability.md records
        f"\nstore outage: {len(answers)} requests, statuses "
        f"{sorted({a.status for a in answers})}; before {len(before)} "
        f"(personalized {sum(bool(a.personalized) for a in before)}), during {len(during)} "
        f"(fallback {sum(a.reason == UNAVAILABLE for a in during)}), after {len(after)} "
        f"(personalized {sum(bool(a.personalized) for a in after)}); "
        f"outage {back - down:.1f} s, ready again {up - back:.1f} s after the store"
    )
    assert len(before) > 10 and len(during) > 10 and len(after) > 10
    assert all(a.personalized for a in before), [a.reason for a in before if not a.personalized]
    assert all(a.personalized is False and a.reason == UNAVAILABLE for a in during)
    assert all(a.personalized for a in after)
