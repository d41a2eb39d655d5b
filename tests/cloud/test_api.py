"""The inference API over real HTTP on 127.0.0.1 (uvicorn in a thread, ONNX Runtime engine).

Covers: health, readiness, OpenAPI, metrics; personalized and fallback
responses; upload freshness; concurrent users batched, each with their own
adapter; the tenant/scope matrix; bad input answered 4xx (never 5xx); a full
queue answered 503 with Retry-After; deletion everywhere.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.api import create_app
from userlayer.cloud.auth import KeyStore
from userlayer.cloud.core import EngineProcess
from userlayer.cloud.engine.export import export_onnx
from userlayer.cloud.settings import Settings
from userlayer.sdk.adapter import PrivacyRecord, key_id, seal_package
from userlayer.sdk.model import AdapterConfig, ModelConfig, new_adapter
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.procs import free_port

SERVICES = ("samokat", "megamarket", "kuper")


@dataclass
class Live:
    url: str
    keys: dict[str, str]
    model_dir: Path
    registry: Path
    items: dict[str, list[str]]  # service -> item ids
    cfg: ModelConfig
    fingerprint: str

    def client(self, who: str | None) -> httpx.Client:
        headers = {} if who is None else {"Authorization": f"Bearer {self.keys[who]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


class Server:
    """uvicorn on 127.0.0.1 in a thread; stopped in teardown.

    ``split`` (the default, as ``userlayer serve`` runs): the engine core in its
    own process, this app one API worker of it; else the engine in-process.
    """

    def __init__(self, settings: Settings, split: bool = True) -> None:
        self.port = free_port()
        self.core: EngineProcess | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        if split:
            self.tmp = tempfile.TemporaryDirectory(prefix="ul-core-")
            sock = Path(self.tmp.name) / "engine.sock"
            self.core = EngineProcess(sock, {**os.environ, **settings.to_env()})
            self.core.start(120)
            settings = settings.model_copy(update={"engine_socket": sock})
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > 60 or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        if self.core is not None:
            self.core.stop()
        if self.tmp is not None:
            self.tmp.cleanup()


def _settings(tmp: Path, model_dir: Path, keys_file: Path, **over: Any) -> Settings:
    kw: dict[str, Any] = {"max_wait_ms": 20, **over}
    return Settings(
        model_dir=model_dir, registry=str(tmp / "registry.db"), api_keys_file=keys_file, **kw
    )


@pytest.fixture(scope="module")
def live(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("api")
    model_dir = tmp / "model"
    import shutil

    shutil.copytree(tiny_model_dir, model_dir)
    export_onnx(model_dir, model_dir / "onnx")
    store = KeyStore(path=tmp / "keys.json")
    keys = {s: store.add(s, ("recommend", "upload", "delete")) for s in SERVICES[:2]}
    keys["kuper"] = store.add("kuper", ("recommend",))  # may not upload or delete
    keys["admin"] = store.add("admin", ("admin",))
    table = SemanticIdTable.load(model_dir / "sids.json")
    items: dict[str, list[str]] = {}
    for item, svc in sorted(table.services.items()):
        items.setdefault(svc.value, []).append(item)
    doc = json.loads((model_dir / "config.json").read_text())
    with Server(_settings(tmp, model_dir, tmp / "keys.json")) as url:
        yield Live(
            url,
            keys,
            model_dir,
            tmp / "registry.db",
            items,
            ModelConfig.from_dict(doc["model"]),
            doc["fingerprint"],
        )


def _package(
    live: Live, key: Ed25519PrivateKey, user: str, service: str, version: int, seed: int
) -> bytes:
    g = np.random.default_rng(seed)
    base = new_adapter(live.cfg, AdapterConfig(), torch.Generator().manual_seed(seed))
    tensors = {
        k: v.numpy() + 0.5 * g.standard_normal(v.shape).astype(np.float32) for k, v in base.items()
    }
    fields = {
        "base_fingerprint": live.fingerprint,
        "adapter_config": AdapterConfig().to_dict(),
        "user_id": user,
        "service": service,
        "version": version,
        "privacy": PrivacyRecord(2.0, 1e-5, "rdp", "opacus 1.6.0"),
    }
    return seal_package(fields, tensors, key)


def _onboard(
    live: Live, c: httpx.Client, user: str, service: str, version: int = 1, seed: int = 0
) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    r = c.put(f"/v1/users/{user}/signer", json={"public_key": pub.hex()})
    assert r.status_code == 200, r.text
    r = c.put(
        f"/v1/users/{user}/adapter", content=_package(live, key, user, service, version, seed)
    )
    assert r.status_code == 200, r.text
    return key


def _rec(live: Live, user: str, service: str, **over: Any) -> dict[str, Any]:
    return {"user_id": user, "service": service, "session": live.items[service][:2], "k": 5, **over}


def test_health_ready_openapi_metrics(live: Live) -> None:
    c, admin = live.client(None), live.client("admin")
    assert c.get("/healthz").json()["status"] == "ok"
    assert c.get("/readyz").json() == {"status": "ready", "checks": {}}  # nothing more to anyone
    ready = admin.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["model"] == live.fingerprint
    spec = admin.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/users/{user_id}/adapter", "/v1/users/{user_id}"} <= set(
        spec["paths"]
    )
    assert "userlayer_requests_total" in admin.get("/metrics").text
    # defect: /metrics and /docs were open to anyone; now behind an admin key
    for path in ("/metrics", "/openapi.json"):
        assert c.get(path).status_code == 401
        assert live.client("samokat").get(path).status_code == 403
    assert c.get("/docs").status_code == 401


def test_personalized_freshness_and_fallback(live: Live) -> None:
    c = live.client("samokat")
    r = c.post("/v1/recommend", json=_rec(live, "fresh-user", "samokat"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["personalized"] is False and body["reason"] == "no adapter" and len(body["items"]) == 5
    )
    assert all(i["item_id"] in live.items["samokat"] for i in body["items"])
    key = _onboard(live, c, "fresh-user", "samokat", 1, seed=1)
    body = c.post("/v1/recommend", json=_rec(live, "fresh-user", "samokat")).json()
    assert body["personalized"] is True and body["adapter_version"] == 1
    r = c.put(
        "/v1/users/fresh-user/adapter",
        content=_package(live, key, "fresh-user", "samokat", 2, seed=2),
    )
    assert r.status_code == 200 and r.json()["version"] == 2
    body = c.post("/v1/recommend", json=_rec(live, "fresh-user", "samokat")).json()
    assert body["adapter_version"] == 2  # the very next request
    meta = c.get("/v1/users/fresh-user/adapter").json()
    assert meta["version"] == 2 and meta["privacy"]["epsilon"] == 2.0 and "tensors" not in meta
    # tamper with the stored ciphertext: served by the base, flagged, never another adapter
    _onboard(live, c, "tampered", "samokat", 1, seed=3)
    con = sqlite3.connect(live.registry)
    blob = bytearray(
        con.execute("SELECT blob FROM ul_adapters WHERE user_id='tampered'").fetchone()[0]
    )
    blob[50] ^= 1
    con.execute("UPDATE ul_adapters SET blob=?, version=2 WHERE user_id='tampered'", (bytes(blob),))
    con.commit()
    con.close()
    body = c.post("/v1/recommend", json=_rec(live, "tampered", "samokat")).json()
    assert body["personalized"] is False and body["reason"] == "adapter failed verification"


def test_concurrent_users_are_batched_and_each_gets_their_own_adapter(live: Live) -> None:
    c = live.client("megamarket")
    users = [f"batch-{i}" for i in range(12)]
    for i, u in enumerate(users):
        _onboard(live, c, u, "megamarket", 1, seed=100 + i)
    alone = {u: c.post("/v1/recommend", json=_rec(live, u, "megamarket")).json() for u in users}
    before = _batches(live.client("admin"))
    with ThreadPoolExecutor(12) as pool:
        together = list(
            pool.map(
                lambda u: (
                    live.client("megamarket")
                    .post("/v1/recommend", json=_rec(live, u, "megamarket"))
                    .json()
                ),
                users * 3,
            )
        )
    for u, got in zip(users * 3, together, strict=True):
        assert got["user_id"] == u and got["personalized"] and got["adapter_version"] == 1
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in alone[u]["items"]]
    rows, batches = (a - b for a, b in zip(_batches(live.client("admin")), before, strict=True))
    assert rows == 36 and batches < 36  # several requests shared a forward pass
    distinct = {tuple(i["item_id"] for i in a["items"]) for a in alone.values()}
    assert len(distinct) > 1  # the adapters make a difference


def _batches(c: httpx.Client) -> tuple[float, float]:
    text = c.get("/metrics").text  # an admin client
    vals = {}
    for line in text.splitlines():
        for name in ("userlayer_batch_rows_sum", "userlayer_batch_rows_count"):
            if line.startswith(name + " "):
                vals[name] = float(line.split()[1])
    return vals["userlayer_batch_rows_sum"], vals["userlayer_batch_rows_count"]


def test_tenant_and_scope_matrix(live: Live) -> None:
    owner = live.client("megamarket")
    _onboard(live, owner, "mm-user", "megamarket", 1, seed=7)
    pub = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        .hex()
    )
    for who in ("samokat", "kuper"):  # other services
        c = live.client(who)
        assert c.post("/v1/recommend", json=_rec(live, "mm-user", "megamarket")).status_code == 403
        assert (
            c.get("/v1/users/mm-user/adapter", params={"service": "megamarket"}).status_code == 403
        )
        assert c.delete("/v1/users/mm-user", params={"service": "megamarket"}).status_code == 403
        # in their own namespace the megamarket user does not exist
        assert c.get("/v1/users/mm-user/adapter").status_code == 404
        own = c.post("/v1/recommend", json=_rec(live, "mm-user", who)).json()
        assert own["personalized"] is False and own["reason"] == "no adapter"
    kuper = live.client("kuper")  # recommend-only key
    assert kuper.put("/v1/users/k1/signer", json={"public_key": pub}).status_code == 403
    assert kuper.put("/v1/users/k1/adapter", content=b"x" * 100).status_code == 403
    assert kuper.delete("/v1/users/k1").status_code == 403
    for bad in (None, "garbage", "ul_nope_nope"):
        c = live.client(None)
        headers = {} if bad is None else {"Authorization": f"Bearer {bad}"}
        assert (
            c.post("/v1/recommend", json=_rec(live, "u", "kuper"), headers=headers).status_code
            == 401
        )
    admin = live.client("admin")
    assert admin.get("/v1/users/mm-user/adapter").status_code == 403  # must name the service
    assert (
        admin.get("/v1/users/mm-user/adapter", params={"service": "megamarket"}).status_code == 200
    )
    assert owner.get("/v1/users/mm-user/adapter").json()["version"] == 1  # nothing changed


@pytest.mark.parametrize(
    "body",
    [
        {"k": 0},
        {"k": 1000},
        {"session": ["i"] * 51},
        {"service": "ozon"},
        {"user_id": "bad user!"},
        {"surprise": 1},
        {"context": {"mode": "sleepy"}},
        {"exclude": ["ok", "not ok"]},
        {"critique": "x" * 201},
        {"critique": 5},
    ],
)
def test_bad_recommend_bodies_are_422(live: Live, body: dict[str, Any]) -> None:
    r = live.client("samokat").post("/v1/recommend", json={**_rec(live, "u1", "samokat"), **body})
    assert r.status_code == 422 and r.json()["detail"]


def test_critiques_constrain_every_item_and_say_how_they_were_read(live: Live) -> None:
    """Hard constraints hold on the live API (split engine core); odd critiques are flagged."""
    doc = json.loads((live.model_dir / "catalog.json").read_text("utf-8"))["items"]
    c = live.client("samokat")
    onboarded = "critic"
    _onboard(live, c, onboarded, "samokat")
    priced = [i for i in live.items["samokat"] if doc[i]["price"] is not None]
    ref = sorted(priced, key=lambda i: doc[i]["price"])[len(priced) // 2]  # a middle price
    for user in (onboarded, "critic-without-layer"):
        body = _rec(live, user, "samokat", session=[ref], k=20, critique="подешевле, другой бренд")
        r = c.post("/v1/recommend", json=body).json()
        assert r["critique"]["language"] == "ru" and len(r["critique"]["applied"]) == 2
        assert r["items"], r
        for it in r["items"]:
            assert doc[it["item_id"]]["price"] < doc[ref]["price"]
            assert doc[it["item_id"]]["brand"].lower() != doc[ref]["brand"].lower()
        plain = c.post("/v1/recommend", json=_rec(live, user, "samokat", session=[ref], k=20))
        assert plain.json()["critique"] is None
        assert r["personalized"] == plain.json()["personalized"] == (user == onboarded)
    ignored = c.post("/v1/recommend", json=_rec(live, "u1", "samokat", critique="不要肉")).json()
    assert ignored["critique"]["flags"] == ["unknown language: ignored"] and ignored["items"]
    both = c.post(
        "/v1/recommend", json=_rec(live, "u1", "samokat", critique="cheaper but pricier")
    ).json()
    assert "contradictory" in both["critique"]["flags"][0] and both["items"]
    cheapest = min(priced, key=lambda i: doc[i]["price"])
    none = c.post(
        "/v1/recommend", json=_rec(live, "u1", "samokat", session=[cheapest], critique="cheaper")
    )
    assert none.status_code == 200 and none.json()["items"] == []  # nothing cheaper exists
    metrics = live.client("admin").get("/metrics").text
    assert 'userlayer_critiques_total{outcome="applied"}' in metrics


def test_bad_uploads_and_paths_are_4xx_and_change_nothing(live: Live) -> None:
    c = live.client("samokat")
    key = _onboard(live, c, "up-user", "samokat", 3, seed=9)
    cases = [
        (b"", 422),
        (b"ULAP" + b"\x00" * 200, 422),
        (_package(live, key, "up-user", "samokat", 3, seed=10), 409),  # not newer
        (_package(live, key, "someone-else", "samokat", 4, seed=10), 422),  # other user
        (_package(live, Ed25519PrivateKey.generate(), "up-user", "samokat", 4, seed=10), 422),
    ]
    for blob, status in cases:
        r = c.put("/v1/users/up-user/adapter", content=blob)
        assert r.status_code == status, (status, r.text)
    r = c.put("/v1/users/up-user/adapter", content=b"x" * (9 << 20))
    assert r.status_code == 413
    assert c.get("/v1/users/bad%20id/adapter").status_code == 422
    assert c.put("/v1/users/u/signer", json={"public_key": "zz"}).status_code == 422
    assert c.get("/v1/users/up-user/adapter").json()["version"] == 3


def test_forget_removes_the_user_everywhere(live: Live) -> None:
    c = live.client("samokat")
    _onboard(live, c, "leaver", "samokat", 1, seed=11)
    assert c.post("/v1/recommend", json=_rec(live, "leaver", "samokat")).json()["personalized"]
    r = c.delete("/v1/users/leaver")
    assert r.status_code == 200 and r.json()["deleted_versions"] == 1
    body = c.post("/v1/recommend", json=_rec(live, "leaver", "samokat")).json()
    assert body["personalized"] is False and body["reason"] == "no adapter"
    assert c.get("/v1/users/leaver/adapter").status_code == 404
    con = sqlite3.connect(live.registry)
    assert con.execute("SELECT COUNT(*) FROM ul_users WHERE user_id='leaver'").fetchone()[0] == 0


def test_full_queue_answers_503_with_retry_after(live: Live, tmp_path: Path) -> None:
    key = KeyStore(path=tmp_path / "keys.json").add("kuper", ("recommend",))
    settings = _settings(
        tmp_path, live.model_dir, tmp_path / "keys.json", max_queue=1, max_batch=1, max_wait_ms=0
    )
    with Server(settings) as url:

        def one(i: int) -> httpx.Response:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as c:
                return c.post("/v1/recommend", json=_rec(live, f"q{i}", "kuper"))

        with ThreadPoolExecutor(32) as pool:
            rs = list(pool.map(one, range(64)))
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    assert all(int(r.headers["Retry-After"]) >= 1 for r in rs if r.status_code == 503)


def test_settings_refuse_placeholders_outside_development(tmp_path: Path) -> None:
    from pydantic import ValidationError

    base = {"model_dir": tmp_path, "registry": str(tmp_path / "r.db")}
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(**base, admin_key="ul_admin_changeme")
    with pytest.raises(ValidationError, match="no API keys"):
        Settings(**base)
    with pytest.raises(ValidationError, match="slots"):
        Settings(**base, env="development", slots=8, max_batch=64)
    with pytest.raises(ValidationError, match="workers above 1"):  # one in-process engine
        Settings(**base, env="development", engine="inline", workers=2)
    Settings(**base, env="development", admin_key="ul_admin_changeme")  # allowed there


@pytest.mark.parametrize(("workers", "burst"), [(1, 3), (2, 6)])
def test_rate_limit_per_key(live: Live, tmp_path: Path, workers: int, burst: int) -> None:
    """With N API workers each holds 1/N of a key's bucket (here: this worker of 2 allows 3)."""
    store = KeyStore(path=tmp_path / "keys.json")
    a, b = store.add("samokat", ("recommend",)), store.add("samokat", ("recommend",))
    settings = _settings(
        tmp_path,
        live.model_dir,
        tmp_path / "keys.json",
        rate_limit=0.5 * workers,
        rate_burst=burst,
        workers=workers,
    )
    body = {"user_id": "rl", "service": "samokat", "session": live.items["samokat"][:1]}
    with Server(settings) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {a}"}) as c:
            codes = [c.post("/v1/recommend", json=body).status_code for _ in range(3)]
            assert codes == [200, 200, 200]  # the burst
            r = c.post("/v1/recommend", json=body)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert "rate limit" in r.json()["detail"]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {b}"}) as c:
            assert c.post("/v1/recommend", json=body).status_code == 200  # its own bucket
        with httpx.Client(base_url=url) as c:
            assert c.get("/healthz").status_code == 200  # health checks are not limited


