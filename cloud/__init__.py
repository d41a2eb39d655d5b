"""userlayer.cloud: adapter registry, multi-adapter engine, inference API, Flower server.

Needs the ``[cloud]`` extra.
"""

from __future__ import annotations

from userlayer.cloud.exceptions import CloudError

__all__ = ["CloudError"]
