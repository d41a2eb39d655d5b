"""The simulator's critique episodes: what the user said holds for what they bought next."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from userlayer.tools.data.critique_episodes import FILE, load_episodes, save_episodes
from userlayer.tools.data.synth import SynthConfig, SynthResult, synthesize
from userlayer.tools.exceptions import ToolsError


@pytest.fixture(scope="module")
def world() -> SynthResult:
    return synthesize(SynthConfig(users=150, seed=3, days=120, events_per_user=40))


def test_every_episode_is_true_to_the_users_tastes(world: SynthResult) -> None:
    items = {c.item_id: c for c in world.catalog}
    tastes = {u.user_id: u for u in world.users}
    ev = world.dataset.events
    users = ev.column("user_id").to_pylist()
    last = {u: i for i, u in enumerate(users)}  # rows in (user, time) order
    kinds = set()
    assert 0.15 < len(world.critiques) / len(world.users) <= 0.3 + 1e-9
    for e in world.critiques:
        t, s, u = items[e.target], items[e.shown], tastes[e.user_id]
        assert ev.column("item_id")[last[e.user_id]].as_py() == e.target  # the held-out event
        assert s.service == t.service and s.item_id != t.item_id
        kinds.add(e.kind)
        if e.kind == "without meat":
            assert u.diet != "omnivore" and "meat" in s.tags and "meat" not in t.tags
        elif e.kind == "without fish":
            assert u.diet == "vegetarian" and "fish" in s.tags and "fish" not in t.tags
        elif e.kind == "cheaper":
            assert u.price_level < 0 and s.price >= 1.05 * t.price
        elif e.kind == "pricier":
            assert u.price_level > 0 and s.price <= 0.95 * t.price
        else:
            assert e.kind == "brand" and s.brand != t.brand
            assert u.favorite_brands[t.category[0]] == t.brand
        assert e.ru and e.en
    assert {"cheaper", "brand"} <= kinds


def test_episodes_leave_the_events_of_a_seed_unchanged(world: SynthResult) -> None:
    cfg = SynthConfig(users=150, seed=3, days=120, events_per_user=40)
    none = synthesize(replace(cfg, critique_rate=0.0))
    assert none.critiques == []
    assert none.dataset.events.equals(world.dataset.events)


def test_saved_and_loaded_and_bad_files_named(world: SynthResult, tmp_path: Path) -> None:
    assert load_episodes(tmp_path) is None  # a dataset without episodes
    save_episodes(world.critiques, tmp_path)
    assert load_episodes(tmp_path) == world.critiques
    p = tmp_path / FILE
    p.write_text('{"format": "other/9"}\n', "utf-8")
    with pytest.raises(ToolsError, match=r"expected 'userlayer\.critiques/1'"):
        load_episodes(tmp_path)
    p.write_text('{"format": "userlayer.critiques/1"}\n{"user_id": "u1"}\n', "utf-8")
    with pytest.raises(ToolsError, match="line 2 is not a critique episode"):
        load_episodes(tmp_path)
