"""Loaders from public formats into the dataset format (:mod:`.format`).

Supported formats (``userlayer data load --format FORMAT PATH --out DIR``):

``sasrec``
    S3-Rec/SASRec sequence text: one user per line, ``uid i1 i2 ...`` in time
    order, whitespace separated.
``json``
    ``{"user": [item, item, ...], ...}`` in time order (the Amazon Beauty file
    in ``../shared/data/amazon-beauty/inter.json``).
``recbole``
    RecBole atomic files: ``NAME.inter`` (tab separated, typed header such as
    ``user_id:token  item_id:token  timestamp:float``) and, if present beside it,
    ``NAME.item`` (``item_id:token`` plus optional ``title``, ``categories``,
    ``brand``, ``price`` columns). PATH is the ``.inter`` file or its folder.
``csv``
    A generic CSV with a header and a column mapping naming the columns for
    ``user``, ``item``, ``timestamp`` (unix seconds, milliseconds or ISO 8601)
    and optionally ``service``, ``action``, ``quantity``, ``price``, ``mode``,
    ``weather``, ``geo_cell``.

Formats without timestamps get order-only timestamps (one per day from
2020-01-01 in sequence order) and ``meta.json`` says ``"timestamps": "order"``.
Every malformed line raises :class:`DataFormatError` with the file and line
number; rows that are well-formed but cannot be used (for example a user with
no items) are counted in :class:`LoadSummary` under ``skipped``, never dropped
silently.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from userlayer.sdk.schemas import Action, Service, daypart_of, season_of
from userlayer.tools.data.format import Dataset, build_events
from userlayer.tools.exceptions import DataFormatError

__all__ = ["FORMATS", "CsvMapping", "LoadSummary", "load"]

FORMATS = ("sasrec", "json", "recbole", "csv")
_ORDER_EPOCH_MS = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000)
_DAY_MS = 86_400_000
_CSV_FIELDS = (
    "user",
    "item",
    "timestamp",
    "service",
    "action",
    "quantity",
    "price",
    "mode",
    "weather",
    "geo_cell",
)


@dataclass
class LoadSummary:
    """What a load read, kept and skipped (with a reason for every skip)."""

    lines: int = 0
    events: int = 0
    users: int = 0
    items: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict view for JSON and printing."""
        return {
            "lines": self.lines,
            "events": self.events,
            "users": self.users,
            "items": self.items,
            "skipped": dict(self.skipped),
        }


@dataclass(frozen=True)
class CsvMapping:
    """Which CSV column holds which field; ``user``, ``item``, ``timestamp`` required."""

    columns: dict[str, str]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(_CSV_FIELDS))
        if unknown:
            raise DataFormatError(f"csv mapping: unknown field(s) {unknown}; known: {_CSV_FIELDS}")
        missing = [f for f in ("user", "item", "timestamp") if f not in self.columns]
        if missing:
            raise DataFormatError(f"csv mapping: required field(s) {missing} are not mapped")

    @classmethod
    def parse(cls, spec: str) -> CsvMapping:
        """Parse ``user=uid,item=iid,timestamp=ts``.

        Raises:
            DataFormatError: if a part is not ``field=column``.
        """
        columns: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, column = part.partition("=")
            if not sep or not name.strip() or not column.strip():
                raise DataFormatError(f"csv mapping: {part!r} is not field=column")
            columns[name.strip()] = column.strip()
        return cls(columns)


class _Builder:
    """Accumulates events column by column."""

    def __init__(self, service: Service, action: Action) -> None:
        self.service = service
        self.action = action
        self.cols: dict[str, list[Any]] = {
            k: [] for k in ("user_id", "service", "item_id", "action", "timestamp")
        }
        self.extra: dict[str, list[Any]] = {}

    def add(self, user: str, item: str, ts_ms: int, **extra: Any) -> None:
        c = self.cols
        c["user_id"].append(user)
        c["item_id"].append(item)
        c["timestamp"].append(ts_ms)
        c["service"].append(extra.pop("service", None) or self.service.value)
        c["action"].append(extra.pop("action", None) or self.action.value)
        n = len(c["user_id"])
        for k, v in extra.items():
            col = self.extra.setdefault(k, [None] * (n - 1))
            col.append(v)
        for col in self.extra.values():
            if len(col) < n:
                col.append(None)

    def table(self, what: str, real_time: bool) -> pa.Table:
        cols: dict[str, Any] = dict(self.cols)
        defaults = {"quantity": 1, "mode": "unspecified", "weather": "unknown"}
        for k, v in self.extra.items():
            cols[k] = [defaults[k] if x is None and k in defaults else x for x in v]
        if real_time:
            times = [datetime.fromtimestamp(ms / 1000, UTC) for ms in self.cols["timestamp"]]
            cols["daypart"] = [daypart_of(t).value for t in times]
            cols["weekday"] = [t.weekday() for t in times]
            cols["season"] = [season_of(t).value for t in times]
        return build_events(cols, what)


