"""``userlayer eval-critiques``: episodes from the data, no violation, the CLI's report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from userlayer.sdk.critique import CatalogIndex, ItemAttributes, parse_critique
from userlayer.sdk.schemas import Action, Event, Service
from userlayer.tools.cli import app
from userlayer.tools.eval.critiques import make_episode


def _target(item: str) -> Event:
    return Event(
        user_id="u",
        service=Service.KUPER,
        item_id=item,
        action=Action.PURCHASE,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_episodes_say_what_the_next_item_satisfies() -> None:
    attrs = {
        "ref": ItemAttributes("Sausage Pork, 400 g", ("Meat", "Sausages"), "Alfa", 300.0),
        "cheap": ItemAttributes("Sausage Pork, 400 g", ("Meat", "Sausages"), "Alfa", 200.0),
        "veg": ItemAttributes("Tofu Smoked, 400 g", ("Vegan", "Tofu"), "Alfa", 300.0),
        "same": ItemAttributes("Sausage Pork, 800 g", ("Meat", "Sausages"), "Alfa", 300.0),
    }
    cat = CatalogIndex(sorted(attrs), attrs)
    rng = np.random.default_rng(0)
    ep = make_episode(cat, ("ref",), _target("cheap"), "ru", rng)
    assert ep is not None and (ep.kind, ep.text) == ("cheaper", "подешевле")
    ep = make_episode(cat, ("ref",), _target("veg"), "en", rng)
    assert ep is not None and (ep.kind, ep.text) == ("without meat", "no meat")
    ep = make_episode(cat, ("ref",), _target("same"), "en", rng)
    assert ep is not None and (ep.kind, ep.text) == ("bigger", "bigger pack")
    assert make_episode(cat, ("ref",), _target("ref"), "ru", rng) is None
    assert make_episode(cat, (), _target("veg"), "ru", rng) is None
    for e in ("cheap", "veg"):  # the episode's critique, parsed, keeps its target
        ep = make_episode(cat, ("ref",), _target(e), "ru", rng)
        assert ep is not None
        v = cat.apply(parse_critique(ep.text), ep.session)
        assert v.allowed is not None and v.allowed[cat.index_of(e)]


def test_eval_critiques_cli(synth_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    r = CliRunner().invoke(
        app,
        ["eval-critiques", "--data", str(synth_data_dir), "--model", str(tiny_model_dir),
         "--users", "40", "--json", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["episodes"] >= 10 and res["source"].startswith("simulator")
    assert res["hard_constraints"]["returned_items"] > 0
    assert res["hard_constraints"]["violating_items"] == 0
    assert set(res["metrics"]) == {"without critique", "with critique"}
    assert res["speed"]["rows_per_s_with"] > 0
    assert "critique episodes" in r.output and "violate" in r.output
