"""Semantic IDs: the item vocabulary of the generative recommender.

Every catalog item gets a tuple of ``L`` integer codes (coarse to fine, from
residual quantization of an item embedding) plus a final collision level that
makes the tuple unique. The model generates these codes one level at a time;
:class:`SidTrie` tells which codes may follow a prefix so that decoding can
only ever produce real items, optionally of one service.

File format (``sids.json``, UTF-8 JSON)::

    {"format": "userlayer.sids/1",
     "level_sizes": [256, 256, 256, 4],     # vocabulary size of each level
     "method": "...", "source": "...",       # provenance, free text
     "items": {"<item_id>": {"codes": [c1, c2, c3, c4], "service": "kuper"}, ...}}

The module is pure Python so that a cloud replica can load it without numpy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from userlayer.sdk.exceptions import SemanticIdError
from userlayer.sdk.schemas import Service

__all__ = ["SIDS_FORMAT", "SemanticIdTable", "SidTrie"]

SIDS_FORMAT = "userlayer.sids/1"
_SERVICE_BIT = {s: 1 << i for i, s in enumerate(Service)}
_ALL_SERVICES = sum(_SERVICE_BIT.values())


@dataclass(frozen=True)
class SemanticIdTable:
    """Item id -> Semantic ID codes, with the service of each item.

    Attributes:
        codes: one tuple of codes per item; all tuples have the same length
            and are unique.
        services: the service of each item (same keys as ``codes``).
        level_sizes: vocabulary size of each level; every code at level ``i``
            is in ``[0, level_sizes[i])``.
        method: how the codes were made (free text, recorded for provenance).
        source: what they were made from (free text).
    """

    codes: Mapping[str, tuple[int, ...]]
    services: Mapping[str, Service]
    level_sizes: tuple[int, ...]
    method: str = ""
    source: str = ""
    _by_codes: dict[tuple[int, ...], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.level_sizes or any(s < 1 for s in self.level_sizes):
            raise SemanticIdError(f"level_sizes must be positive, got {list(self.level_sizes)}")
        if set(self.codes) != set(self.services):
            missing = sorted(set(self.codes) ^ set(self.services))[:5]
            raise SemanticIdError(f"codes and services disagree on items, e.g. {missing}")
        n_levels = len(self.level_sizes)
        by_codes: dict[tuple[int, ...], str] = {}
        for item, c in self.codes.items():
            if len(c) != n_levels:
                raise SemanticIdError(
                    f"item {item!r} has {len(c)} codes, expected {n_levels} levels"
                )
            for level, (code, size) in enumerate(zip(c, self.level_sizes, strict=True)):
                if not 0 <= code < size:
                    raise SemanticIdError(
                        f"item {item!r}: code {code} at level {level} outside [0, {size})"
                    )
            other = by_codes.setdefault(c, item)
            if other != item:
                raise SemanticIdError(f"items {other!r} and {item!r} share Semantic ID {list(c)}")
        object.__setattr__(self, "_by_codes", by_codes)

    @property
    def n_levels(self) -> int:
        """Number of code levels, the collision level included."""
        return len(self.level_sizes)

    def __len__(self) -> int:
        return len(self.codes)

    def item_of(self, codes: Sequence[int]) -> str | None:
        """Return the item whose ID is ``codes``, or None if there is none."""
        return self._by_codes.get(tuple(codes))

    def trie(self) -> SidTrie:
        """Build the prefix trie of this table's IDs."""
        return SidTrie(self)

    def to_json(self) -> dict[str, Any]:
        """Return the ``sids.json`` document of this table."""
        return {
            "format": SIDS_FORMAT,
            "level_sizes": list(self.level_sizes),
            "method": self.method,
            "source": self.source,
            "items": {
                item: {"codes": list(c), "service": self.services[item].value}
                for item, c in self.codes.items()
            },
        }

    def save(self, path: str | Path) -> None:
        """Write the table as ``sids.json``."""
        Path(path).write_text(json.dumps(self.to_json(), separators=(",", ":")), "utf-8")

    @classmethod
    def from_json(cls, doc: Any) -> SemanticIdTable:
        """Parse a ``sids.json`` document.

        Raises:
            SemanticIdError: if the document is not a valid table.
        """
        if not isinstance(doc, dict) or doc.get("format") != SIDS_FORMAT:
            raise SemanticIdError(f"not a {SIDS_FORMAT} document")
        items = doc.get("items")
        sizes = doc.get("level_sizes")
        if not isinstance(items, dict) or not isinstance(sizes, list):
            raise SemanticIdError("sids document needs 'items' (object) and 'level_sizes' (list)")
        codes: dict[str, tuple[int, ...]] = {}
        services: dict[str, Service] = {}
        for item, entry in items.items():
            try:
                raw = entry["codes"]
                if not isinstance(raw, list) or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in raw
                ):
                    raise TypeError("codes must be a list of integers")
                codes[item] = tuple(raw)
                services[item] = Service(entry["service"])
            except (KeyError, TypeError, ValueError) as e:
                raise SemanticIdError(f"item {item!r}: bad entry ({e})") from e
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
            raise SemanticIdError(f"level_sizes must be integers, got {sizes}")
        return cls(
            codes=codes,
            services=services,
            level_sizes=tuple(sizes),
            method=str(doc.get("method", "")),
            source=str(doc.get("source", "")),
        )

    @classmethod
    def load(cls, path: str | Path) -> SemanticIdTable:
        """Read ``sids.json`` from a file.

        Raises:
            SemanticIdError: if the file is missing, not JSON, or not a valid table.
        """
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise SemanticIdError(f"cannot read Semantic IDs from {path}: {e}") from e
        return cls.from_json(doc)


class SidTrie:
    """Prefix trie over a table's Semantic IDs, aware of each item's service.

    ``allowed(prefix, service)`` returns the codes that extend ``prefix``
    towards at least one real item (of ``service`` when given). Decoding that
    only ever picks allowed codes ends on a real item.
    """

    def __init__(self, table: SemanticIdTable) -> None:
        self.table = table
        # prefix -> {next code: bitmask of services reachable through it}
        self._next: dict[tuple[int, ...], dict[int, int]] = {}
        for item, codes in table.codes.items():
            bit = _SERVICE_BIT[table.services[item]]
            for depth in range(len(codes)):
                children = self._next.setdefault(codes[:depth], {})
                children[codes[depth]] = children.get(codes[depth], 0) | bit

    @property
    def depth(self) -> int:
        """Length of a complete ID."""
        return self.table.n_levels

    def allowed(self, prefix: Sequence[int], service: Service | None = None) -> list[int]:
        """Codes that may follow ``prefix`` (sorted); empty if the prefix is dead.

        Raises:
            SemanticIdError: if the prefix is already a complete ID or longer.
        """
        if len(prefix) >= self.depth:
            raise SemanticIdError(f"prefix of length {len(prefix)} has no next level")
        mask = _ALL_SERVICES if service is None else _SERVICE_BIT[Service(service)]
        children = self._next.get(tuple(prefix), {})
        return sorted(code for code, m in children.items() if m & mask)

    def is_item(self, codes: Sequence[int], service: Service | None = None) -> bool:
        """Whether ``codes`` is a complete ID of a real item (of ``service``)."""
        item = self.table.item_of(codes)
        return item is not None and (service is None or self.table.services[item] == service)

    def prefixes(self) -> Iterable[tuple[int, ...]]:
        """Every prefix that has children (the root included)."""
        return self._next.keys()
