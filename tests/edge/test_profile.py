"""Profile aggregation: sessions, windows, decay, context, and mode detection on ground truth."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from tests.edge.conftest import make_events
from userlayer.edge.exceptions import EdgeError
from userlayer.edge.profile import MODES, ModeDetector, ProfileConfig, build_profile, sessionize
from userlayer.sdk.schemas import Daypart, Mode, Service
from userlayer.tools.data.synth import SynthResult


def test_sessions_windows_and_decay() -> None:
    a = make_events("u", 3, "samokat")  # day 0, 8:00-10:00 (gaps of 1 h)
    b = make_events("u", 2, "kuper", start_day=20)
    c = make_events("u", 2, "megamarket", start_day=400)
    prof = build_profile(a + b + c, categories={"i0": ("food", "snack"), "i1": ("food",)})
    # the long-term window (365 days) drops day 0 and day 20 relative to day 401
    assert [e.service for e in prof.events] == [Service.MEGAMARKET] * 2
    prof = build_profile(a + b, config=ProfileConfig(session_gap_minutes=90))
    assert [len(s.events) for s in prof.sessions] == [3, 2]
    assert [s.service for s in prof.sessions] == [Service.SAMOKAT, Service.KUPER]
    assert len(prof.short_term) == 2  # the last 7 days: only the kuper events
    assert set(prof.by_service) == {Service.SAMOKAT, Service.KUPER}
    assert prof.cross_service == prof.events
    # decay: one half-life ago weighs 0.5
    cfg = ProfileConfig(half_life_days=10)
    prof = build_profile(a + b, config=cfg, categories={"i0": ("food", "snack")})
    old, new = prof.events[0], prof.events[-1]
    assert prof.weight(new) == pytest.approx(1.0)
    age = (prof.now - old.timestamp).total_seconds() / 86400
    assert prof.weight(old) == pytest.approx(0.5 ** (age / 10))
    assert prof.interests["food"] == pytest.approx(prof.weight(a[0]) + prof.weight(b[0]))
    assert prof.top_interests(1)[0][0] == "food"
    # 60-minute sessions gap default 30 min -> 1 h apart events are separate sessions
    assert len(sessionize(a)) == 3


def test_context_is_filled_from_the_timestamp() -> None:
    e = make_events("u", 1)[0]
    bare = e.model_copy(
        update={
            "context": e.context.model_copy(update={"daypart": Daypart.UNKNOWN, "weekday": None})
        }
    )
    prof = build_profile([bare])
    assert prof.events[0].context.daypart is Daypart.MORNING
    assert prof.events[0].context.weekday == e.timestamp.weekday()


def test_refuses_several_users_and_bad_config() -> None:
    with pytest.raises(EdgeError, match="several users"):
        build_profile(make_events("a", 1) + make_events("b", 1))
    with pytest.raises(EdgeError, match="half_life_days"):
        ProfileConfig(half_life_days=0)
    with pytest.raises(EdgeError, match="short_term_days"):
        ProfileConfig(short_term_days=400)


def test_mode_detection_beats_the_service_rule_on_ground_truth(small_synth: SynthResult) -> None:
    ds = small_synth.dataset
    by_user = ds.user_events()
    cats = ds.categories()
    truth: dict[str, list[str]] = {}
    for u, m in zip(
        ds.events.column("user_id").cast(pa.string()).to_pylist(),
        small_synth.true_mode,
        strict=True,
    ):
        truth.setdefault(u, []).append(m)
    users = sorted(by_user)
    det = ModeDetector()
    fitted = sum(det.update(sessionize(by_user[u]), cats) for u in users[:30])
    assert fitted > 50
    det = ModeDetector.from_json(det.to_json())  # survives a round trip
    ok = rule = n = 0
    for u in users[30:]:
        pos = 0
        for s in sessionize(by_user[u]):
            true = Counter(truth[u][pos : pos + len(s.events)]).most_common(1)[0][0]
            pos += len(s.events)
            if s.mode is not Mode.UNSPECIFIED or true not in {m.value for m in MODES}:
                continue  # stated sessions are not detection's job
            n += 1
            ok += det.detect(s, cats).value == true
            rule += ("shopping" if s.service is Service.MEGAMARKET else "hungry") == true
    assert n > 50
    assert ok / n > 0.75 and ok > rule  # measured ~0.87 vs 0.81 on 200 users


def test_detector_is_uniform_untrained_and_rejects_garbage() -> None:
    p = ModeDetector().predict_proba(["s=samokat"])
    assert all(v == pytest.approx(1 / 3) for v in p.values())
    with pytest.raises(EdgeError, match="mode detector"):
        ModeDetector.from_json("{}")
