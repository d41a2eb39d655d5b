"""EdgeNode end to end on a few users: record, train under DP, upload, recommend, report, forget.

The cloud side is the live API of ``tests/cloud/test_api.py`` (real HTTP on
127.0.0.1), serving the same base model.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import httpx
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


def test_explanations_stay_on_the_edge(
    live: Live,  # noqa: F811
    synth_data_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The node explains the cloud's recommendations with the user's layer, and sends nothing.

    Every request the client sends is recorded (a hook on the real HTTP client):
    explaining sends none, and no narrative, title or cited item of an
    explanation appears in anything the cloud received or in the logs.
    """
    caplog.set_level(logging.DEBUG)
    ds = Dataset.load(synth_data_dir)
    by_user = ds.user_events()
    user = sorted(u for u, ev in by_user.items() if len(ev) >= 30)[1]
    marker = "xplcnry"
    titles = {
        r["item_id"]: f"{r['title']} {marker}{n}"
        for n, r in enumerate(ds.items.select(["item_id", "title"]).to_pylist())
    }
    sent: list[bytes] = []
    client = Client(live.url, live.keys["admin"])

    def record(request: httpx.Request) -> None:
        sent.append(request.url.raw_path + request.read())

    client.http.event_hooks["request"].append(record)
    node = EdgeNode(tmp_path / "node", live.model_dir, client, LocalTrainConfig(epochs=1.0))
    node.record(*by_user[user])
    now = max(e.timestamp for e in by_user[user]) + timedelta(days=1)
    svc = node.train(user, now=now)["services"][0]
    node.upload(user)
    last = by_user[user][-1]
    recs = client.recommend(user, svc, session=[e.item_id for e in by_user[user][-2:]])
    assert recs.personalized
    before = len(sent)
    out = node.explain(user, recs.items, svc, last.context, now=now, titles=titles)
    assert len(sent) == before  # nothing sent to explain
    assert [e.item_id for e in out] == [r.item_id for r in recs.items]
    assert all(marker in e.text for e in out)  # the titles given, in Russian by default
    en = node.explain(user, [recs.items[0].item_id], svc, last.context, now, "en", titles)
    assert en[0].language == "en"
    assert len(sent) == before
    cited = {ev.item_id for e in out for ev in e.evidence if ev.item_id}
    node.forget(user)
    node.close()
    client.close()
    everything = b"\n".join(sent)
    assert marker.encode() not in everything
    for e in out:
        assert e.text.encode() not in everything
    # the cited history events never left either (their item ids are not in any request)
    session = {e.item_id for e in by_user[user][-2:]}
    assert not [i for i in cited - session if i.encode() in everything]
    assert marker not in caplog.text
