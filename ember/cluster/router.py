"""EmberAffinityRouter: Ray Serve's request router for ember replicas.

A request with a session id (set by ember.cluster.proxy from x-session-affinity / prompt_cache_key) ranks
its ring owner first, then `num_fallback_replicas` successors: Serve's routing loop takes the first rank
whose replica is below max_ongoing_requests, so a saturated owner spills to the next replica instead of
queueing forever, and the owner gets the session back once it has room. A request without one ranks two
random replicas together, and Serve takes the one with the shorter queue (power of two choices).

It extends Ray's ConsistentHashRouter for its routing loop (a task keeps the request it popped until it is
placed), but routes on ember's own HashRing, the one tests/serve/test_affinity.py checks.
"""

from __future__ import annotations

import random

from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

from ember.cluster.affinity import HashRing


class EmberAffinityRouter(ConsistentHashRouter):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - Ray's signature
        super().__init__(*args, **kwargs)
        self._ring = HashRing()

    def initialize_state(self, **kwargs) -> None:  # noqa: ANN003
        super().initialize_state(**kwargs)
        self._ring = HashRing(vnodes=self._num_virtual_nodes)

    def _rebuild_ring(self, new_snapshot) -> None:  # noqa: ANN001
        super()._rebuild_ring(new_snapshot)
        # unique_id, not the full ReplicaID: the same in every proxy, and stable across controller restarts.
        self._ring.set_replicas(r.unique_id for r in new_snapshot)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        key = pending_request.metadata.session_id if pending_request is not None else None
        if not key:
            return [candidate_replicas if len(candidate_replicas) <= 2 else random.sample(candidate_replicas, 2)]
        by_uid = {r.replica_id.unique_id: r for r in candidate_replicas}
        ranks = [[by_uid[u]] for u in self._ring.owners(key, 1 + self._num_fallback_replicas) if u in by_uid]
        return ranks or [candidate_replicas]
