"""``userlayer serve`` as it runs: the engine core apart, two API workers; crashes of either side.

A SIGKILLed engine core is detected at once (waiting requests answered 503
with Retry-After, never a hang or a 500) and restarted; a SIGKILLed API
worker is replaced by uvicorn while the other worker keeps answering.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from userlayer.cloud.registry import AdapterRegistry
from userlayer.sdk.model import AdapterConfig, adapter_shapes
from userlayer.sdk.model.io import fingerprint, load_model
from userlayer.tools.bench.adapters import random_adapter, register_users
from userlayer.tools.procs import ApiProcess, group_members

pytestmark = pytest.mark.slow


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _roles(api: ApiProcess) -> tuple[list[int], list[int]]:
    """(engine core pids, API worker pids) in the server's process group."""
    members = group_members(api.proc.pid)
    cores = [p for p in members if "userlayer.cloud.core" in _cmdline(p)]
    workers = [
        p for p in members if "multiprocessing" in _cmdline(p) and "spawn_main" in _cmdline(p)
    ]
    return cores, workers


@pytest.fixture
def api(tiny_model_dir: Path, tmp_path: Path) -> ApiProcess:
    model = load_model(tiny_model_dir)
    fp, acfg = fingerprint(model), AdapterConfig()
    shapes = adapter_shapes(model.cfg, acfg)
    db = tmp_path / "registry.db"
    reg = AdapterRegistry(db, fp, shapes)
    register_users(reg, 8, random_adapter(shapes, 0), fp, acfg)
    reg.close()
    env = {"USERLAYER_BACKEND": "torch", "USERLAYER_WORKERS": "2"}
    return ApiProcess(tiny_model_dir, db, tmp_path / "api.log", env)


def _body(i: int) -> dict[str, object]:
    return {"user_id": f"u{i % 8:07d}", "service": "megamarket", "k": 5}


def _post(url: str, key: str, i: int) -> int | str:
    try:
        r = httpx.post(
            f"{url}/v1/recommend",
            json=_body(i),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
    except httpx.TransportError as e:
        return type(e).__name__
    if r.status_code == 503:
        assert int(r.headers["Retry-After"]) >= 1
    return r.status_code


def test_engine_core_crash_is_answered_503_then_restarted(api: ApiProcess) -> None:
    with api:
        api.wait_ready()
        assert {_post(api.url, api.key, i) for i in range(8)} == {200}
        (core,), workers = _roles(api)
        assert len(workers) == 2
        with ThreadPoolExecutor(8) as pool:
            during = pool.map(lambda i: _post(api.url, api.key, i), range(64))
            time.sleep(0.05)
            os.kill(core, signal.SIGKILL)
            t0 = time.monotonic()
            codes = list(during)
        assert time.monotonic() - t0 < 30  # nobody hung
        assert set(codes) <= {200, 503}, codes
        deadline = time.monotonic() + 60
        while _post(api.url, api.key, 0) != 200:  # restarted; the workers reconnect
            assert time.monotonic() < deadline, "the engine core did not come back"
            time.sleep(0.5)
        (new_core,), _ = _roles(api)
        assert new_core != core
        assert {_post(api.url, api.key, i) for i in range(16)} == {200}
        os.kill(new_core, signal.SIGTERM)  # a clean exit not asked by serve: restarted too
        deadline = time.monotonic() + 60
        while True:
            cores, _ = _roles(api)
            if cores and cores[0] != new_core and _post(api.url, api.key, 0) == 200:
                break
            assert time.monotonic() < deadline, "the engine core did not come back"
            time.sleep(0.5)
    assert "restarting" in api.log.read_text()


def test_api_worker_crash_is_replaced_and_the_other_worker_answers(api: ApiProcess) -> None:
    with api:
        api.wait_ready()
        (core,), workers = _roles(api)
        os.kill(workers[0], signal.SIGKILL)
        # new connections go to the live worker (they share the listening socket)
        codes = [_post(api.url, api.key, i) for i in range(20)]
        assert codes.count(200) >= 19, codes
        deadline = time.monotonic() + 60
        while True:
            (core_now,), now = _roles(api)
            if len(now) == 2 and workers[0] not in now:
                break
            assert time.monotonic() < deadline, f"no replacement worker: {now}"
            time.sleep(0.5)
        assert core_now == core  # the engine core was not touched
        assert {_post(api.url, api.key, i) for i in range(16)} == {200}
        os.kill(api.proc.pid, signal.SIGKILL)  # the launcher itself: its core must not linger
        deadline = time.monotonic() + 15
        while psutil.pid_exists(core) and psutil.Process(core).status() != "zombie":
            assert time.monotonic() < deadline, "an orphaned engine core kept running"
            time.sleep(0.2)