def _finish(
    b: _Builder,
    items: pa.Table | None,
    summary: LoadSummary,
    source: str,
    real_time: bool,
    what: str,
) -> tuple[Dataset, LoadSummary]:
    if not b.cols["user_id"]:
        raise DataFormatError(f"{what}: no events found")
    events = b.table(what, real_time)
    known = set(events.column("item_id").cast(pa.string()).unique().to_pylist())
    if items is None:
        services = dict(
            zip(
                events.column("item_id").cast(pa.string()).to_pylist(),
                events.column("service").cast(pa.string()).to_pylist(),
                strict=True,
            )
        )
        ids = sorted(known)
        items = pa.table(
            {
                "item_id": ids,
                "service": [services[i] for i in ids],
                "title": [""] * len(ids),
                "category": [[]] * len(ids),
                "brand": [""] * len(ids),
                "price": pa.nulls(len(ids), pa.float64()),
            }
        )
    else:
        missing = known - set(items.column("item_id").to_pylist())
        if missing:
            raise DataFormatError(
                f"{what}: {len(missing)} item(s) of the events are missing from the item file, "
                f"e.g. {sorted(missing)[:3]}"
            )
    ds = Dataset(events, items, {"source": source, "timestamps": "real" if real_time else "order"})
    summary.events = ds.events.num_rows
    summary.users = ds.n_users
    summary.items = ds.items.num_rows
    return ds, summary


def _load_sequences(
    pairs: Iterable[tuple[int, str, list[str]]], b: _Builder, summary: LoadSummary, what: str
) -> None:
    seen: dict[str, int] = {}
    for line_no, user, items in pairs:
        if user in seen:
            raise DataFormatError(
                f"{what}:{line_no}: user {user!r} already given at {what}:{seen[user]}"
            )
        seen[user] = line_no
        if not items:
            summary.skipped["user without items"] += 1
            continue
        for pos, item in enumerate(items):
            b.add(user, item, _ORDER_EPOCH_MS + pos * _DAY_MS)


def _read_sasrec(path: Path, summary: LoadSummary) -> Iterator[tuple[int, str, list[str]]]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            summary.lines += 1
            tokens = line.split()
            if not tokens:
                summary.skipped["blank line"] += 1
                continue
            yield line_no, tokens[0], tokens[1:]


def _read_json(path: Path, summary: LoadSummary) -> Iterator[tuple[int, str, list[str]]]:
    try:
        with _open_text(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
    if not isinstance(doc, dict):
        raise DataFormatError(
            f"{path}: expected an object of user -> item list, got {type(doc).__name__}"
        )
    for n, (user, items) in enumerate(doc.items(), 1):
        summary.lines += 1
        if not isinstance(items, list) or not all(
            isinstance(i, str | int) and not isinstance(i, bool) for i in items
        ):
            raise DataFormatError(
                f"{path}: user {user!r} (entry {n}): expected a list of item "
                "ids (strings or integers)"
            )
        yield n, str(user), [str(i) for i in items]


def _open_text(path: Path) -> Any:
    try:
        return path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise DataFormatError(f"cannot read {path}: {e.strerror}") from e


def _parse_time(value: str, where: str) -> int:
    """Unix seconds / milliseconds or ISO 8601 -> epoch milliseconds."""
    v = value.strip()
    try:
        x = float(v)
    except ValueError:
        try:
            t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError as e:
            raise DataFormatError(
                f"{where}: timestamp {value!r} is neither a number nor ISO 8601"
            ) from e
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return int(t.timestamp() * 1000)
    if x != x or x < 0 or x > 1e14:
        raise DataFormatError(f"{where}: timestamp {value!r} out of range")
    return int(x if x > 1e11 else x * 1000)


def _load_recbole(
    path: Path, service: Service, action: Action, summary: LoadSummary
) -> tuple[Dataset, LoadSummary]:
    inter = path
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise DataFormatError(f"{path}: expected exactly one .inter file, found {len(found)}")
        inter = found[0]
    b = _Builder(service, action)
    with _open_text(inter) as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header:
            raise DataFormatError(f"{inter}:1: empty file, expected a typed header")
        names = [h.split(":")[0] for h in header]
        for need in ("user_id", "item_id"):
            if need not in names:
                raise DataFormatError(f"{inter}:1: header has no {need!r} column: {header}")
        iu, ii = names.index("user_id"), names.index("item_id")
        it = names.index("timestamp") if "timestamp" in names else None
        positions: Counter[str] = Counter()
        for line_no, row in enumerate(reader, 2):
            summary.lines += 1
            if not row or all(not c.strip() for c in row):
                summary.skipped["blank line"] += 1
                continue
            if len(row) != len(names):
                raise DataFormatError(
                    f"{inter}:{line_no}: {len(row)} fields, header has {len(names)}"
                )
            user, item = row[iu].strip(), row[ii].strip()
            if not user or not item:
                raise DataFormatError(f"{inter}:{line_no}: empty user_id or item_id")
            if it is not None:
                ts = _parse_time(row[it], f"{inter}:{line_no}")
            else:
                ts = _ORDER_EPOCH_MS + positions[user] * _DAY_MS
                positions[user] += 1
            b.add(user, item, ts)
    items = _read_recbole_items(inter.with_suffix(".item"), service)
    return _finish(b, items, summary, f"recbole:{inter.name}", it is not None, str(inter))


def _read_recbole_items(path: Path, service: Service) -> pa.Table | None:
    if not path.exists():
        return None
    rows: dict[str, list[Any]] = {
        k: [] for k in ("item_id", "service", "title", "category", "brand", "price")
    }
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None) or []
        names = [h.split(":")[0] for h in header]
        if "item_id" not in names:
            raise DataFormatError(f"{path}:1: header has no 'item_id' column: {header}")
        for line_no, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(names):
                raise DataFormatError(
                    f"{path}:{line_no}: {len(row)} fields, header has {len(names)}"
                )
            rec = dict(zip(names, row, strict=True))
            rows["item_id"].append(rec["item_id"].strip())
            rows["service"].append(service.value)
            rows["title"].append(rec.get("title", "").strip())
            cats = rec.get("categories", "").replace(",", " ").split()
            rows["category"].append(cats[:8])
            rows["brand"].append(rec.get("brand", "").strip())
            price = rec.get("price", "").strip()
            try:
                rows["price"].append(float(price) if price else None)
            except ValueError as e:
                raise DataFormatError(f"{path}:{line_no}: price {price!r} is not a number") from e
    return pa.table(rows)


