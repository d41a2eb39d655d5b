"""``userlayer train-steer``: the learned critique steer, trained on the frozen base, served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from userlayer.cloud.engine.engine import Engine, EngineConfig, EngineRequest
from userlayer.cloud.registry import AdapterRegistry
from userlayer.cloud.service import LEARNED_STEER, Metrics, Serving
from userlayer.sdk.api import RecommendRequest
from userlayer.sdk.critique import CatalogIndex
from userlayer.sdk.model.io import fingerprint, load_model
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.cli import app
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.critiques import LEARNED, LEARNED_ONLY
from userlayer.tools.train.steer import PHRASES, SteerTrainConfig, steer_examples, train_steer

pytest.importorskip("navec", reason="the learned steer needs navec: userlayer[critique-text]")


@pytest.fixture(scope="module")
def steered(
    tmp_path_factory: pytest.TempPathFactory, synth_data_dir: Path, tiny_model_dir: Path
) -> tuple[Path, dict]:  # type: ignore[type-arg]
    d = tmp_path_factory.mktemp("steer") / "m"
    shutil.copytree(tiny_model_dir, d)
    # every position (the default keeps same-category ones: too few in 60 users)
    cfg = SteerTrainConfig(episodes=1500, epochs=3, batch_size=64, hidden=32, same_category=False)
    return d, train_steer(synth_data_dir, d, cfg)


def test_the_steer_learns_from_episodes_and_leaves_the_base_as_it_was(
    steered: tuple[Path, dict],
    tiny_model_dir: Path,  # type: ignore[type-arg]
) -> None:
    d, rep = steered
    assert rep["episodes"]["train"] > 500 and rep["episodes"]["held_out"] > 50
    assert set(rep["episodes"]["kinds"]) <= {*PHRASES["ru"], *(f"without {c}" for c in (
        "meat", "fish", "sugar", "dairy", "gluten", "alcohol", "nuts"))}  # fmt: skip
    hl = rep["held_out_loss"]
    assert hl["with_steer"] < hl["without_steer"]  # on users it never trained on
    assert fingerprint(load_model(d)) == fingerprint(load_model(tiny_model_dir))
    meta = json.loads((d / "steer.json").read_text())
    assert meta["base"] == fingerprint(load_model(d)) and meta["encoder_sha256"]


def test_by_default_episodes_stay_in_the_category_of_the_item_reacted_to(
    synth_data_dir: Path, tiny_model_dir: Path
) -> None:
    ds = Dataset.load(synth_data_dir)
    table = SemanticIdTable.load(tiny_model_dir / "sids.json")
    cat = CatalogIndex(list(table.codes), ds.attributes())
    vocab = load_model(tiny_model_dir).ctx_vocab
    rng = np.random.default_rng(0)
    train, valid = steer_examples(ds, cat, table, vocab, 7, SteerTrainConfig(episodes=400), rng)
    assert train and valid
    for e in (*train, *valid):
        assert cat.attributes[e.reference].category == cat.attributes[e.target].category
        assert e.reference != e.target
    loose, _ = steer_examples(
        ds, cat, table, vocab, 7, SteerTrainConfig(episodes=400, same_category=False), rng
    )
    assert len(loose) > len(train)


def test_the_engine_steers_only_rows_with_a_critique(steered: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    d, _ = steered
    e = Engine(d, EngineConfig(backend="torch", slots=4))
    assert e.steer is not None and e.steer_reason is None
    session = tuple(i for i, sv in e.table.services.items() if sv.value == "samokat")[:2]
    plain = EngineRequest("samokat", session=session, k=10)  # type: ignore[arg-type]
    with_text = EngineRequest("samokat", session=session, k=10, critique="полезнее")  # type: ignore[arg-type]
    a, b, c = e.recommend([plain, with_text, plain])
    (alone,) = e.recommend([plain])
    assert [x.score for x in a] == [x.score for x in alone] == [x.score for x in c]
    assert not np.allclose([x.score for x in a], [x.score for x in b])


def test_the_service_reports_the_learned_steer(steered: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    d, _ = steered
    e = Engine(d, EngineConfig(backend="torch", slots=4))
    s = Serving(e, AdapterRegistry(tmp_path / "r.db", e.fingerprint, e.shapes), Metrics())
    r1, r2, r3, r4 = s.run_batch(
        [
            RecommendRequest(user_id="a", service="samokat", critique="без мяса"),
            RecommendRequest(user_id="b", service="samokat", critique="不要肉"),
            RecommendRequest(user_id="c", service="samokat"),
            RecommendRequest(user_id="d", service="samokat", critique="ну такое себе"),
        ]
    )
    assert r1.critique is not None and LEARNED_STEER in r1.critique.steer
    assert r2.critique is not None and LEARNED_STEER not in r2.critique.steer  # unknown language
    assert r3.critique is None
    assert r4.critique is not None and LEARNED_STEER not in r4.critique.steer  # not understood


def test_eval_critiques_adds_the_learned_rows_and_they_break_no_constraint(
    steered: tuple[Path, dict],
    synth_data_dir: Path,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    d, _ = steered
    out = tmp_path / "c.json"
    r = CliRunner().invoke(
        app,
        ["eval-critiques", "--data", str(synth_data_dir), "--model", str(d), "--users", "40",
         "--json", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res["metrics"]) == {"without critique", "with critique", LEARNED, LEARNED_ONLY}
    assert res["learned_steer"] == "on"
    hc = res["hard_constraints"]
    assert hc["violating_items"] == 0 and hc["learned"]["violating_items"] == 0
    assert hc["learned"]["returned_items"] > 0


def test_a_stale_or_broken_steer_is_switched_off_and_said_not_served(
    steered: tuple[Path, dict],  # type: ignore[type-arg]
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """A base retrained in place, or a steer file with non-finite weights: serving goes on."""
    from safetensors.torch import load_file, save_file

    d, _ = steered
    meta = json.loads((d / "steer.json").read_text())
    cases = {}
    stale = tmp_path / "stale"
    shutil.copytree(tiny_model_dir, stale)
    (stale / "steer.json").write_text(json.dumps({**meta, "base": "0" * 16}))
    shutil.copy(d / "steer.safetensors", stale / "steer.safetensors")
    cases["trained for base 0000"] = stale
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    w = load_file(str(broken / "steer.safetensors"))
    name = next(iter(w))
    w[name][0] = float("nan")
    save_file(w, str(broken / "steer.safetensors"))
    cases["non-finite"] = broken
    for why, m in cases.items():
        e = Engine(m, EngineConfig(backend="torch", slots=4))
        assert e.steer is None and e.steer_reason is not None and why in e.steer_reason
        s = Serving(
            e, AdapterRegistry(tmp_path / f"{why[:5]}.db", e.fingerprint, e.shapes), Metrics()
        )
        (r,) = s.run_batch([RecommendRequest(user_id="a", service="samokat", critique="без мяса")])
        assert r.critique is not None and r.critique.applied  # the hard part still holds
        assert LEARNED_STEER not in r.critique.steer and any(why in f for f in r.critique.flags)
