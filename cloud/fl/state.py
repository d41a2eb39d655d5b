"""Server state of the federated rounds, checkpointed after every round.

``<dir>/state.json`` names the round, the shared adapter file
(``shared-<round>.safetensors``), the user-level privacy ledger of the shared
part (one ``[noise_multiplier, sample_rate, 1]`` entry per DP round, composed
with the RDP accountant) and each round's metrics. The tensors are written
first, then ``state.json`` is replaced atomically, so a server killed at any
moment restarts from the last complete round.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from userlayer.cloud.exceptions import CloudError

__all__ = ["ServerState"]

STATE_FORMAT = "userlayer.fl-server/1"


@dataclass
class ServerState:
    """What a restarted server needs to go on."""

    round: int
    shared: dict[str, Tensor]
    dp_history: list[tuple[float, float, int]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def save(self, directory: str | Path) -> None:
        """Checkpoint atomically (tensors first, then the state file)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        name = f"shared-{self.round:06d}.safetensors"
        save_file({k: v.contiguous() for k, v in self.shared.items()}, str(d / name))
        doc = {
            "format": STATE_FORMAT,
            "round": self.round,
            "shared": name,
            "dp_history": [list(h) for h in self.dp_history],
            "rounds": self.rounds,
        }
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / "state.json")
        for old in d.glob("shared-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: str | Path) -> ServerState | None:
        """The last checkpoint, or None if there is none.

        Raises:
            CloudError: if the checkpoint is unreadable.
        """
        p = Path(directory) / "state.json"
        if not p.exists():
            return None
        try:
            doc = json.loads(p.read_text("utf-8"))
            if doc.get("format") != STATE_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            shared = load_file(str(Path(directory) / doc["shared"]))
            hist = [(float(a), float(b), int(c)) for a, b, c in doc["dp_history"]]
            return cls(int(doc["round"]), dict(shared), hist, list(doc["rounds"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CloudError(f"{p}: unreadable server checkpoint ({e})") from e

    def copy_shared(self) -> dict[str, Tensor]:
        """A detached copy of the shared tensors."""
        return {k: v.detach().clone() for k, v in self.shared.items()}
