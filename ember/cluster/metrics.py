"""One /metrics for the whole deployment: every replica's series, each with a `replica` label.

A scrape through Serve's proxy reaches one replica; that replica asks all of them for their registry
(DeploymentHandle.broadcast, meant for rare control calls, which a scrape every few seconds is) and merges
the families, so that one metric's samples from all replicas stay under one HELP/TYPE header.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

REPLICA_LABEL = "replica"


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge(texts: Mapping[str, str]) -> bytes:
    """Prometheus text from each replica (by name) -> one exposition with a replica label on every sample."""
    families: dict[str, Metric] = {}
    for replica, text in sorted(texts.items()):
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            merged.samples.extend(s._replace(labels={**s.labels, REPLICA_LABEL: replica}) for s in fam.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))  # type: ignore[arg-type]
    return generate_latest(registry)
