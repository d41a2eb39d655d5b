"""EdgeNode end to end on a few users: record, train under DP, upload, recommend, report, forget.

The cloud side is the live API of ``tests/cloud/test_api.py`` (real HTTP on
127.0.0.1), serving the same base model.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.cloud.test_api import Live, live  # noqa: F401 - the live API fixture
from userlayer.edge.exceptions import BudgetExceededError, EdgeError
from userlayer.edge.local import LocalTrainConfig
from userlayer.edge.node import EdgeNode
from userlayer.sdk.client import Client, NotFoundError
from userlayer.tools.data.format import Dataset


def test_edge_node_flow(live: Live, synth_data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    by_user = Dataset.load(synth_data_dir).user_events()
    users = sorted(u for u, ev in by_user.items() if len(ev) >= 30)[:2]
    client = Client(live.url, live.keys["admin"])
    node = EdgeNode(
        tmp_path / "node",
        live.model_dir,
        client,
        LocalTrainConfig(epochs=2.0, epsilon=3.0),
        budget=3.5,
    )
    for u in users:
        assert node.record(*by_user[u]) == len(by_user[u])
    u = users[0]
    # the simulated data is in the past: train against a clock just after it (the data
    # horizon and the decay weights count from the clock, never from the user's own events)
    now = max(e.timestamp for e in by_user[u]) + timedelta(days=1)
    out = node.train(u, now=now)
    assert out["version"] == 1 and out["epsilon_user"] <= 3.0 + 1e-6 and out["services"]
    stored = node.upload(u)
    assert set(stored) == set(out["services"]) and set(stored.values()) == {1}
    svc = out["services"][0]
    r = client.recommend(u, svc, session=[e.item_id for e in by_user[u][-2:]])
    assert r.personalized and r.adapter_version == 1
    rep = node.privacy_report(u, now)
    assert rep.trainings == 1 and 0 < rep.epsilon_spent <= 3.0 + 1e-6 and rep.unit == "event"
    assert rep.remaining == pytest.approx(3.5 - rep.epsilon_spent) and "opacus" in rep.accountant
    assert rep.accountant.startswith("prv") and rep.epsilon_spent_rdp is not None
    assert rep.epsilon_spent_rdp > rep.epsilon_spent  # the same release, the looser bound
    # a second training would pass the budget of 3.5: refused, nothing changes
    with pytest.raises(BudgetExceededError):
        node.train(u, now=now)
    assert node.privacy_report(u, now).trainings == 1
    assert node.privacy_report(users[1], now).epsilon_spent == 0
    gone = node.forget(u)
    assert gone["local"]["events_deleted"] == len(by_user[u])
    assert all(n == 1 for n in gone["cloud"].values())
    for s in out["services"]:
        with pytest.raises(NotFoundError):
            client.adapter(u, s)
    assert node.store.events(u) == [] and node.privacy_report(u, now).trainings == 0
    assert len(node.store.events(users[1])) == len(by_user[users[1]])  # the other user stays
    with pytest.raises(EdgeError, match="train"):
        node.upload(users[1])
    node.close()
    client.close()


def test_forget_with_tenant_keys_deletes_what_it_may_and_says_what_not(
    live: Live,  # noqa: F811
    synth_data_dir: Path,
    tmp_path: Path,
) -> None:
    """Defect: EdgeNode acted with one key on every service, and a refusal aborted the
    forget before the local data was erased."""
    by_user = Dataset.load(synth_data_dir).user_events()
    user = next(
        u
        for u, ev in sorted(by_user.items())
        if {"samokat", "kuper"} <= {e.service.value for e in ev}
    )
    clients = {  # least privilege: each service's own tenant key; kuper's may only recommend
        "samokat": Client(live.url, live.keys["samokat"]),
        "kuper": Client(live.url, live.keys["kuper"]),
    }
    node = EdgeNode(tmp_path / "node", live.model_dir, clients=clients)
    node.record(*by_user[user])
    out = node.forget(user)
    assert out["cloud"].get("samokat") == 0  # allowed (nothing stored there yet)
    assert "kuper" in out["cloud_not_deleted"] and "403" in out["cloud_not_deleted"]["kuper"]
    other = {e.service.value for e in by_user[user]} - {"samokat", "kuper"}
    assert all("no API client" in out["cloud_not_deleted"][s] for s in other)
    assert node.store.events(user) == []  # erased here regardless
    node.close()
    for c in clients.values():
        c.close()
