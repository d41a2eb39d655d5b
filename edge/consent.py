"""Cross-service consent: which services' events may shape which service's adapter.

One person is usually a user of two or three of the services, and their
cross-service profile is the most valuable signal (concept 000), so by
default every service's adapter is trained on the user's events of all
services. A user can restrict that: ``{"megamarket": ["megamarket"]}`` keeps
Megamarket's adapter to Megamarket's events, while the grocery services may
still learn from everything. The setting lives with the user's encrypted
profile (``ProfileStore`` setting ``consent``) and is enforced where training
happens (:func:`userlayer.edge.local.train_and_seal`): services whose allowed
sources differ get adapters trained apart, each only on the allowed events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from userlayer.edge.exceptions import EdgeError
from userlayer.sdk.schemas import Service

__all__ = ["SETTING", "Consent"]

SETTING = "consent"
_ALL = tuple(sorted(s.value for s in Service))


def _service(name: object, where: str) -> str:
    try:
        return Service(str(name)).value
    except ValueError as e:
        raise EdgeError(f"{where}: unknown service {name!r} (one of {list(_ALL)})") from e


@dataclass(frozen=True)
class Consent:
    """Target service -> the services whose events may shape its adapter.

    A service missing from ``sources`` may learn from every service (the
    default); an empty list means its adapter is never trained.

    Raises:
        EdgeError: on an unknown service name.
    """

    sources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean = {
            _service(t, "consent target"): tuple(
                sorted({_service(s, f"consent sources of {t}") for s in srcs})
            )
            for t, srcs in self.sources.items()
        }
        object.__setattr__(self, "sources", clean)

    def allowed(self, target: str) -> tuple[str, ...]:
        """The services whose events may shape ``target``'s adapter."""
        return self.sources.get(_service(target, "consent target"), _ALL)

    def groups(self, targets: Iterable[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        """Targets grouped by identical allowed sources: [(sources, targets)], largest first.

        Targets whose sources are empty are left out (never trained).
        """
        by: dict[tuple[str, ...], list[str]] = {}
        for t in sorted(set(targets)):
            src = self.allowed(t)
            if src:
                by.setdefault(src, []).append(t)
        return sorted(by.items(), key=lambda kv: (-len(kv[0]), kv[0]))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the stored setting)."""
        return {
            "format": "userlayer.consent/1",
            "sources": {k: list(v) for k, v in self.sources.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, object] | None) -> Consent:
        """Parse :meth:`to_dict` output (``None``: the default).

        Raises:
            EdgeError: if it is not a consent document.
        """
        if doc is None:
            return cls()
        src = doc.get("sources")
        if doc.get("format") != "userlayer.consent/1" or not isinstance(src, dict):
            raise EdgeError(f"not a consent document: {doc!r}")
        if not all(isinstance(v, list) for v in src.values()):
            raise EdgeError("consent sources should be lists of service names")
        return cls({str(k): tuple(v) for k, v in src.items()})
