"""Shared fixtures for edge tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from userlayer.sdk.schemas import Context, Event


def make_events(
    user: str, n: int, service: str = "samokat", start_day: int = 0, item_prefix: str = "i"
) -> list[Event]:
    """``n`` valid events of one user, one hour apart."""
    t0 = datetime(2024, 3, 1, 8, tzinfo=UTC) + timedelta(days=start_day)
    return [
        Event.parse(
            {
                "user_id": user,
                "service": service,
                "item_id": f"{item_prefix}{k}",
                "action": "purchase",
                "timestamp": t0 + timedelta(hours=k),
                "price": 10.0 + k,
                "context": Context.from_timestamp(t0 + timedelta(hours=k), geo_cell="u4pruyd"),
            }
        )
        for k in range(n)
    ]
