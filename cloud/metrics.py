"""Prometheus metrics of the API and the engine, and merging the engine core's into a worker's.

Kept apart from the engine so an API worker process imports no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EXPORTED_METRICS", "Metrics", "select_families"]

# the families the engine core reports to the workers (they are the core's, not a worker's)
EXPORTED_METRICS = (
    "userlayer_slot_loads",
    "userlayer_registry_cache",
    "userlayer_fallbacks",
    "userlayer_critiques",
)


@dataclass
class Metrics:
    """Prometheus metrics of one app (its own collector registry)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "userlayer_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "userlayer_request_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch = Histogram(
            "userlayer_batch_rows",
            "Rows per engine batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "userlayer_batch_seconds", "Engine time per batch", registry=r
        )
        self.fallbacks = Counter(
            "userlayer_fallbacks", "Rows served by the base model", ["reason"], registry=r
        )
        self.critiques = Counter(
            "userlayer_critiques",
            "Requests with a critique, by outcome (applied, ignored)",
            ["outcome"],
            registry=r,
        )
        self.slot_loads = Counter(
            "userlayer_slot_loads", "Adapters copied into engine slots", registry=r
        )
        self.cache = Gauge("userlayer_registry_cache", "Registry RAM tier", ["kind"], registry=r)
        self.queue = Gauge("userlayer_queue_depth", "Requests waiting", registry=r)


def select_families(text: str, names: tuple[str, ...], keep: bool) -> str:
    """The lines of Prometheus ``text`` in (``keep``) or not in the metric families ``names``."""
    lines = [ln for ln in text.splitlines() if (_family(ln) in names) == keep]
    return "\n".join(lines) + "\n" if lines else ""


def _family(line: str) -> str:
    if line.startswith("# "):
        parts = line.split(" ", 3)
        return parts[2] if len(parts) > 2 else ""
    name = line.split("{", 1)[0].split(" ", 1)[0]
    for suffix in ("_total", "_created"):
        name = name.removesuffix(suffix)
    return name
