"""Rate limits that hold across replicas: the buckets live in one Ray actor that every replica calls.

Each replica keeps its own view of the limits (read from the shared store each second, as one process
does); only the counting moves: take/refund/remaining go to the actor, one Ray call each, so two replicas
can never both spend the same minute's quota. The actor is named and detached (every replica finds the
same one, and it outlives a replica that dies); `ember serve` kills it when the app shuts down.
"""

from __future__ import annotations

import ray

from ember.platform.limits import Buckets

ACTOR_NAME = "ember-rate-limits"


def shared_buckets(namespace: str) -> RayBuckets:
    # num_cpus=0: it only does dictionary arithmetic, and must never wait for a CPU a replica holds.
    actor = ray.remote(num_cpus=0, max_restarts=-1)(Buckets).options(
        name=ACTOR_NAME, namespace=namespace, lifetime="detached", get_if_exists=True).remote()
    return RayBuckets(actor)


def kill_shared_buckets(namespace: str) -> None:
    try:
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=namespace))
    except ValueError:  # never created (no request was rate limited... or no replica came up)
        pass


class RayBuckets(Buckets):
    """Buckets whose state is the actor's: the same interface, each call a round trip (~1 ms)."""

    def __init__(self, actor: ray.actor.ActorHandle) -> None:
        self.actor = actor

    def take(self, account_id: str, model: str, limits: dict[str, int], amounts: dict[str, int]) -> float:
        return ray.get(self.actor.take.remote(account_id, model, limits, amounts))

    def refund(self, account_id: str, model: str, amounts: dict[str, int]) -> None:
        self.actor.refund.remote(account_id, model, amounts)  # nobody waits on a refund

    def remaining(self, account_id: str, model: str, quota: str) -> int | None:
        return ray.get(self.actor.remaining.remote(account_id, model, quota))