def test_rate_limiter_refills_at_its_rate() -> None:
    from userlayer.cloud.auth import RateLimitedError, RateLimiter

    now = [0.0]
    lim = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    lim.take("k")
    lim.take("k")
    with pytest.raises(RateLimitedError) as e:
        lim.take("k")
    assert e.value.retry_after == 1
    now[0] = 0.5  # one token back
    lim.take("k")
    with pytest.raises(RateLimitedError):
        lim.take("k")
    RateLimiter(rate=0, burst=1).take("k")  # 0: off


def test_full_tenant_matrix(live: Live) -> None:
    """Every service's key x every endpoint x a user of every other service: 403, nothing moves."""
    owners = {s: f"matrix-{s}" for s in ("samokat", "megamarket")}
    keys = {s: _onboard(live, live.client(s), u, s, 1, seed=11) for s, u in owners.items()}
    pub = Ed25519PrivateKey.generate().public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    tried = 0
    for caller in SERVICES:
        c = live.client(caller)
        for owner, user in owners.items():
            if owner == caller:
                continue
            q = {"service": owner}
            package = _package(live, keys[owner], user, owner, 2, seed=12)
            answers = {
                "recommend": c.post("/v1/recommend", json=_rec(live, user, owner)),
                "critique": c.post(
                    "/v1/recommend", json=_rec(live, user, owner, critique="подешевле")
                ),
                "signer": c.put(f"/v1/users/{user}/signer", params=q, json={"public_key": raw}),
                "upload": c.put(f"/v1/users/{user}/adapter", params=q, content=package),
                "metadata": c.get(f"/v1/users/{user}/adapter", params=q),
                "signers": c.get(f"/v1/users/{user}/signers", params=q),
                "revoke": c.delete(
                    f"/v1/users/{user}/signers/{key_id(keys[owner].public_key())}", params=q
                ),
                "forget": c.delete(f"/v1/users/{user}", params=q),
            }
            for endpoint, r in answers.items():
                assert r.status_code == 403, (caller, owner, endpoint, r.status_code, r.text)
                tried += 1
    assert tried == 8 * 4  # 3 callers x the owners of the other services x 8 calls
    for owner, user in owners.items():  # every owner's adapter is untouched
        meta = live.client(owner).get(f"/v1/users/{user}/adapter").json()
        assert meta["version"] == 1
        r = live.client(owner).post("/v1/recommend", json=_rec(live, user, owner)).json()
        assert r["personalized"] and r["adapter_version"] == 1
        body = _rec(live, user, owner, critique="another brand")  # the owner's critique works
        r = live.client(owner).post("/v1/recommend", json=body).json()
        assert r["personalized"] and r["critique"]["applied"]
