"""The rule Serve's health check applies to a replica (engine_failure): replace it when its engine loop
died or stalled, never while it only drains or starts. The loop's own dead/stalled detection is tested
in tests/api/test_health.py; Serve calling check_health is Ray's part."""

from __future__ import annotations

from types import SimpleNamespace

from ember.cluster.deployment import engine_failure


def state(alive: bool = True, stalled_for: float = 0.0, draining: bool = False) -> SimpleNamespace:
    client = SimpleNamespace(alive=alive, stalled_for=lambda: stalled_for)
    return SimpleNamespace(client=client, stall_timeout_s=30.0, draining=draining)


def test_a_dead_or_stalled_loop_fails_the_replica() -> None:
    assert engine_failure(state(alive=False)) is not None
    assert "stalled" in (engine_failure(state(stalled_for=31.0)) or "")


def test_a_healthy_draining_or_starting_replica_passes() -> None:
    assert engine_failure(state()) is None
    assert engine_failure(state(stalled_for=5.0)) is None
    assert engine_failure(state(draining=True)) is None
    assert engine_failure(None) is None
