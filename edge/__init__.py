"""userlayer.edge: what runs where the user's data lives.

Encrypted profile store, profile aggregation, local DP training of the user's
adapter and the Flower client. Needs the ``[edge]`` extra.
"""

from __future__ import annotations

from userlayer.edge.exceptions import EdgeError

__all__ = ["EdgeError"]
