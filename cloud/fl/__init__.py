"""Federated rounds on the server side: the Flower ServerApp and what it needs.

Per round: sample nodes, send the shared adapter and the round config,
validate every reply (personal packages and shared-part updates), aggregate
the shared part under user-level DP, write the valid personal packages
straight into the adapter registry that serves them, and checkpoint the
server state.
"""

from __future__ import annotations

from userlayer.cloud.fl.aggregation import AggregationConfig, aggregate_updates
from userlayer.cloud.fl.state import ServerState

__all__ = ["AggregationConfig", "ServerState", "aggregate_updates"]
