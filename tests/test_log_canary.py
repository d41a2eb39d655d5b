"""Logs, metrics and files at rest never hold a user's event contents or item lists.

A user's history is seeded with canary items (ids that exist nowhere else)
and their requests exclude those canaries. The whole flow runs: EdgeNode
records, trains under DP, uploads through the client to the live API, the
user gets recommendations, a poisoned package is refused (and logged), the
user is forgotten. Every log record of every logger at DEBUG, the
Prometheus metrics, the API's error answers and every file the edge node
and the registry wrote are searched for the canaries: none may appear
(the stores hold them only encrypted).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest

from tests.cloud.test_api import Live, live  # noqa: F401 - the live API fixture
from userlayer.edge.local import LocalTrainConfig
from userlayer.edge.node import EdgeNode
from userlayer.sdk.client import Client, RequestError
from userlayer.tools.data.format import Dataset

CANARY = "cnry7f3a9e"


def test_no_canary_in_logs_metrics_or_files(
    live: Live,  # noqa: F811
    synth_data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    by_user = Dataset.load(synth_data_dir).user_events()
    user = sorted(u for u, ev in by_user.items() if len(ev) >= 30)[0]
    real = by_user[user]
    canaries = [
        e.model_copy(
            update={"item_id": f"{CANARY}-{i}", "timestamp": e.timestamp + timedelta(seconds=1)}
        )
        for i, e in enumerate(real[-5:])
    ]
    client = Client(live.url, live.keys["admin"])
    node = EdgeNode(tmp_path / "node", live.model_dir, client, LocalTrainConfig(epochs=1.0))
    node.record(*real, *canaries)
    out = node.train(user, now=real[-1].timestamp + timedelta(days=1))  # the data's clock
    node.upload(user)
    svc = out["services"][0]
    r = client.recommend(
        user, svc, session=[e.item_id for e in real[-2:]], exclude=[c.item_id for c in canaries]
    )
    assert r.personalized
    with pytest.raises(RequestError):  # refused and logged by the registry
        client.upload_adapter(user, b"ULAP\x01\x00" + f"{CANARY}-junk".encode(), svc)
    with pytest.raises(RequestError):  # invalid: the answer (to its sender) names the field
        client.recommend(user, svc, session=[f"{CANARY}-x" * 40])
    metrics = client.http.get("/metrics").text
    node.forget(user)
    node.close()
    client.close()

    assert CANARY not in caplog.text, [
        r.getMessage() for r in caplog.records if CANARY in r.getMessage()
    ]
    assert CANARY not in metrics
    written = [p for p in (tmp_path / "node").rglob("*") if p.is_file()]
    written += [p for p in live.registry.parent.rglob("*") if p.is_file()]
    assert written
    leaks = [str(p) for p in written if CANARY.encode() in p.read_bytes()]
    assert not leaks, leaks
