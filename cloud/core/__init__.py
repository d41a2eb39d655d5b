"""The engine core: one process owns the model, the adapter slots and the batch loop.

The API's worker processes parse, authenticate and validate requests, then
hand them to the engine core over a Unix socket (:mod:`.wire`, length-prefixed
JSON; nothing is unpickled). The core forms batches continuously: a new batch
starts as soon as the previous one ends, with every request that arrived
meanwhile (:mod:`.server`). :mod:`.client` is the API side; :mod:`.process`
starts the core as a child process and restarts it when it crashes. This is
vLLM V1's split of the HTTP front end from the engine core, on two CPU cores:
HTTP handling no longer shares a GIL with decoding.
"""

from userlayer.cloud.core.client import EngineClient, EngineUnavailableError
from userlayer.cloud.core.process import EngineProcess

__all__ = ["EngineClient", "EngineProcess", "EngineUnavailableError"]
