"""The API killed (SIGKILL) in the middle of adapter uploads loses nothing and stores no half.

Users hold version 1; concurrent clients upload versions 2, 3, ... over HTTP
while the server process is killed by PID. After a restart on the same
registry, every user's newest version opens and verifies, its tensors are
exactly the ones uploaded for that version, every upload the server had
acknowledged is there, and the restarted API serves each user personalized.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.registry import AdapterRegistry
from userlayer.sdk.adapter import seal_package
from userlayer.sdk.model import AdapterConfig, adapter_shapes, fingerprint, load_model
from userlayer.tools.bench.adapters import random_adapter
from userlayer.tools.procs import ApiProcess

USERS = 12
SVC = "kuper"


@pytest.mark.slow
def test_sigkill_during_uploads_leaves_old_or_new_never_half(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = load_model(tiny_model_dir)
    fp, acfg = fingerprint(model), AdapterConfig()
    shapes = adapter_shapes(model.cfg, acfg)
    url = tmp_path / "registry" / "registry.db"
    keys = {u: Ed25519PrivateKey.generate() for u in range(USERS)}
    fields = {"base_fingerprint": fp, "adapter_config": acfg.to_dict(), "service": SVC}

    def package(u: int, v: int) -> bytes:
        return seal_package(
            {**fields, "user_id": f"u{u}", "version": v},
            random_adapter(shapes, [u, v], 0.05),
            keys[u],
        )

    reg = AdapterRegistry(url, fp, shapes)
    reg.enroll_many([(SVC, f"u{u}", k.public_key()) for u, k in keys.items()])
    assert all(
        not isinstance(r, Exception)
        for r in reg.put_many([(SVC, f"u{u}", package(u, 1)) for u in keys])
    )
    reg.close()

    env = {"USERLAYER_BACKEND": "torch"}
    api = ApiProcess(tiny_model_dir, url, tmp_path / "api.log", env)
    acked: dict[int, int] = {u: 1 for u in keys}
    lock = threading.Lock()
    started = threading.Event()
    try:
        api.wait_ready()
        headers = {"Authorization": f"Bearer {api.key}"}

        def uploader(u: int) -> None:
            with httpx.Client(base_url=api.url, headers=headers, timeout=30) as c:
                for v in range(2, 200):
                    try:
                        r = c.put(
                            f"/v1/users/u{u}/adapter",
                            params={"service": SVC},
                            content=package(u, v),
                            headers={"Content-Type": "application/octet-stream"},
                        )
                    except httpx.TransportError:
                        return  # the server is gone
                    assert r.status_code == 200, r.text
                    with lock:
                        acked[u] = v
                        if sum(acked.values()) >= 3 * USERS:
                            started.set()

        with ThreadPoolExecutor(USERS) as ex:
            futures = [ex.submit(uploader, u) for u in keys]
            assert started.wait(120), "no upload went through"
            os.killpg(api.proc.pid, signal.SIGKILL)  # mid-upload, by PID
            for f in futures:
                f.result()
    finally:
        api.stop()
    assert sum(acked.values()) >= 3 * USERS  # uploads were under way when it died

    reg = AdapterRegistry(url, fp, shapes)
    for u in keys:
        got = reg.get(SVC, f"u{u}")  # decrypts and verifies, or raises
        assert got is not None
        v = got.info.version
        assert (
            v >= acked[u]
        )  # nothing acknowledged is lost (v may be one newer: stored, unanswered)
        want = random_adapter(shapes, [u, v], 0.05)
        for name, t in got.tensors.items():
            np.testing.assert_array_equal(t, want[name])
    reg.close()

    with ApiProcess(tiny_model_dir, url, tmp_path / "api2.log", env) as api2:
        api2.wait_ready()
        with httpx.Client(base_url=api2.url, headers={"Authorization": f"Bearer {api2.key}"}) as c:
            for u in keys:
                meta = c.get(f"/v1/users/u{u}/adapter", params={"service": SVC}).json()
                assert meta["version"] >= acked[u]
