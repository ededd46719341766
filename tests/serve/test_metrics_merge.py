"""Merging replicas' Prometheus registries under one header per family, with a replica label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ember.cluster.metrics import merge


def registry_text(v: float) -> str:
    r = CollectorRegistry()
    Counter("ember_requests", "requests", registry=r).inc(v)
    Gauge("ember_running", "running", ["model"], registry=r).labels("m").set(v)
    Histogram("ember_ttft_seconds", "ttft", registry=r).observe(v)
    return generate_latest(r).decode()


def test_every_sample_keeps_its_labels_and_gains_its_replica() -> None:
    text = merge({"a": registry_text(1), "b": registry_text(2)}).decode()
    assert text.count("# TYPE ember_running gauge") == 1
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    running = {s.labels["replica"]: s.value for s in fams["ember_running"].samples}
    assert running == {"a": 1.0, "b": 2.0}
    assert all(s.labels["model"] == "m" for s in fams["ember_running"].samples)
    assert {s.labels["replica"] for s in fams["ember_requests"].samples if s.name == "ember_requests_total"} == {"a", "b"}
    counts = [s for s in fams["ember_ttft_seconds"].samples if s.name == "ember_ttft_seconds_count"]
    assert sorted(s.value for s in counts) == [1.0, 1.0]
