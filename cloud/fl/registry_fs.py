"""The on-disk adapter registry that federated rounds write to.

Layout (the serving registry reads the same tree)::

    <root>/adapters/<service>/<user_id>/<version:010d>.ulap   a sealed package, as received
    <root>/rejected.jsonl                                      one JSON line per rejected reply

Packages are written to a temporary file in the same directory, fsynced and
renamed, so a reader sees either the old set of versions or the new one,
never a half-written file. The package itself is verified before it is
written (signature, base fingerprint, shapes, finite values, norm bound).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from userlayer.cloud.exceptions import CloudError

__all__ = ["FileRegistry"]

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-")


def _component(name: str, what: str) -> str:
    if not name or not set(name) <= _SAFE or name in (".", ".."):
        raise CloudError(f"{what} {name!r} cannot be a registry path component")
    return name


class FileRegistry:
    """Versioned sealed packages per (service, user) in a directory tree."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "adapters").mkdir(parents=True, exist_ok=True)

    def _dir(self, service: str, user_id: str) -> Path:
        return self.root / "adapters" / _component(service, "service") / _component(user_id, "user")

    def put(self, service: str, user_id: str, version: int, blob: bytes) -> Path:
        """Store a verified package atomically; refuses to overwrite a version."""
        if version < 1:
            raise CloudError(f"version should be >= 1, got {version}")
        d = self._dir(service, user_id)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{version:010d}.ulap"
        if path.exists():
            raise CloudError(f"{service}/{user_id} already has version {version}")
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def versions(self, service: str, user_id: str) -> list[int]:
        """Stored versions, oldest first."""
        d = self._dir(service, user_id)
        if not d.exists():
            return []
        return sorted(int(p.stem) for p in d.glob("*.ulap") if p.stem.isdigit())

    def get(self, service: str, user_id: str, version: int | None = None) -> bytes | None:
        """A package's bytes (the latest version by default), or None."""
        vs = self.versions(service, user_id)
        if not vs:
            return None
        v = vs[-1] if version is None else version
        p = self._dir(service, user_id) / f"{v:010d}.ulap"
        return p.read_bytes() if p.exists() else None

    def discard_after(self, version: int) -> list[Path]:
        """Remove every package newer than ``version``; returns what was removed.

        A server that died during a round may have stored some of that round's
        packages before its checkpoint; the round runs again after the restart,
        so what the unfinished attempt wrote is discarded first.
        """
        removed = []
        for p in sorted((self.root / "adapters").glob("*/*/*.ulap")):
            if p.stem.isdigit() and int(p.stem) > version:
                p.unlink()
                removed.append(p)
        return removed

    def users(self, service: str) -> list[str]:
        """Users with at least one version under a service."""
        d = self.root / "adapters" / _component(service, "service")
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.exists() else []

    def reject(self, **fields: Any) -> None:
        """Log a rejected reply (reason, round, node) to ``rejected.jsonl``."""
        line = json.dumps({"time": datetime.now(UTC).isoformat(), **fields}, default=str)
        with (self.root / "rejected.jsonl").open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def rejected(self) -> list[dict[str, Any]]:
        """Every logged rejection."""
        p = self.root / "rejected.jsonl"
        if not p.exists():
            return []
        return [json.loads(x) for x in p.read_text("utf-8").splitlines() if x.strip()]