def _load_csv(
    path: Path, mapping: CsvMapping, service: Service, action: Action, summary: LoadSummary
) -> tuple[Dataset, LoadSummary]:
    b = _Builder(service, action)
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in mapping.columns.values() if c not in header]
        if missing:
            raise DataFormatError(f"{path}:1: column(s) {missing} not in header {header}")
        m = mapping.columns
        for line_no, row in enumerate(reader, 2):
            summary.lines += 1
            if None in row:
                raise DataFormatError(f"{path}:{line_no}: more fields than the header")
            if any(v is None for v in row.values()):
                raise DataFormatError(f"{path}:{line_no}: fewer fields than the header")
            user, item = row[m["user"]].strip(), row[m["item"]].strip()
            if not user or not item:
                raise DataFormatError(f"{path}:{line_no}: empty user or item")
            where = f"{path}:{line_no}"
            extra: dict[str, Any] = {}
            for name in ("service", "action", "mode", "weather", "geo_cell"):
                if name in m and row[m[name]].strip():
                    extra[name] = row[m[name]].strip().lower()
            for name, conv in (("quantity", int), ("price", float)):
                if name in m and row[m[name]].strip():
                    try:
                        extra[name] = conv(row[m[name]])
                    except ValueError as e:
                        raise DataFormatError(
                            f"{where}: {name} {row[m[name]]!r} is not a number"
                        ) from e
            b.add(user, item, _parse_time(row[m["timestamp"]], where), **extra)
    return _finish(b, None, summary, f"csv:{path.name}", True, str(path))


def load(
    fmt: str,
    path: str | Path,
    *,
    service: Service = Service.MEGAMARKET,
    action: Action = Action.PURCHASE,
    mapping: CsvMapping | None = None,
) -> tuple[Dataset, LoadSummary]:
    """Load a public-format file into a :class:`Dataset`.

    Args:
        fmt: one of :data:`FORMATS`.
        path: the file (or, for ``recbole``, its folder).
        service: service of every event when the file has none.
        action: action of every event when the file has none.
        mapping: column mapping, required for ``csv``.

    Raises:
        DataFormatError: unknown format, unreadable file, or a malformed line
            (the message gives file and line number).
    """
    p = Path(path)
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if not p.exists():
        raise DataFormatError(f"{p}: no such file or directory")
    summary = LoadSummary()
    if fmt == "recbole":
        return _load_recbole(p, service, action, summary)
    if fmt == "csv":
        if mapping is None:
            raise DataFormatError(
                "format csv needs a column mapping (--map user=..,item=..,timestamp=..)"
            )
        return _load_csv(p, mapping, service, action, summary)
    b = _Builder(service, action)
    reader = _read_sasrec if fmt == "sasrec" else _read_json
    _load_sequences(reader(p, summary), b, summary, str(p))
    return _finish(b, None, summary, f"{fmt}:{p.name}", False, str(p))
