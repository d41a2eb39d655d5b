"""Explanations on the edge: exact scores, faithful evidence, narratives in Russian and English."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from userlayer.edge.exceptions import ExplainError
from userlayer.edge.explain import (
    CONTEXT_FIELDS,
    Evidence,
    ExplainConfig,
    Explainer,
    Unit,
    render,
)
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.io import load_model
from userlayer.sdk.model.prompt import mode_one_hot, pack_prompts
from userlayer.sdk.model.tokens import item_tokens
from userlayer.sdk.model.transformer import RowAdapters, new_adapter
from userlayer.sdk.schemas import Action, Context, Daypart, Event, Mode, Service, Weather
from userlayer.sdk.semantic_ids import SemanticIdTable
from userlayer.tools.data.format import Dataset
from userlayer.tools.eval.explanations import ExplainEvalConfig, evaluate_explanations


@pytest.fixture(scope="module")
def parts(tiny_model_dir: Path, synth_data_dir: Path) -> tuple:  # type: ignore[type-arg]
    model = load_model(tiny_model_dir).eval()
    table = SemanticIdTable.load(tiny_model_dir / "sids.json")
    by_user = Dataset.load(synth_data_dir).user_events()
    user = max(by_user, key=lambda u: len(by_user[u]))
    return model, table, by_user[user]


def _adapter(model, seed: int = 3) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    acfg = AdapterConfig()
    ad = new_adapter(model.cfg, acfg, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    return acfg, {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in ad.items()}


def test_scores_equal_the_models_own_loss(parts) -> None:  # type: ignore[no-untyped-def]
    """The cached scorer (one prefill per variant) gives the teacher-forced log-probability."""
    model, table, events = parts
    acfg, ad = _adapter(model)
    last = events[-1]
    ctx = last.context.model_copy(update={"mode": Mode.HEALTH})
    xp = Explainer(model, table, ad, acfg)
    req = xp.request(events[:-1], last.service, ctx)
    items = [e.item_id for e in events[-6:]]
    gone = [[Unit("event", 0)], [], [Unit("context", field="mode")], [Unit("event", 3)], [], []]
    got = xp.without(req, items, gone)
    rows, modes = [], []
    for it, g in zip(items, gone, strict=True):
        toks, cx = xp._prompt(req, frozenset(g))
        codes = item_tokens(table.level_sizes, table.codes[it])
        rows.append((toks + codes, cx + [[0] * 7] * len(codes)))
        modes.append(Mode.UNSPECIFIED if g and g[0].field == "mode" else Mode.HEALTH)
    tok, cx = pack_prompts(rows, 7)
    n = len(rows)
    ra = RowAdapters(
        acfg,
        torch.ones(n, dtype=torch.bool),
        {k: v[None].expand(n, *v.shape) for k, v in ad.items()},
        torch.tensor([mode_one_hot(m, acfg.n_modes) for m in modes]),
    )
    with torch.no_grad():
        want = -model.loss(tok, cx, ra, reduction="none", last_item_only=True) * model.cfg.n_levels
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(got, xp.score(req, items))  # the removals change the scores


def test_attributions_are_single_removals(parts) -> None:  # type: ignore[no-untyped-def]
    model, table, events = parts
    xp = Explainer(model, table)
    last = events[-1]
    ctx = Context(mode=Mode.HUNGRY, daypart=Daypart.EVENING, weekday=5, weather=Weather.RAIN)
    req = xp.request(events[:-1], last.service, ctx)
    units = xp.units(req)
    assert (
        len(units) == min(len(events) - 1, model.cfg.max_items - 1) + 4
    )  # the season is unknown: no unit
    assert {u.field for u in units if u.kind == "context"} == set(CONTEXT_FIELDS) - {"season"}
    items = [e.item_id for e in events[-3:]]
    full, drops, units = xp.attributions(req, items)
    torch.testing.assert_close(full, xp.score(req, items))
    for u in (units[0], units[-1]):
        one = xp.without(req, items, [[u]] * len(items))
        torch.testing.assert_close(drops[units.index(u)], full - one, atol=1e-5, rtol=0)


def test_explanations_cite_only_what_raises_the_score(parts) -> None:  # type: ignore[no-untyped-def]
    model, table, events = parts
    cfg = ExplainConfig(min_drop=0.01, max_reasons=2)
    xp = Explainer(model, table, cfg=cfg)
    last = events[-1]
    items = [e.item_id for e in events[-8:]][::-1]
    out = xp.explain(events[:-1], last.service, items, last.context, now=last.timestamp)
    assert [e.item_id for e in out] == items  # one each, in the order given
    assert any(e.evidence for e in out)
    for e in out:
        assert len(e.evidence) <= 2 and all(ev.drop >= 0.01 for ev in e.evidence)
        assert [ev.drop for ev in e.evidence] == sorted(
            (ev.drop for ev in e.evidence), reverse=True
        )
        assert e.language == "ru" and e.item_id in e.text  # no titles given: the id
        for ev in e.evidence:
            if ev.unit.kind == "event":
                assert ev.days_ago is not None and ev.days_ago >= 0
    assert xp.explain(events, last.service, []) == []


def test_bad_requests_are_named(parts) -> None:  # type: ignore[no-untyped-def]
    model, table, events = parts
    xp = Explainer(model, table)
    with pytest.raises(ExplainError, match=r"does not know.*nope"):
        xp.explain(events, events[-1].service, ["nope"])
    with pytest.raises(ExplainError, match="language"):
        xp.explain(events, events[-1].service, [events[-1].item_id], language="de")
    with pytest.raises(ExplainError, match="language"):
        ExplainConfig(language="fr")
    with pytest.raises(ExplainError, match="min_drop"):
        ExplainConfig(min_drop=-1)
    with pytest.raises(ExplainError, match="AdapterConfig"):
        Explainer(model, table, {"x": torch.zeros(1)})


def _event(item: str, ts: datetime) -> Event:
    return Event(
        user_id="u1",
        service=Service.SAMOKAT,
        item_id=item,
        action=Action.PURCHASE,
        timestamp=ts,
    )


def test_narratives_in_russian_and_english() -> None:
    now = datetime(2026, 3, 7, 19, tzinfo=UTC)
    hist = [
        _event("milk", now - timedelta(days=21)),
        _event("milk", now - timedelta(days=14)),
        _event("milk", now - timedelta(days=7)),
        _event("bread", now - timedelta(days=1)),
    ]
    cited = [
        Evidence(Unit("event", 2), 0.9, item_id="milk", days_ago=7.0),
        Evidence(Unit("event", 3), 0.5, item_id="bread", days_ago=1.0),
        Evidence(Unit("context", field="weekday"), 0.2, value="5"),
        Evidence(Unit("event", 1), 0.1, item_id="milk", days_ago=14.0),
    ]
    titles = {"milk": "Молоко 3,2%", "bread": "Хлеб Бородинский"}
    ru = render("milk", cited, hist, now, titles, "ru")
    assert ru == (
        "«Молоко 3,2%»: вы берёте это примерно раз в 7 дн., последний раз 7 дн. назад, "
        "вы брали «Хлеб Бородинский» вчера и сегодня суббота."
    )
    en = render("milk", cited[:3], hist, now, {"milk": "Milk", "bread": "Rye bread"}, "en")
    assert en == (
        "“Milk”: you buy it about every 7 days, last 7 days ago, "
        "you had “Rye bread” yesterday and it is Saturday."
    )
    mode = [Evidence(Unit("context", field="mode"), 0.3, value="health")]
    assert render("bread", mode, hist, now, {}, "en") == ("“bread”: you are choosing healthy food.")
    assert "ни одно" in render("milk", [], hist, now, titles, "ru")


def test_faithfulness_on_a_small_model(synth_data_dir: Path, tiny_model_dir: Path) -> None:
    """Removing the cited evidence lowers the item's score, far more than random evidence.

    The tiny model's attributions are small (a 1-epoch, d_model 32 base): a lower
    citing threshold than the default 0.1 nats.
    """
    cfg = ExplainEvalConfig(users=12, k=5, beam=10, explain=ExplainConfig(min_drop=0.02))
    res = evaluate_explanations(synth_data_dir, tiny_model_dir, cfg)
    comp = res["comprehensiveness"]
    assert res["with_evidence"] >= 0.5 * res["explanations"] > 0
    assert comp["cited"]["share_positive"] >= 0.9
    assert comp["cited"]["mean"] > 2 * max(comp["random"]["mean"], 0.01)
    suff = res["sufficiency"]
    assert suff["cited"]["mean"] < suff["random"]["mean"]  # the cited evidence alone keeps more


def test_eval_explanations_cli(synth_data_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from userlayer.tools.cli import app

    out = tmp_path / "x.json"
    r = CliRunner().invoke(
        app,
        ["eval-explanations", "--data", str(synth_data_dir), "--model", str(tiny_model_dir),
         "--users", "4", "--k", "3", "--language", "en", "--json", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["explanations"] == 12 and "score drops" in r.output
    bad = CliRunner().invoke(
        app, ["eval-explanations", "--data", "x", "--model", "y", "--language", "de"]
    )
    assert bad.exit_code != 0 and "language" in bad.output


def test_narratives_use_each_events_action_and_calendar_days() -> None:
    """Defects of the first templates: a view was told as a purchase, and an event of
    yesterday morning, explained early today, was "today" (whole 24-hour days)."""
    now = datetime(2026, 3, 7, 8, 0, tzinfo=UTC)
    seen = _event("bread", now - timedelta(hours=22, minutes=48))  # 09:12 yesterday
    seen = seen.model_copy(update={"action": Action.VIEW})
    cited = [
        Evidence(
            Unit("event", 0),
            0.4,
            item_id="bread",
            days_ago=0.95,
            action="view",
            when=seen.timestamp,
        )
    ]
    assert render("milk", cited, [seen], now, {}, "ru") == "«milk»: вы смотрели «bread» вчера."
    assert (
        render("milk", cited, [seen], now, {}, "en") == "“milk”: you looked at “bread” yesterday."
    )
    # the same item only seen before: not a purchase cycle
    again = [Evidence(Unit("event", 0), 0.4, item_id="bread", action="view")]
    assert render("bread", again, [seen], now, {}, "ru") == "«bread»: вы уже смотрели это вчера."
    views = [seen.model_copy(update={"timestamp": now - timedelta(days=d)}) for d in (3, 6)]
    bought = _event("bread", now - timedelta(days=9))
    text = render("bread", again, [*views, bought, seen], now, {}, "en")
    assert text == "“bread”: you already had it 9 days ago."  # the views are no cycle
    with pytest.raises(ExplainError, match="min_drop"):
        ExplainConfig(min_drop=0)
