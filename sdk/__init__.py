"""userlayer.sdk: the contracts every part shares, and the client of the cloud API.

Importing this package never imports torch or numpy: service backends embed it.
The model (``userlayer.sdk.model``) is a separate import that needs ``[edge]``
or ``[cloud]``.
"""

from __future__ import annotations

from userlayer.sdk.exceptions import CatalogError, SchemaError, SemanticIdError, UserLayerError
from userlayer.sdk.schemas import (
    Action,
    Context,
    Daypart,
    Event,
    Item,
    Mode,
    Season,
    Service,
    Weather,
)
from userlayer.sdk.semantic_ids import SemanticIdTable, SidTrie

__version__ = "0.1.0"

__all__ = [
    "Action",
    "CatalogError",
    "Context",
    "Daypart",
    "Event",
    "Item",
    "Mode",
    "SchemaError",
    "Season",
    "SemanticIdError",
    "SemanticIdTable",
    "Service",
    "SidTrie",
    "UserLayerError",
    "Weather",
    "__version__",
]
