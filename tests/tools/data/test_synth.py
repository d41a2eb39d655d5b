from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from userlayer.tools.data.synth import SynthConfig, SynthResult, synthesize
from userlayer.tools.exceptions import ToolsError


def _cols(r: SynthResult, *names: str) -> list[list[object]]:
    return [r.dataset.events.column(n).cast(pa.string()).to_pylist() for n in names]


def test_same_seed_same_data() -> None:
    cfg = SynthConfig(users=15, seed=3, days=60, events_per_user=40)
    a, b = synthesize(cfg), synthesize(cfg)
    assert a.dataset.events.equals(b.dataset.events)
    assert a.dataset.items.equals(b.dataset.items)
    assert a.true_mode == b.true_mode
    c = synthesize(SynthConfig(users=15, seed=4, days=60, events_per_user=40))
    assert not a.dataset.events.equals(c.dataset.events)


def test_catalog_and_volume(small_synth: SynthResult) -> None:
    items = small_synth.dataset.items
    assert items.num_rows >= 3000
    titles = items.column("title").to_pylist()
    assert all(t and "," in t for t in titles)
    assert len(set(items.column("item_id").to_pylist())) == items.num_rows
    services = set(items.column("service").to_pylist())
    assert services == {"samokat", "megamarket", "kuper"}
    per_user = small_synth.dataset.events.num_rows / small_synth.dataset.n_users
    assert 30 < per_user < 120  # asked for ~60
    small_synth.dataset.check_items_known()


def test_latent_tastes_are_hard_constraints(small_synth: SynthResult) -> None:
    tags = {c.item_id: c.tags for c in small_synth.catalog}
    users = {u.user_id: u for u in small_synth.users}
    uid, iid, action = _cols(small_synth, "user_id", "item_id", "action")
    checked = 0
    for u, i, a in zip(uid, iid, action, strict=True):
        if a != "purchase":
            continue
        taste, t = users[u], tags[i]
        if taste.diet == "vegetarian":
            assert not t & {"meat", "fish"}, (u, i)
        if taste.diet == "pescatarian":
            assert "meat" not in t, (u, i)
        if not taste.parent:
            assert not t & {"kids", "baby"}, (u, i)
        if taste.pet != "dog":
            assert "pet_dog" not in t
        checked += 1
    assert checked > 1000


def test_cross_service_taste_shows(small_synth: SynthResult) -> None:
    """Parents buy kids' goods on Megamarket and baby goods on groceries; others never."""
    tags = {c.item_id: c.tags for c in small_synth.catalog}
    parents = {u.user_id for u in small_synth.users if u.parent}
    uid, iid, svc = _cols(small_synth, "user_id", "item_id", "service")
    kid_buyers = {u for u, i in zip(uid, iid, strict=True) if tags[i] & {"kids", "baby"}}
    assert kid_buyers and kid_buyers <= parents
    assert {s for u, i, s in zip(uid, iid, svc, strict=True) if tags[i] & {"kids", "baby"}} >= {
        "megamarket"
    }


def test_modes_follow_context(small_synth: SynthResult) -> None:
    true = np.array(small_synth.true_mode)
    observed, daypart, service = (
        np.array(c) for c in _cols(small_synth, "mode", "daypart", "service")
    )
    # the observed mode is the true one or unspecified, never another one
    assert np.all((observed == true) | (observed == "unspecified"))
    samokat = service == "samokat"
    late = samokat & np.isin(daypart, ["evening", "night"])
    early = samokat & (daypart == "morning")
    assert (true[late] == "hungry").mean() > (true[early] == "hungry").mean() + 0.1
    assert (true[service == "megamarket"] == "shopping").mean() > 0.6


def test_truth_is_saved(tmp_path: Path, small_synth: SynthResult) -> None:
    small_synth.save(tmp_path)
    users = json.loads((tmp_path / "truth" / "users.json").read_text())
    assert len(users) == 60 and {"diet", "parent", "affinity_start"} <= set(users[0])
    truth = pq.read_table(tmp_path / "truth" / "events.parquet")
    assert truth.num_rows == small_synth.dataset.events.num_rows
    assert (tmp_path / "truth" / "items.parquet").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"users": 0}, "`users` should be positive"),
        ({"events_per_user": 1}, "`events_per_user`"),
        ({"days": 5}, "`days`"),
        ({"items_kuper": 10}, "`items_kuper`"),
        ({"observed_mode_rate": 1.5}, "`observed_mode_rate`"),
        ({"start": "soon"}, "`start` should be an ISO date"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ToolsError, match=match):
        SynthConfig(**kwargs)  # type: ignore[arg-type]
