"""The engine core's loop over a real Unix socket: same answers as in-process, batches, faults.

The core runs in a thread of the test (torch backend, SQLite registry);
clients are plain sockets speaking the wire protocol.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.cloud.core.server import EngineCore
from userlayer.cloud.core.wire import HEADER, FrameReader, encode
from userlayer.cloud.engine.engine import Engine, EngineConfig
from userlayer.cloud.registry import AdapterRegistry
from userlayer.cloud.service import Metrics, Serving
from userlayer.sdk.adapter import seal_package
from userlayer.sdk.api import RecommendRequest, RecommendResponse
from userlayer.tools.bench.adapters import random_adapter

USERS = 6


def _serving(model: Path, db: Path) -> Serving:
    e = Engine(model, EngineConfig(backend="torch", slots=16))
    return Serving(e, AdapterRegistry(db, e.fingerprint, e.shapes), Metrics())


def _enroll(s: Serving) -> None:
    for u in range(USERS):
        key = Ed25519PrivateKey.generate()
        s.registry.enroll("samokat", f"u{u}", key.public_key())
        fields = {
            "base_fingerprint": s.engine.fingerprint,
            "adapter_config": s.engine.acfg.to_dict(),
            "service": "samokat",
            "user_id": f"u{u}",
            "version": 1,
        }
        s.registry.put(
            "samokat", f"u{u}", seal_package(fields, random_adapter(s.engine.shapes, u, 0.5), key)
        )


class Peer:
    """A blocking wire-protocol client."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.reader = FrameReader()
        self.got: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(encode(msg))

    def recv(self, n: int) -> list[dict[str, Any]]:
        while len(self.got) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed")
            self.got += self.reader.feed(chunk)
        out, self.got = self.got[:n], self.got[n:]
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def core(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[EngineCore, Path]]:
    serving = _serving(tiny_model_dir, tmp_path / "registry.db")
    _enroll(serving)
    path = tmp_path / "engine.sock"
    c = EngineCore(serving, path, max_batch=8)
    t = threading.Thread(target=c.serve_forever, daemon=True)
    t.start()
    yield c, path
    c.stop()
    t.join(30)
    assert not t.is_alive() and not path.exists()


def _body(i: int) -> dict[str, Any]:
    user = f"u{i % USERS}" if i % 3 else f"anon{i}"
    return RecommendRequest(user_id=user, service="samokat", k=5).model_dump(mode="json")


def test_the_core_answers_as_the_in_process_engine_does(
    core: tuple[EngineCore, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    _, path = core
    peer = Peer(path)
    hello = peer.send({"id": "h", "op": "hello"}) or peer.recv(1)[0]["ok"]
    assert hello["max_batch"] == 8 and hello["backend"] == "torch"
    for i in range(12):
        peer.send({"id": i, "op": "recommend", "body": _body(i)})
    answers = {m["id"]: m for m in peer.recv(12)}
    assert sorted(answers) == list(range(12))
    # the same registry read by an engine in this process, one request at a time
    local = _serving(tiny_model_dir, tmp_path / "registry.db")
    for i, m in answers.items():
        got = RecommendResponse.model_validate_json(m["json"])
        (want,) = local.run_batch([RecommendRequest.model_validate(_body(i))])
        assert got.personalized == want.personalized and got.reason == want.reason
        assert [x.item_id for x in got.items] == [x.item_id for x in want.items]
        assert [x.score for x in got.items] == pytest.approx([x.score for x in want.items])
    peer.close()


def test_requests_that_arrive_during_a_batch_form_the_next_one(
    core: tuple[EngineCore, Path],
) -> None:
    c, path = core
    peers = [Peer(path) for _ in range(4)]
    for p_i, p in enumerate(peers):  # 4 workers x 10 requests, sent at once
        p.sock.sendall(
            b"".join(
                encode({"id": i, "op": "recommend", "body": _body(p_i * 10 + i)}) for i in range(10)
            )
        )
    got = [m for p in peers for m in p.recv(10)]
    assert all("json" in m for m in got)
    rows = {m["batch"]: m["rows"] for m in got}
    assert sum(rows.values()) == 40 and max(rows.values()) == 8  # full batches formed
    assert len(rows) < 40 and c.batches == len(rows)
    for p in peers:
        p.close()


def test_a_bad_peer_is_dropped_and_the_others_are_still_served(
    core: tuple[EngineCore, Path],
) -> None:
    _, path = core
    good, bad, gone = Peer(path), Peer(path), Peer(path)
    bad.sock.sendall(HEADER.pack(5) + b"[1,2]")  # not an object: that connection is closed
    assert bad.sock.recv(10) == b""
    deep = Peer(path)  # deep enough to raise RecursionError in json: that connection only
    deep.sock.sendall(HEADER.pack(100_000) + b"[" * 100_000)
    assert deep.sock.recv(10) == b""
    for i in range(5):  # a worker dies with requests waiting: they are skipped, nothing breaks
        gone.send({"id": i, "op": "recommend", "body": _body(i)})
    gone.close()
    good.send({"id": 1, "op": "recommend", "body": {"user_id": "x"}})  # invalid body
    good.send({"id": 2, "op": "nonsense"})
    good.send({"id": 3, "op": "recommend", "body": _body(3)})
    good.send({"id": 4, "op": "stats"})
    a, b, c, d = sorted(good.recv(4), key=lambda m: m["id"])  # stats need no batch: first
    assert a["error"]["type"] == "invalid" and "service" in a["error"]["message"]
    assert b["error"]["type"] == "invalid"
    assert RecommendResponse.model_validate_json(c["json"]).user_id == "anon3"
    assert d["ok"]["queue"] <= 6 and "userlayer_slot_loads" in d["ok"]["metrics"]
    assert "userlayer_requests" not in d["ok"]["metrics"]  # the workers' own families
    good.close()


def test_evict_drops_the_users_slot(core: tuple[EngineCore, Path]) -> None:
    c, path = core
    peer = Peer(path)
    peer.send({"id": 1, "op": "recommend", "body": _body(1)})  # u1: loaded into a slot
    assert RecommendResponse.model_validate_json(peer.recv(1)[0]["json"]).personalized
    assert any(k[:2] == ("samokat", "u1") for k in c.serving.engine.slab._keys)
    peer.send({"id": 2, "op": "evict", "service": "samokat", "user": "u1"})
    assert peer.recv(1)[0]["ok"] is True
    assert not any(k[:2] == ("samokat", "u1") for k in c.serving.engine.slab._keys)
    assert ("samokat", "u1") not in c.serving.registry._cache  # nor its decrypted copy
    peer.close()
