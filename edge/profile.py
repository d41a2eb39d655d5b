"""Profile aggregation: from a user's events across services to the training view.

After concept 000: the user's events are grouped into sessions (same service,
gaps under ``session_gap_minutes``), split into a short-term window (the last
``short_term_days``) and a long-term window (the last ``long_term_days``)
whose old interests fade with an exponential decay (``half_life_days``), kept
both per service and as one cross-service sequence, and every event carries
its full context (mode, daypart, weekday, season, weather, geo), filled in
from the timestamp where the event did not state it.

Mode detection (:class:`ModeDetector`): where a request or session states no
mode, a naive Bayes model over the service, the daypart, the weather and the
categories of the session's items gives a distribution over ``hungry``,
``shopping`` and ``health`` (the modes that have adapter components); it is
fitted on sessions whose mode was stated (the user's own history, a
population prior, or both). A stated ``unspecified`` cannot be told from an
unstated mode, so it is not a class.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from userlayer.edge.exceptions import EdgeError
from userlayer.sdk.schemas import (
    Daypart,
    Event,
    Mode,
    Season,
    Service,
    daypart_of,
    season_of,
)

__all__ = [
    "ModeDetector",
    "Profile",
    "ProfileConfig",
    "Session",
    "build_profile",
    "sessionize",
]

MODES = (Mode.HUNGRY, Mode.SHOPPING, Mode.HEALTH)  # the modes with adapter components


@dataclass(frozen=True)
class ProfileConfig:
    """Windows, sessions and decay of the training view; validated on creation."""

    session_gap_minutes: float = 30.0
    short_term_days: float = 7.0
    long_term_days: float = 365.0
    half_life_days: float = 60.0
    actions: tuple[str, ...] = ("view", "add_to_cart", "purchase")

    def __post_init__(self) -> None:
        for name in ("session_gap_minutes", "short_term_days", "long_term_days", "half_life_days"):
            if not getattr(self, name) > 0:
                raise EdgeError(f"`{name}` should be positive, got {getattr(self, name)}")
        if self.short_term_days > self.long_term_days:
            raise EdgeError("`short_term_days` should not exceed `long_term_days`")


@dataclass
class Session:
    """Consecutive events of one service with small gaps."""

    service: Service
    events: list[Event]
    mode: Mode = Mode.UNSPECIFIED  # as stated by its events (the most common stated mode)

    @property
    def start(self) -> datetime:
        """Time of the first event."""
        return self.events[0].timestamp


def _fill_context(e: Event) -> Event:
    c = e.context
    upd: dict[str, Any] = {}
    if c.daypart is Daypart.UNKNOWN:
        upd["daypart"] = daypart_of(e.timestamp)
    if c.weekday is None:
        upd["weekday"] = e.timestamp.weekday()
    if c.season is Season.UNKNOWN:
        upd["season"] = season_of(e.timestamp)
    if not upd:
        return e
    return e.model_copy(update={"context": c.model_copy(update=upd)})


def sessionize(events: Sequence[Event], gap_minutes: float = 30.0) -> list[Session]:
    """Split time-ordered events into sessions (a new one on a gap or a change of service)."""
    gap = timedelta(minutes=gap_minutes)
    out: list[Session] = []
    for e in events:
        last = out[-1] if out else None
        if (
            last is None
            or last.service is not e.service
            or e.timestamp - last.events[-1].timestamp > gap
        ):
            out.append(Session(e.service, [e]))
        else:
            last.events.append(e)
    for s in out:
        stated = Counter(e.context.mode for e in s.events if e.context.mode is not Mode.UNSPECIFIED)
        s.mode = stated.most_common(1)[0][0] if stated else Mode.UNSPECIFIED
    return out


@dataclass
class Profile:
    """The training view of one user at time ``now``."""

    user_id: str
    now: datetime
    config: ProfileConfig
    events: list[Event]  # long-term window, time order, context filled in
    sessions: list[Session]
    short_term: list[Event]
    by_service: dict[Service, list[Event]]
    interests: dict[str, float] = field(default_factory=dict)  # decayed weight per category

    def weight(self, e: Event) -> float:
        """Exponential time decay: 1 now, 0.5 one half-life ago."""
        age = (self.now - e.timestamp).total_seconds() / 86_400
        return math.exp(-math.log(2) * max(age, 0.0) / self.config.half_life_days)

    @property
    def cross_service(self) -> list[Event]:
        """All services' events as one sequence (the long-term window)."""
        return self.events

    def top_interests(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` categories with the highest decayed weight."""
        return sorted(self.interests.items(), key=lambda kv: -kv[1])[:k]


def build_profile(
    events: Iterable[Event],
    now: datetime | None = None,
    config: ProfileConfig | None = None,
    categories: Mapping[str, Sequence[str]] | None = None,
) -> Profile:
    """Aggregate one user's events (any order, any services) into a :class:`Profile`.

    Args:
        events: the user's events; other actions than ``config.actions`` are dropped.
        now: the reference time (default: the last event's time).
        config: windows and decay.
        categories: item id -> category path, for the decayed interest profile.

    Raises:
        EdgeError: if the events belong to more than one user.
    """
    cfg = config or ProfileConfig()
    evs = sorted((e for e in events if e.action.value in cfg.actions), key=lambda e: e.timestamp)
    users = {e.user_id for e in evs}
    if len(users) > 1:
        raise EdgeError(f"events of several users given to build_profile: {sorted(users)[:3]}")
    user = next(iter(users), "")
    ref = now or (evs[-1].timestamp if evs else datetime.fromtimestamp(0).astimezone())
    evs = [
        _fill_context(e)
        for e in evs
        if ref - timedelta(days=cfg.long_term_days) < e.timestamp <= ref  # as the ledger's window
    ]
    by_service: dict[Service, list[Event]] = defaultdict(list)
    for e in evs:
        by_service[e.service].append(e)
    short = [e for e in evs if e.timestamp >= ref - timedelta(days=cfg.short_term_days)]
    prof = Profile(
        user, ref, cfg, evs, sessionize(evs, cfg.session_gap_minutes), short, dict(by_service)
    )
    if categories is not None:
        acc: dict[str, float] = defaultdict(float)
        for e in evs:
            for depth in range(1, len(categories.get(e.item_id, ())) + 1):
                acc["/".join(categories[e.item_id][:depth])] += prof.weight(e)
        prof.interests = dict(acc)
    return prof


class ModeDetector:
    """Naive Bayes over (service, daypart, weather, session categories) -> mode.

    Counts are kept as plain numbers and saved as JSON, so a population prior
    made in the cloud can be shipped to devices and refined with the user's own
    stated modes (:meth:`update`).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if alpha <= 0:
            raise EdgeError(f"`alpha` should be positive, got {alpha}")
        self.alpha = alpha
        self.class_counts: dict[str, float] = {m.value: 0.0 for m in MODES}
        self.feature_counts: dict[str, dict[str, float]] = {m.value: {} for m in MODES}
        self.vocab: set[str] = set()

    @staticmethod
    def features(
        service: Service | str,
        when: datetime,
        weather: str | None,
        item_categories: Iterable[Sequence[str]],
    ) -> list[str]:
        """The feature tokens of a session or request."""
        out = [f"s={Service(service).value}", f"d={daypart_of(when).value}"]
        if weather and weather != "unknown":
            out.append(f"w={weather}")
        seen = set()
        for cat in item_categories:
            for depth in range(1, len(cat) + 1):
                seen.add("c=" + "/".join(cat[:depth]))
        return out + sorted(seen)

    def _session_features(self, s: Session, categories: Mapping[str, Sequence[str]]) -> list[str]:
        return self.features(
            s.service,
            s.start,
            s.events[0].context.weather.value,
            (categories.get(e.item_id, ()) for e in s.events),
        )

    def update(self, sessions: Iterable[Session], categories: Mapping[str, Sequence[str]]) -> int:
        """Add the sessions whose mode was stated; returns how many were used."""
        n = 0
        for s in sessions:
            if s.mode not in MODES:
                continue
            feats = self._session_features(s, categories)
            self.class_counts[s.mode.value] += 1
            fc = self.feature_counts[s.mode.value]
            for f in feats:
                fc[f] = fc.get(f, 0.0) + 1
                self.vocab.add(f)
            n += 1
        return n

    def predict_proba(self, feats: Sequence[str]) -> dict[Mode, float]:
        """Posterior over the modes for a feature list (uniform if nothing was fitted)."""
        total = sum(self.class_counts.values())
        v = max(len(self.vocab), 1)
        logp = {}
        for m in MODES:
            c = self.class_counts[m.value]
            lp = math.log((c + self.alpha) / (total + self.alpha * len(MODES)))
            fc = self.feature_counts[m.value]
            denom = sum(fc.values()) + self.alpha * v
            for f in feats:
                if f in self.vocab:
                    lp += math.log((fc.get(f, 0.0) + self.alpha) / denom)
            logp[m] = lp
        top = max(logp.values())
        z = sum(math.exp(x - top) for x in logp.values())
        return {m: math.exp(x - top) / z for m, x in logp.items()}

    def detect(self, s: Session, categories: Mapping[str, Sequence[str]]) -> Mode:
        """The stated mode if there is one, else the most likely."""
        if s.mode in MODES:
            return s.mode
        p = self.predict_proba(self._session_features(s, categories))
        return max(p, key=lambda m: p[m])

    def to_json(self) -> str:
        """Serialize the counts."""
        return json.dumps(
            {
                "format": "userlayer.mode-detector/1",
                "alpha": self.alpha,
                "class_counts": self.class_counts,
                "feature_counts": self.feature_counts,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> ModeDetector:
        """Load :meth:`to_json` output.

        Raises:
            EdgeError: if it is not a mode detector document.
        """
        try:
            doc = json.loads(raw)
            if doc.get("format") != "userlayer.mode-detector/1":
                raise ValueError(f"format {doc.get('format')!r}")
            det = cls(float(doc["alpha"]))
            for m in MODES:
                det.class_counts[m.value] = float(doc["class_counts"][m.value])
                det.feature_counts[m.value] = {
                    str(k): float(v) for k, v in doc["feature_counts"][m.value].items()
                }
                det.vocab.update(det.feature_counts[m.value])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EdgeError(f"not a mode detector document: {e}") from e
        return det
